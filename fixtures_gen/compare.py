"""Compare two oracle dumps, and check upstream's ``mlflow migrate-filestore`` against them.

``diff_dumps(a, b)`` lists every leaf that differs (JSON paths, lists of records matched by
their id). ``upstream_sql_diff(version, size)`` copies a built store, removes duplicate metric
lines (upstream aborts on them), migrates the copy with the 3.17.2 CLI into SQLite and diffs the
oracle dumps of both sides: a baseline of what MLflow itself loses or changes between FileStore
and SQL, for fs2sql's tests.

CLI: ``python -m fixtures_gen.compare --upstream 3.17.2 small [--json out.json]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List, Tuple

from .build import ensure_store
from .envs import ensure_venv
from .oracle import dump

# How records in lists are matched between two dumps (first key present wins).
ID_KEYS = ("run_id", "trace_id", "assessment_id", "model_id", "version", "experiment_id", "name")
IGNORED_TOP = ("_oracle", "stores", "uri_scheme")

Difference = Tuple[str, Any, Any]


def diff_dumps(a: dict, b: dict) -> List[Difference]:
    """(path, value in a, value in b) for every difference, ignoring the oracle's own metadata."""
    out: List[Difference] = []
    for key in sorted(set(a) | set(b)):
        if key not in IGNORED_TOP:
            _diff(a.get(key, "<missing>"), b.get(key, "<missing>"), key, out)
    return out


def _record_id(item: Any):
    if isinstance(item, dict):
        if isinstance(item.get("info"), dict):
            item = {**item["info"], **item}
        for key in ID_KEYS:
            if key in item and item[key] is not None:
                return f"{key}={item[key]}"
    return None


def _diff(a: Any, b: Any, path: str, out: List[Difference]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{path}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        ids_a = [_record_id(x) for x in a]
        ids_b = [_record_id(x) for x in b]
        if a and None not in ids_a and None not in ids_b and len(set(ids_a)) == len(a):
            map_a, map_b = dict(zip(ids_a, a)), dict(zip(ids_b, b))
            for key in sorted(set(map_a) | set(map_b)):
                _diff(map_a.get(key, "<missing>"), map_b.get(key, "<missing>"),
                      f"{path}[{key}]", out)
        elif len(a) == len(b) and any(isinstance(x, (dict, list)) for x in a):
            for i, (x, y) in enumerate(zip(a, b)):
                _diff(x, y, f"{path}[{i}]", out)
        elif a != b:
            out.append((path, a, b))
    elif a != b:
        out.append((path, a, b))


def dedupe_metric_lines(mlruns: Path) -> int:
    """Drop exact duplicate lines from run metric files (in place); returns lines removed."""
    removed = 0
    for exp in [*mlruns.iterdir(), *(mlruns / ".trash").glob("*")]:
        for metrics in exp.glob("*/metrics"):
            for path in [p for p in metrics.rglob("*") if p.is_file()]:
                lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
                unique = list(dict.fromkeys(lines))
                if len(unique) != len(lines):
                    os.chmod(path, 0o644)
                    path.write_text("".join(unique), encoding="utf-8")
                    removed += len(lines) - len(unique)
    return removed


def upstream_sql_diff(writer_version: str, size: str, reader_version: str = "3.17.2") -> dict:
    """Migrate a (deduplicated) copy of a store with upstream's CLI and diff the two dumps."""
    source = ensure_store(writer_version, size)
    mlflow_cli = ensure_venv(reader_version).parent / "mlflow"
    with tempfile.TemporaryDirectory(prefix="fs2sql-upstream-") as tmp:
        copy = Path(tmp) / "src" / "mlruns"
        shutil.copytree(source, copy)
        for dirpath, _dirs, files in os.walk(copy):
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o644)
        removed = dedupe_metric_lines(copy)
        db = Path(tmp) / "upstream.db"
        env = dict(os.environ, MLFLOW_ALLOW_FILE_STORE="true")
        proc = subprocess.run([str(mlflow_cli), "migrate-filestore", "--source", str(copy.parent),
                               "--target", f"sqlite:///{db}"], capture_output=True, text=True,
                              env=env, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError("mlflow migrate-filestore failed:\n" + proc.stderr[-3000:])
        fs_dump = dump(reader_version, copy.as_uri())
        sql_dump = dump(reader_version, f"sqlite:///{db}")
    return {"writer": writer_version, "size": size, "reader": reader_version,
            "duplicate_lines_removed": removed, "differences": diff_dumps(fs_dump, sql_dump)}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", nargs=2, metavar=("VERSION", "SIZE"), required=True,
                        help="writer version and size of the store to migrate with upstream")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    result = upstream_sql_diff(*args.upstream)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    print(f"{len(result['differences'])} differences "
          f"({result['duplicate_lines_removed']} duplicate metric lines removed first)")
    for path, a, b in result["differences"]:
        print(f"{path}\n    file: {json.dumps(a, ensure_ascii=False)[:160]}"
              f"\n    sql:  {json.dumps(b, ensure_ascii=False)[:160]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
