"""fs2sql benchmark: fs2sql vs. upstream ``mlflow migrate-filestore`` (3.17.2) vs. a floor, on
SQLite and on PostgreSQL / MariaDB servers, with a warm or a cold page cache.

    python bench/run.py [--sizes 0.4M,1.6M,many-runs] [--rounds 3] [--cache warm,cold]
                        [--fs2sql CMD] [--skip NAME[,NAME]] [--targets sqlite,postgresql,mariadb]
                        [--sections migrate,sync,fleet] [--fleet N]
                        [--json FILE] [--markdown FILE] ...

Steps (details in bench/README.md):
1. builds (once) a virtualenv with full ``mlflow==3.17.2``, psycopg and PyMySQL and an empty
   MLflow schema for the floor (``env.py``);
2. per server target: times MLflow's ``_initialize_tables`` on a new database and keeps that
   schema as the server floor's template (``servers.py``);
3. runs bench/check_generator.py in that venv unless ``--no-check``;
4. generates (or reuses) one store per size (``stores.py``);
5. per size, ``--rounds`` rounds of every tool (alternating) and page-cache mode, each into a
   fresh output file or server database, measuring wall time, CPU and peak RSS of the process
   tree (``measure.py``; commands in ``tools.py``); ``fs2sql verify`` right after each fs2sql
   migration, on its output;
6. ``fs2sql --help`` / ``--version`` wall time (median of 5);
   steps 2, 5 and 6 are the ``migrate`` section; ``--sections sync,fleet`` adds (or, without
   ``migrate``, runs only) the ``fs2sql sync`` rows and the fleet row (``syncs.py``);
7. prints a table, optionally writes JSON and Markdown (``render.py``).

Only the standard library is needed here (plus the ``psql`` / ``mariadb`` clients for server
targets); generator, check and floors run in the bench venv.
It is a benchmark, not a test: nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from env import (
    BENCH_DIR,
    MLFLOW_VERSION,
    cache_root,
    ensure_bench_venv,
    ensure_schema_template,
    log,
    machine_info,
)
from measure import (
    COUNT_TABLES,
    cold_cache_unavailable,
    drop_page_cache,
    measure,
    read_whole_tree,
    row_counts,
)
from render import median, write_reports
from servers import SERVER_NAME, Server, ServerError, renumbered_experiments
from stores import ensure_store, parse_count, parse_sizes, size_label
from syncs import SECTIONS, run_sections
from tools import (
    BASE_TOOLS,
    CACHES,
    TARGET_ALIASES,
    TARGETS,
    TOOL_ALIASES,
    TOOLS,
    compare_outputs,
    tool_base,
    tool_command,
    tool_label,
    tool_target,
    variant,
    warm_up,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="fs2sql vs mlflow migrate-filestore vs floor benchmark",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", help="comma-separated store sizes in metric points (0.4M,1.6M; "
                    "1 run per 1000 points), RUNSxPOINTS (400x0.4M) or a named store "
                    "(many-runs: 30k runs x 25 small files; 100k-runs); default: --runs/--points")
    ap.add_argument("--runs", type=parse_count, default=1000, help="runs (without --sizes)")
    ap.add_argument("--points", type=parse_count, default=1_000_000,
                    help="metric points (without --sizes)")
    ap.add_argument("--experiments", type=int, default=8, help="incl. 0 and one deleted")
    ap.add_argument("--params", type=int, default=20, help="params per run")
    ap.add_argument("--tags", type=int, default=10, help="tags per run")
    ap.add_argument("--models", type=int, default=10, help="registered models (1-5 versions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--upstream-rounds", type=int,
                    help="upstream only in the first N rounds (it is slow; default: --rounds)")
    ap.add_argument("--cache", default="warm",
                    help="page cache before each timed run: warm, cold (dropped: Linux, as root) "
                    "or warm,cold")
    ap.add_argument("--io-threads", type=int,
                    help="--io-threads for fs2sql and the floor (default: their own default)")
    ap.add_argument("--fs2sql", default="fs2sql", help="fs2sql command (shell-split)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="databases to write, comma-separated: sqlite (fs2sql, upstream, floor), "
                    "postgresql (admin URL $FS2SQL_TEST_PG_URL), mariadb ($FS2SQL_TEST_MYSQL_URL);"
                    " a server that does not answer is reported and left out")
    ap.add_argument("--skip", default="", help="tools to skip, comma-separated: "
                    f"{','.join(BASE_TOOLS)} (on every target) or e.g. floor@mariadb")
    ap.add_argument("--sections", default="migrate",
                    help="what to measure, comma-separated: migrate (fs2sql migrate vs upstream "
                    "vs floor), sync (fs2sql sync vs migrate on each sqlite/postgresql/mariadb "
                    "target, and the server's longest call beside a sync), fleet (no-change "
                    "sync with 1 vs --fleet stores in one PostgreSQL database)")
    ap.add_argument("--fleet", type=int, default=50, help="stores in the fleet section")
    ap.add_argument("--json", type=Path, help="write results as JSON")
    ap.add_argument("--markdown", type=Path, help="write a Markdown report (README-ready)")
    ap.add_argument("--no-check", action="store_true", help="skip bench/check_generator.py")
    ap.add_argument("--regenerate", action="store_true", help="ignore cached stores")
    ap.add_argument("--venv-python", help="base interpreter for the bench venv "
                    "(default: $FS2SQL_VENV_PYTHON, pyenv 3.11, ...)")
    ap.add_argument("--workdir", type=Path, help="where output DBs go (default: temp dir in cache)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep output DBs and logs")
    ap.add_argument("--no-compare", action="store_true",
                    help="skip the content comparison of the round-1 outputs (12 tables)")
    a = ap.parse_args(argv)

    targets = []
    for name in filter(None, (t.strip().lower() for t in a.targets.split(","))):
        name = TARGET_ALIASES.get(name, name)
        if name not in TARGETS:
            ap.error(f"--targets: unknown target {name!r} (known: {', '.join(TARGETS)})")
        if name not in targets:
            targets.append(name)
    skip = set()
    for name in filter(None, (s.strip().lower() for s in a.skip.split(","))):
        name = TOOL_ALIASES.get(name, name)
        if name not in BASE_TOOLS and name not in TOOLS:
            ap.error(f"--skip: unknown tool {name!r} (known: {', '.join(BASE_TOOLS)}, or "
                     f"{', '.join(t for t in TOOLS if '@' in t)})")
        skip.add(name)
    sections = []
    for name in filter(None, (s.strip().lower() for s in a.sections.split(","))):
        if name not in SECTIONS:
            ap.error(f"--sections: unknown section {name!r} (known: {', '.join(SECTIONS)})")
        if name not in sections:
            sections.append(name)
    if not sections:
        ap.error("--sections: nothing to run")
    if a.fleet < 2:
        ap.error("--fleet: at least 2 stores")
    tools = [t for t in TOOLS if tool_target(t) in targets and t not in skip
             and tool_base(t) not in skip] if "migrate" in sections else []
    if "migrate" in sections and not tools:
        ap.error("nothing to run")
    sizes = parse_sizes(a.sizes) if a.sizes else [dict(runs=a.runs, points=a.points)]
    caches = [c.strip() for c in a.cache.split(",") if c.strip()]
    if not caches or any(c not in CACHES for c in caches):
        ap.error(f"--cache: one or both of {', '.join(CACHES)}")
    if "verify" in [tool_base(t) for t in tools] and not any(
            tool_base(t) == "fs2sql" for t in tools):
        tools = [t for t in tools if tool_base(t) != "verify"]  # it verifies fs2sql's output

    ctx = {"fs2sql": shlex.split(a.fs2sql), "io_threads": a.io_threads}
    if any(tool_base(t) == "fs2sql" for t in tools) or sections != ["migrate"]:
        exe = shutil.which(ctx["fs2sql"][0])
        if not exe:
            ap.error(f"fs2sql command {ctx['fs2sql'][0]!r} not found (use --fs2sql CMD or "
                     "--skip fs2sql)")
        ctx["fs2sql"][0] = os.path.abspath(exe)  # tools run with cwd = their output directory

    results = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(), "mlflow_version": MLFLOW_VERSION, "rounds": a.rounds,
        "targets": targets, "sections": sections, "caches": caches, "io_threads": a.io_threads,
        "upstream_rounds": a.upstream_rounds if a.upstream_rounds is not None else a.rounds,
        "tools": {t: tool_label(t, any("@" in x for x in tools)) for t in tools}, "sizes": [],
        "measurement": ("wall: perf_counter around the process; peak RSS: max of GNU time -v "
                        "'Maximum resident set size' (largest single process of the tree, "
                        "os.wait4 ru_maxrss without GNU time) and the summed RSS of the "
                        "process tree sampled every 50 ms"),
    }

    venv = ensure_bench_venv(a.venv_python)
    ctx["venv"] = venv
    results["venv_python"] = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True).stdout.strip()
    workroot = a.workdir or (cache_root() / "bench-out")
    workroot.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=workroot))
    log(f"outputs in {work}")
    servers: dict[str, Server] = {}
    try:
        return run_bench(a, ctx, venv, tools, sizes, caches, results, servers, work, sections,
                         targets)
    finally:
        for srv in servers.values():
            srv.cleanup()
        if not a.keep_outputs:
            shutil.rmtree(work, ignore_errors=True)


def setup_servers(tools: list, venv: Path, work: Path, results: dict, servers: dict) -> list:
    """Reach each server the tools need, time MLflow's schema creation on it once (kept as the
    floor's template); a server that fails is reported and its tools are left out."""
    for kind in SERVER_NAME:
        if not any(tool_target(t) == kind for t in tools):
            continue
        srv = Server(kind)
        info = results.setdefault("servers", {})[kind] = {"url": srv.display(srv.admin_db)}
        try:
            info["version"] = srv.connect_check()
            servers[kind] = srv
            log(f"{srv.name}: {info['version'][:60]}; creating MLflow's schema "
                "(_initialize_tables) ...")
            info["schema"] = srv.make_template(venv, work)
            log(f"{srv.name}: _initialize_tables took {info['schema']['initialize_tables_s']:.1f} "
                f"s ({info['schema']['process_s']:.1f} s with Python start and imports)")
        except (ServerError, OSError, subprocess.CalledProcessError) as exc:
            info["error"] = " ".join(str(exc).split())[-500:]
            log(f"{srv.name} left out: {info['error']}")
            tools = [t for t in tools if tool_target(t) != kind]
    return tools


def run_bench(a, ctx: dict, venv: Path, tools: list, sizes: list, caches: list,
              results: dict, servers: dict, work: Path, sections: list, targets: list) -> int:
    tools = setup_servers(tools, venv, work, results, servers)
    results["tools"] = {t: results["tools"][t] for t in tools}
    if not tools and sections == ["migrate"]:
        log("nothing left to run")
        return 2
    if "cold" in caches:
        why = cold_cache_unavailable()
        if why:
            log(f"cold-cache mode unavailable: {why}; measuring warm only")
            results["cold_unavailable"] = why
            caches = [c for c in caches if c != "cold"] or ["warm"]
            results["caches"] = caches
    if "floor" in tools:
        ctx["template"], built = ensure_schema_template(venv)
        if built:
            results["schema_init_s"] = round(built, 2)
    if not a.no_check and not check_generator(a, venv, results):
        return 2
    stores = []
    for want in sizes:
        spec = dict(runs=want["runs"], points=want["points"], experiments=a.experiments,
                    params=a.params, tags=a.tags, models=a.models, seed=a.seed, keys=0)
        spec.update({k: v for k, v in want.items() if k != "name"})
        mlruns, manifest, now = ensure_store(venv, spec, a.regenerate)
        stores.append(mlruns)
        results["sizes"].append({
            "spec": spec, "name": want.get("name"), "store": str(mlruns),
            "counts": manifest["counts"],
            "disk_mb": round(manifest.get("disk_bytes", 0) / 1e6, 1),
            "generator": {"seconds": manifest["seconds"],
                          "wall_seconds": manifest.get("wall_seconds"),
                          "points_per_s": round(manifest["counts"]["metrics"]
                                                / max(manifest["seconds"], 1e-9)),
                          "now": now},
            "runs": {variant(t, c): [] for t in tools for c in caches}, "caches": caches,
        })
    if tools:
        warm_up(tools, ctx, servers, work)
        for mlruns, size in zip(stores, results["sizes"]):
            run_size(a, ctx, tools, caches, mlruns, size, results, servers, work)
        if any(tool_base(t) == "fs2sql" for t in tools):
            results["cli"] = time_cli(ctx)
    if "sync" in sections or "fleet" in sections:
        run_sections(a, ctx, venv, sections, targets, stores, results, servers, work,
                     save=lambda: write_reports(results, a, final=False))
    if a.keep_outputs:
        for srv in servers.values():
            log(f"{srv.name}: kept databases {', '.join(srv.dbs) or '(none)'}")
            srv.dbs = [d for d in srv.dbs if d == srv.template_db]
    write_reports(results, a, final=True)
    return 0


def check_generator(a, venv: Path, results: dict) -> bool:
    log("checking the generator against MLflow's FileStore (bench/check_generator.py) ...")
    p = subprocess.run([str(venv / "bin" / "python"), str(BENCH_DIR / "check_generator.py"),
                        "--params", str(a.params), "--tags", str(a.tags)],
                       capture_output=True, text=True)
    print(p.stdout.strip(), file=sys.stderr)
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
        log("generator check FAILED; not benchmarking an invalid store")
        return False
    results["generator_check"] = p.stdout.strip().splitlines()[-1]
    return True


class Round:
    """What one round of one store shares: the fs2sql output each verify reads."""

    def __init__(self, label: str, number: int):
        self.label, self.number = label, number
        self.migrated: dict = {}  # target -> (output dir, out.db, database or None)


def run_size(a, ctx: dict, tools: list, caches: list, mlruns: Path, size: dict,
             results: dict, servers: dict, work: Path) -> None:
    label = size_label(size)
    upstream_rounds = results["upstream_rounds"]
    for rnd in range(a.rounds):
        kept: dict = {}
        # rotate the start so no tool always runs first (cache/thermal effects); a verify
        # follows the fs2sql run of its target
        movers = [t for t in tools if tool_base(t) != "verify"]
        order = movers[rnd % len(movers):] + movers[:rnd % len(movers)]
        for cache in caches:
            rd = Round(label, rnd)
            if cache == "warm" and (rnd == 0 or "cold" in caches):
                took = read_whole_tree(mlruns)  # a warm cache, whatever ran before
                log(f"{label}: store read into the page cache in {took:.1f} s (untimed)")
            for tool in order:
                if tool_base(tool) == "upstream" and rnd >= upstream_rounds:
                    continue
                run_job(a, ctx, tool, cache, mlruns, size, rd, servers, work, kept)
                if tool_base(tool) == "fs2sql" and tool_target(tool) in rd.migrated:
                    verifier = "verify" + tool[len("fs2sql"):]
                    if verifier in tools:
                        run_job(a, ctx, verifier, cache, mlruns, size, rd, servers, work, kept)
                    release(a, rd, tool, servers, kept, compare=cache == caches[0])
                write_reports(results, a, final=False)  # partial results survive a kill
        if rnd == 0 and kept:
            size["content_check"] = compare_outputs(kept, label)
            if not a.keep_outputs:
                for db_path in kept.values():
                    shutil.rmtree(db_path.parent, ignore_errors=True)
            write_reports(results, a, final=False)


def release(a, rd: Round, tool: str, servers: dict, kept: dict, compare: bool) -> None:
    """The fs2sql output of this round and target is verified: drop it (or keep the first
    round's SQLite file for the content comparison)."""
    out_dir, out_db, db = rd.migrated.pop(tool_target(tool))
    if a.keep_outputs:
        return
    if db is not None:
        servers[tool_target(tool)].drop(db)
    elif rd.number == 0 and compare and not a.no_compare:
        kept[tool] = out_db
    else:
        shutil.rmtree(out_dir, ignore_errors=True)


_DB_NUMBER = [0]


def run_job(a, ctx: dict, tool: str, cache: str, mlruns: Path, size: dict, rd: Round,
            servers: dict, work: Path, kept: dict) -> None:
    """One timed run of ``tool`` with the page cache ``cache``; recorded in ``size``."""
    base, target = tool_base(tool), tool_target(tool)
    srv = servers.get(target)
    key = variant(tool, cache)
    db = url = None
    if base == "verify":
        if target not in rd.migrated:
            return  # its migration failed
        out_dir, out_db, db = rd.migrated[target]
        url = srv.url(db) if db else None
    else:
        out_dir = work / f"{rd.label}-{tool.replace('@', '-')}-{cache}-{rd.number}"
        out_dir.mkdir()
        out_db = out_dir / "out.db"
        if srv is not None:  # a fresh database, not timed
            _DB_NUMBER[0] += 1
            db = f"fs2sql_bench_{os.getpid()}_{_DB_NUMBER[0]}"
            srv.drop(db)
            srv.create(db, from_template=base == "floor")
            url = srv.url(db)
    cmd = tool_command(tool, mlruns, out_db, ctx, url, cache)
    if cache == "cold":
        drop_page_cache()
    cpu0 = srv.cpu_seconds() if srv else None
    log_path = out_dir / (f"verify-{cache}.txt" if base == "verify" else "log.txt")
    r = measure(cmd, log_path)
    if cpu0 is not None:
        time.sleep(0.3)  # let the backend exit (and be reaped by the postmaster)
        cpu1 = srv.cpu_seconds()
        r["server_cpu_s"] = round(cpu1 - cpu0, 2) if cpu1 is not None else None
    r["round"], r["cache"] = rd.number, cache
    if db:
        r["database"] = db
    size["runs"][key].append(r)
    if r["rc"] != 0:
        r["error_tail"] = log_path.read_text(errors="replace")[-2000:]
        log(f"{rd.label} {key} round {rd.number + 1}: FAILED (exit {r['rc']}):\n"
            f"{r['error_tail']}")
    else:
        if base == "floor":
            r["floor_report"] = last_json_line(log_path)
        srv_cpu = (f", server CPU {r['server_cpu_s']:.1f} s"
                   if r.get("server_cpu_s") is not None else "")
        log(f"{rd.label} {key:22s} round {rd.number + 1}/{a.rounds}: {r['wall_s']:.2f} s, "
            f"CPU {r['user_s'] + r['sys_s']:.1f} s{srv_cpu}, peak RSS {r['peak_rss_mb']:.0f} MB")
        if base != "verify":
            check_rows(tool, size, mlruns, srv, db, out_db)
    if base == "fs2sql" and r["rc"] == 0:
        rd.migrated[target] = (out_dir, out_db, db)  # verify reads it, then it goes
        return
    if base == "verify":
        return
    if srv is not None and not a.keep_outputs:
        srv.drop(db)
    if srv is None and rd.number == 0 and cache == next(iter(size["caches"])) \
            and not a.no_compare and r["rc"] == 0 and out_db.exists():
        kept[tool] = out_db  # compared after the round, then deleted
    elif not a.keep_outputs:
        shutil.rmtree(out_dir, ignore_errors=True)


def check_rows(tool: str, size: dict, mlruns: Path, srv, db, out_db: Path) -> None:
    """Row counts of the first successful output of each tool against the store's manifest."""
    if size.setdefault("row_check", {}).get(tool):
        return
    got = srv.row_counts(db) if srv is not None else (
        row_counts(out_db) if out_db.exists() else None)
    if got is None:
        return
    want = dict(size["counts"])
    tags = renumbered_experiments(mlruns) if srv is not None and tool_base(tool) == "fs2sql" \
        else 0
    want["experiment_tags"] = want["experiment_tags"] + tags
    mism = {t: [got[t], want[t]] for t in COUNT_TABLES if got.get(t) != want.get(t)}
    size["row_check"][tool] = {"counts": got, "mismatch": mism, "renumber_tags": tags}
    if mism:
        log(f"  {tool}: row counts [db, expected] differ: {mism}")


def time_cli(ctx: dict) -> dict:
    cli = {}
    for flag in ("--help", "--version"):
        walls, rcs = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            p = subprocess.run([*ctx["fs2sql"], flag], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            rcs.append(p.returncode)
        cli[flag] = {"median_wall_s": round(median(walls), 3), "n": 5,
                     "all_s": [round(w, 3) for w in walls], "exit_codes": rcs}
    return cli


def last_json_line(path: Path) -> dict | None:
    try:
        for line in reversed(path.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                return json.loads(line)
    except (OSError, ValueError):
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
