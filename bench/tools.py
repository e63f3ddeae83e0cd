"""The tools the bench runs (fs2sql, upstream, the floor; per target) and their command lines,
the untimed warm-up, and the content comparison of their SQLite outputs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from env import BENCH_DIR, MLFLOW_VERSION, log

TARGETS = ("sqlite", "postgresql", "mariadb")
TARGET_ALIASES = {"pg": "postgresql", "postgres": "postgresql", "mysql": "mariadb",
                  "maria": "mariadb"}
# Tool keys: "fs2sql", "upstream", "floor", "verify" write/read SQLite; "<tool>@<server>" a
# server database. "verify" is `fs2sql verify` of the fs2sql output of the same round.
TOOLS = ("fs2sql", "verify", "upstream", "floor", "fs2sql@postgresql", "verify@postgresql",
         "floor@postgresql", "fs2sql@mariadb", "verify@mariadb", "floor@mariadb")
BASE_TOOLS = ("fs2sql", "verify", "upstream", "floor")
TOOL_ALIASES = {"a": "fs2sql", "b": "upstream", "c": "floor", "mlflow": "upstream"}
TOOL_LABEL = {
    "fs2sql": "fs2sql migrate",
    "verify": "fs2sql verify",
    "upstream": f"mlflow {MLFLOW_VERSION} migrate-filestore",
    "floor": "floor (bench/floor.py)",
    "fs2sql@postgresql": "fs2sql migrate → PostgreSQL",
    "verify@postgresql": "fs2sql verify ← PostgreSQL",
    "floor@postgresql": "floor (COPY) → PostgreSQL",
    "fs2sql@mariadb": "fs2sql migrate → MariaDB",
    "verify@mariadb": "fs2sql verify ← MariaDB",
    "floor@mariadb": "floor (executemany) → MariaDB",
}
# Page cache before a timed run: "warm" (the previous run read the store) or "cold" (dropped).
CACHES = ("warm", "cold")


def tool_base(tool: str) -> str:
    return tool.split("@", 1)[0]


def tool_target(tool: str) -> str:
    return tool.split("@", 1)[1] if "@" in tool else "sqlite"


def tool_label(tool: str, servers: bool) -> str:
    """SQLite rows say "→ SQLite" when server rows are in the same table."""
    label = TOOL_LABEL[tool]
    if servers and "@" not in tool:
        label += " ← SQLite" if tool == "verify" else " → SQLite"
    return label


def variant(tool: str, cache: str) -> str:
    """The key of a tool's runs with a page cache: "fs2sql" (warm), "fs2sql~cold"."""
    return tool if cache == "warm" else f"{tool}~{cache}"


def split_variant(key: str) -> tuple:
    tool, _, cache = key.partition("~")
    return tool, cache or "warm"


def compare_outputs(kept: dict, label: str) -> dict:
    """Full content comparison (bench/compare_dbs.py logic) of each tool's round-1 output with
    the reference (floor if it ran, else upstream). Not timed."""
    sys.path.insert(0, str(BENCH_DIR))
    import compare_dbs

    ref = "floor" if "floor" in kept else "upstream" if "upstream" in kept else None
    out = {}
    if ref is None:
        return out
    cref = sqlite3.connect(f"file:{kept[ref]}?mode=ro", uri=True)
    cache = {}
    for tool, db in kept.items():
        if tool == ref:
            continue
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        diffs = {}
        for t in compare_dbs.TABLES:
            try:
                cols = [c for c in compare_dbs.columns(cref, t)
                        if c in set(compare_dbs.columns(con, t))]
                if (t, tuple(cols)) not in cache:
                    cache[(t, tuple(cols))] = compare_dbs.rows(cref, t, cols)
                ra, rb = cache[(t, tuple(cols))], compare_dbs.rows(con, t, cols)
            except sqlite3.Error as exc:
                diffs[t] = f"error: {exc}"
                continue
            if ra != rb:
                diffs[t] = (f"{sum((rb - ra).values())} rows only in {tool}, "
                            f"{sum((ra - rb).values())} only in {ref}")
        con.close()
        out[f"{tool} vs {ref}"] = diffs or "identical"
        log(f"{label}: content of {tool} vs {ref}: "
            f"{'identical (12 tables)' if not diffs else diffs}")
    cref.close()
    return out


def tool_command(tool: str, mlruns: Path, out_db: Path, ctx: dict,
                 url: str | None = None, cache: str = "warm") -> list[str]:
    """The command line of one run; server tools write into (verify: read) the database at
    ``url``. ``ctx["io_threads"]``: fs2sql's --io-threads (None: its default). The floor gets
    its best setting: one thread on a warm cache (threads only add GIL turns there), the same
    number of threads as fs2sql on a cold one (default 8)."""
    threads = ["--io-threads", str(ctx["io_threads"])] if ctx.get("io_threads") else []
    if tool_base(tool) == "floor":
        threads = ["--io-threads", "1" if cache == "warm" else str(ctx.get("io_threads") or 8)]
    if tool_base(tool) == "verify":
        return [*ctx["fs2sql"], "verify", str(mlruns), url or str(out_db), "--quiet", *threads]
    if tool == "fs2sql":
        return [*ctx["fs2sql"], "migrate", str(mlruns), str(out_db), *threads]
    if tool == "upstream":
        return [str(ctx["venv"] / "bin" / "mlflow"), "migrate-filestore", "--source", str(mlruns),
                "--target", f"sqlite:///{out_db}", "--no-progress"]
    if tool == "floor":
        return [str(ctx["venv"] / "bin" / "python"), str(BENCH_DIR / "floor.py"), str(mlruns),
                str(out_db), "--template", str(ctx["template"]), *threads]
    if tool_base(tool) == "fs2sql":
        # MLflow's server schema has 32-bit experiment IDs, the bench store 18-digit ones
        return [*ctx["fs2sql"], "migrate", str(mlruns), url, "--experiment-ids", "renumber",
                *threads]
    if tool_base(tool) == "floor":
        return [str(ctx["venv"] / "bin" / "python"), str(BENCH_DIR / "floor_server.py"),
                str(mlruns), url, *threads]
    raise ValueError(tool)


def warm_up(tools: list, ctx: dict, servers: dict, work: Path) -> None:
    """Untimed: one fs2sql migration of its bundled sample store per target, so that fs2sql's
    schema caches (the empty SQLite schema; the recording of MLflow's migrations per server)
    exist, as they do from the second migration on any machine. The first migration on a
    machine pays a few seconds more once."""
    for tool in tools:
        if tool_base(tool) != "fs2sql":
            continue
        srv = servers.get(tool_target(tool))
        if srv is None:
            out = work / "warm-up.db"
            cmd = [*ctx["fs2sql"], "migrate", "--example", str(out), "--quiet"]
        else:
            db = f"fs2sql_bench_warm_{os.getpid()}"
            srv.drop(db)
            srv.create(db)
            cmd = [*ctx["fs2sql"], "migrate", "--example", srv.url(db), "--quiet",
                   "--experiment-ids", "renumber"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                log(f"warm-up of {tool} failed (exit {p.returncode}): {p.stderr[-500:]}")
        finally:
            if srv is None:
                out.unlink(missing_ok=True)
            else:
                srv.drop(db)
