"""Benchmark of ``fs2sql sync`` (issues 13 and 17), side by side with a full migration.

For one store (the bench's generated store, e.g. 1.6M points) and one target kind:

* ``migrate``: a full migration into a new database (the yardstick);
* ``first sync``: into a new database (must cost what a migration costs);
* ``no-change sync``: nothing changed (goal: <= 10% of the migration);
* ``+1% runs``: copies of 1% of the runs under new IDs appear, then a sync (goal: <= 15%);
* ``stall`` (issue 17): MLflow's SqlAlchemyStore logs a metric in a loop (a server at work)
  while a sync of the +1% change, and a first sync of the whole store into a database the
  server already uses, run beside it: its longest call;
* ``fleet`` (issue 17, PostgreSQL): a no-change sync of one store with 1 and with N stores
  already synced into the same database (goal: within 1.5x).

Every timed command is a fresh process (`fs2sql` as installed), measured for wall time and peak
RSS. Prints a Markdown table; ``--json`` writes the numbers.

    python bench/sync_bench.py --fs2sql .nox/bench/bin/fs2sql --store DIR/mlruns \\
        --targets sqlite,postgresql --fleet 50
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PG_ADMIN = os.environ.get("FS2SQL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVER_MLFLOW = "3.17.2"


def isolated(cmd):
    """Run ``cmd`` in a fresh child that reports its own child's peak RSS (ru_maxrss of
    RUSAGE_CHILDREN is a running maximum over all children of a process)."""
    code = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps([p.returncode, time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, p.stderr[-2000:]]))")
    out = subprocess.run([sys.executable, "-c", code, *map(str, cmd)], capture_output=True,
                         text=True, check=True).stdout
    rc, seconds, mb, err = json.loads(out)
    if rc not in (0, 4):
        raise SystemExit(f"failed ({rc}): {' '.join(map(str, cmd))}\n{err}")
    return seconds, mb


class Targets:
    def __init__(self, work: Path):
        self.work = work
        self.made = []

    def new(self, kind: str, tag: str) -> str:
        if kind == "sqlite":
            path = self.work / f"{tag}.db"
            for p in self.work.glob(f"{tag}.db*"):
                p.unlink()
            return str(path)
        name = f"fs2sql_bench_{tag}_{uuid.uuid4().hex[:6]}"
        _admin(f"CREATE DATABASE {name}")
        self.made.append(name)
        return PG_ADMIN.rsplit("/", 1)[0] + "/" + name

    def mlflow_uri(self, target: str) -> str:
        if "://" not in target:
            return f"sqlite:///{target}"
        return target.replace("postgresql://", "postgresql+psycopg2://", 1)

    def drop(self):
        for name in self.made:
            _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _admin(sql: str):
    import psycopg

    with psycopg.connect(PG_ADMIN.replace("postgresql://", "postgresql://", 1),
                         autocommit=True) as conn:
        conn.execute(sql)


def add_runs(store: Path, fraction: float, seed: int = 7) -> int:
    """Copies of ``fraction`` of the runs under new IDs (a sweep adding runs); returns how many."""
    rng = random.Random(seed)
    runs = sorted(p for p in store.glob("[0-9]*/*") if p.is_dir() and len(p.name) == 32)
    chosen = rng.sample(runs, max(1, int(len(runs) * fraction)))
    for run in chosen:
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        new = run.parent / rid
        shutil.copytree(run, new)
        meta = (new / "meta.yaml").read_text().replace(run.name, rid)
        (new / "meta.yaml").write_text(meta)
        old = time.time() - 30  # written a while before the sync, as an hourly cron sees it
        os.utime(new / "meta.yaml", (old, old))
    return len(chosen)


def stall(fs2sql: str, store: Path, target: str, uri: str, tmp: Path) -> dict:
    """The longest SqlAlchemyStore call while ``fs2sql sync store target`` runs beside it."""
    from fixtures_gen.envs import ensure_venv

    python = ensure_venv(SERVER_MLFLOW)
    stop, out = tmp / "stop", tmp / "writer.json"
    for p in (stop, out, Path(str(out) + ".started")):
        if p.exists():
            p.unlink()
    writer = subprocess.Popen([str(python), str(REPO / "fixtures_gen" / "server_writer.py"), uri,
                               str(stop), str(out)], stderr=subprocess.PIPE, text=True)
    while not Path(str(out) + ".started").exists():
        if writer.poll() is not None:
            raise SystemExit(writer.stderr.read())
        time.sleep(0.1)
    time.sleep(1.0)  # the writer's steady state first
    seconds, _ = isolated([fs2sql, "sync", store, target, "-q"])
    time.sleep(0.5)
    stop.touch()
    writer.wait(timeout=120)
    result = json.loads(out.read_text())
    result["sync_s"] = seconds
    return result


def bench_target(fs2sql: str, store: Path, kind: str, tg: Targets, tmp: Path, rounds: int):
    rows = {}
    work = tmp / f"store-{kind}"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(store, work, symlinks=True)

    def best(label, make_cmd):
        results = [make_cmd() for _ in range(rounds)]
        results.sort()
        rows[label] = results[len(results) // 2]

    best("migrate", lambda: isolated([fs2sql, "migrate", work, tg.new(kind, "m"), "-q",
                                      "--experiment-ids", "renumber"]
                                     if kind != "sqlite" else
                                     [fs2sql, "migrate", work, tg.new(kind, "m"), "-q"]))
    ids = ["--experiment-ids", "renumber"] if kind != "sqlite" else []
    target = tg.new(kind, "s")
    rows["first sync"] = isolated([fs2sql, "sync", work, target, "-q", "--mlflow-version",
                                   SERVER_MLFLOW, *ids])
    best("no-change sync", lambda: isolated([fs2sql, "sync", work, target, "-q"]))
    n = add_runs(work, 0.01)
    rows[f"+1% runs ({n})"] = isolated([fs2sql, "sync", work, target, "-q"])
    # stall: the server logging beside a sync of another +1%, then beside a first sync of the
    # whole store into the database it uses
    add_runs(work, 0.01, seed=11)
    rows["stall, +1% sync"] = stall(fs2sql, work, target, tg.mlflow_uri(target), tmp)
    other = tmp / f"store2-{kind}"
    if other.exists():
        shutil.rmtree(other)
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_store.py"), "--out", str(other),
                    "--runs", "1000", "--points", "1600000", "--seed", "99"], check=True,
                   capture_output=True)
    rows["stall, first sync of a 2nd store"] = stall(fs2sql, other / "mlruns", target,
                                                     tg.mlflow_uri(target), tmp)
    return rows


def fleet(fs2sql: str, tg: Targets, tmp: Path, n: int) -> dict:
    """No-change sync of one store with 1 and with ``n`` stores synced into one database."""
    stores = []
    for i in range(n):
        out = tmp / f"fleet{i}"
        if not out.exists():
            subprocess.run([sys.executable, str(REPO / "bench" / "gen_store.py"), "--out",
                            str(out), "--runs", "200", "--points", "20000", "--seed", str(i)],
                           check=True, capture_output=True)
        stores.append(out / "mlruns")
    target = tg.new("postgresql", "fleet")
    isolated([fs2sql, "sync", stores[0], target, "-q", "--experiment-ids", "renumber"])
    one = sorted(isolated([fs2sql, "sync", stores[0], target, "-q"]) for _ in range(3))[1]
    for s in stores[1:]:
        isolated([fs2sql, "sync", s, target, "-q", "--experiment-ids", "renumber"])
    many = sorted(isolated([fs2sql, "sync", stores[0], target, "-q"]) for _ in range(3))[1]
    return {"stores": n, "one_s": one[0], "many_s": many[0], "ratio": many[0] / one[0]}


def render(results: dict) -> str:
    lines = []
    for kind, rows in results["targets"].items():
        migrate = rows["migrate"][0]
        lines += [f"### {kind}", "", "| step | time | peak RSS | vs migrate |", "|---|---|---|---|"]
        for label, value in rows.items():
            if label.startswith("stall"):
                continue
            seconds, mb = value
            lines.append(f"| {label} | {seconds:.2f} s | {mb:.0f} MB | {seconds / migrate:.1%} |")
        lines.append("")
        for label, value in rows.items():
            if label.startswith("stall"):
                lines.append(f"- {label}: longest server call {value['max_s'] * 1000:.0f} ms, "
                             f"p99 {value['p99_s'] * 1000:.0f} ms, {value['calls']} calls, "
                             f"{value['errors']} errors, sync {value['sync_s']:.1f} s")
        lines.append("")
    if "fleet" in results:
        f = results["fleet"]
        lines.append(f"### fleet (PostgreSQL)\n\nNo-change sync of one store: {f['one_s']:.2f} s "
                     f"with 1 store in the database, {f['many_s']:.2f} s with {f['stores']} "
                     f"(ratio {f['ratio']:.2f}).")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fs2sql", default=shutil.which("fs2sql"))
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--targets", default="sqlite,postgresql")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fleet", type=int, default=0, help="stores for the fleet row (0: skip)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fs2sql-syncbench-"))
    tg = Targets(tmp)
    results = {"store": str(args.store), "targets": {}}
    try:
        for kind in args.targets.split(","):
            results["targets"][kind] = bench_target(args.fs2sql, args.store, kind, tg, tmp,
                                                    args.rounds)
        if args.fleet:
            results["fleet"] = fleet(args.fs2sql, tg, tmp, args.fleet)
    finally:
        tg.drop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = render(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
