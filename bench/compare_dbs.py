"""Compare the migrated content of two SQLite DBs (e.g. floor vs. upstream vs. fs2sql output).

    python bench/compare_dbs.py A.db B.db [--ignore-columns runs.source_type,...]

Compares the 12 tables the bench store fills, as multisets of full rows (all columns present in
both, in a canonical order). Prints per-table row counts and up to 5 differing rows each side.
Exit status 0 when equal. A helper for checking that the floor inserts the same rows; not part
of the timed benchmark.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections import Counter

TABLES = ("experiments", "experiment_tags", "runs", "params", "tags", "metrics",
          "latest_metrics", "registered_models", "registered_model_tags", "model_versions",
          "model_version_tags", "registered_model_aliases")


def rows(con: sqlite3.Connection, table: str, cols: list[str]) -> Counter:
    q = f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM {table}"
    return Counter(con.execute(q))


def columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ignore-columns", default="",
                    help="comma-separated table.column to leave out")
    a = ap.parse_args(argv)
    ignore = {tuple(x.split(".", 1)) for x in a.ignore_columns.split(",") if "." in x}
    ca = sqlite3.connect(f"file:{a.a}?mode=ro", uri=True)
    cb = sqlite3.connect(f"file:{a.b}?mode=ro", uri=True)
    equal = True
    for t in TABLES:
        cols = [c for c in columns(ca, t) if c in set(columns(cb, t)) and (t, c) not in ignore]
        ra, rb = rows(ca, t, cols), rows(cb, t, cols)
        if ra == rb:
            print(f"{t:26s} equal ({sum(ra.values())} rows)")
            continue
        equal = False
        only_a, only_b = ra - rb, rb - ra
        print(f"{t:26s} DIFFERENT: {sum(ra.values())} vs {sum(rb.values())} rows, "
              f"{sum(only_a.values())} only in A, {sum(only_b.values())} only in B; cols {cols}")
        for label, only in (("A", only_a), ("B", only_b)):
            for r in list(only)[:5]:
                print(f"    only in {label}: {r}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
