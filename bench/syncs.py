"""The ``sync`` and ``fleet`` sections of the bench (issues 13 and 17): ``fs2sql sync`` against
a full migration of the same store, MLflow's SqlAlchemyStore writing beside a sync, and a
no-change sync with one vs. many stores in one PostgreSQL database.

Per store (``--sizes``) and target (``--targets``: sqlite, postgresql, mariadb), on a copy of
the store (the +1% rows add runs to it):

* ``migrate``: ``fs2sql migrate`` into a new database (the yardstick; ``--rounds``, median);
* ``first sync``: into a new database (goal: what a migration costs);
* ``no-change sync``: nothing changed (goal: <= 10% of the migration; ``--rounds``);
* ``+1% runs``: copies of 1% of the runs under new IDs appear, then a sync (goal: <= 15%;
  ``--rounds``, each round with another 1%);
* ``stall``: MLflow 3.17.2's SqlAlchemyStore (fixtures_gen/server_writer.py, in the bench venv)
  logs a metric to a run of its own in a loop while a sync of another +1%, then a first sync of
  a second store of the same size, runs beside it: its longest call, p99, calls, errors.

``fleet`` (PostgreSQL): a no-change sync of one small store (200 runs / 20k points) with 1 and
with N stores synced into the same database (goal: within 1.5x).

Every timed command is a fresh process measured by ``measure.measure``. Databases are made and
dropped with the servers' command-line clients (``servers.Server``): run.py stays stdlib-only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from env import BENCH_DIR, MLFLOW_VERSION, log
from measure import measure, read_whole_tree
from render import median
from servers import SERVER_NAME, Server, ServerError
from stores import ensure_store, size_label

SECTIONS = ("migrate", "sync", "fleet")
SYNC_TARGETS = ("sqlite", "postgresql", "mariadb")
WRITER = BENCH_DIR.parent / "fixtures_gen" / "server_writer.py"
# time goals as a share of the migration's wall time (first sync: "about the same")
GOALS = {"first sync": 1.10, "no-change sync": 0.10, "+1% runs": 0.15}
# the server's longest call beside a sync: on PostgreSQL/MariaDB a sync takes row locks only,
# none the server's own run needs, so its calls keep their normal latency; on SQLite the write
# transaction holds the database-wide lock and a server write waits for it (reported only)
STALL_GOAL_S = {"postgresql": 0.25, "mariadb": 0.25}
FLEET_GOAL = 1.5
FLEET_STORE = dict(runs=200, points=20_000)


class SyncFailed(RuntimeError):
    pass


class Bench:
    """What the sync rows share: the fs2sql command, the bench venv, the servers, a work dir."""

    def __init__(self, ctx: dict, venv: Path, servers: dict, work: Path):
        self.fs2sql = ctx["fs2sql"]
        self.venv = venv
        self.servers = servers
        self.work = work / "sync"
        self.work.mkdir(exist_ok=True)
        self.n = 0

    def _next(self) -> int:
        self.n += 1
        return self.n

    # -- targets -----------------------------------------------------------------------------
    def new_target(self, kind: str, tag: str) -> dict:
        """A new, empty database: {"arg": what fs2sql gets, "sa": the writer's SQLAlchemy URL}."""
        n = self._next()
        if kind == "sqlite":
            path = self.work / f"{tag}-{n}.db"
            return {"kind": kind, "arg": str(path), "sa": f"sqlite:///{path}", "path": path}
        srv = self.servers[kind]
        db = f"fs2sql_bench_{os.getpid()}_{tag}_{n}"
        srv.drop(db)
        srv.create(db)
        return {"kind": kind, "arg": srv.url(db), "sa": srv.sa_url(db), "db": db}

    def drop(self, target: dict) -> None:
        if target["kind"] == "sqlite":
            for p in target["path"].parent.glob(target["path"].name + "*"):
                p.unlink()
        else:
            self.servers[target["kind"]].drop(target["db"])

    # -- one timed fs2sql process --------------------------------------------------------------
    def run(self, *args) -> dict:
        log_path = self.work / f"log-{self._next()}.txt"
        cmd = [*self.fs2sql, *map(str, args), "-q"]
        r = measure(cmd, log_path)
        if r["rc"] not in (0, 4):
            tail = log_path.read_text(errors="replace")[-2000:]
            raise SyncFailed(f"exit {r['rc']}: {' '.join(map(str, args[:1]))}: {tail}")
        log_path.unlink()
        log_path.with_suffix(".time").unlink(missing_ok=True)
        return r

    def warm_up(self, kind: str) -> None:
        """Untimed: fs2sql's schema cache for MLflow 3.17.2 on this target (as in run.py)."""
        t = self.new_target(kind, "warm")
        try:
            self.run("migrate", "--example", t["arg"], "--mlflow-version", MLFLOW_VERSION,
                     *ids(kind))
        finally:
            self.drop(t)


def ids(kind: str) -> list:
    # MLflow's server schema has 32-bit experiment IDs, the bench store 18-digit ones
    return [] if kind == "sqlite" else ["--experiment-ids", "renumber"]


def summary(label: str, runs: list) -> dict:
    walls = [r["wall_s"] for r in runs]
    return {"label": label, "median_wall_s": median(walls), "min_wall_s": min(walls),
            "max_wall_s": max(walls), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "median_cpu_s": round(median([r["user_s"] + r["sys_s"] for r in runs]), 2),
            "n": len(runs), "runs": runs}


def add_runs(store: Path, fraction: float, seed: int) -> int:
    """Copies of ``fraction`` of the runs under new IDs (a sweep adding runs); returns how many.
    Their files are dated 30 s back, as an hourly cron finds them (a sync does not trust what
    changed within the last 2 s)."""
    rng = random.Random(seed)
    runs = sorted(p for p in store.glob("[0-9]*/*") if p.is_dir() and len(p.name) == 32)
    chosen = rng.sample(runs, max(1, int(len(runs) * fraction)))
    old = time.time() - 30
    for run in chosen:
        rid = uuid.UUID(int=rng.getrandbits(128)).hex
        new = run.parent / rid
        shutil.copytree(run, new)
        meta = new / "meta.yaml"
        meta.write_text(meta.read_text().replace(run.name, rid))
        for dirpath, _, files in os.walk(new):
            for f in files:
                os.utime(os.path.join(dirpath, f), (old, old))
    return len(chosen)


def stall(b: Bench, target: dict, sync_args: list) -> dict:
    """The SqlAlchemyStore's calls (logging to a run it created itself, never synced) while
    ``fs2sql sync SYNC_ARGS`` runs beside it."""
    n = b._next()
    stop, out = b.work / f"stop-{n}", b.work / f"writer-{n}.json"
    started = Path(str(out) + ".started")
    writer = subprocess.Popen([str(b.venv / "bin" / "python"), str(WRITER), target["sa"],
                               str(stop), str(out)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        while not started.exists():
            if writer.poll() is not None:
                raise SyncFailed(f"server writer failed: {writer.stderr.read()[-2000:]}")
            time.sleep(0.1)
        time.sleep(1.0)  # the writer's steady state first
        r = b.run("sync", *sync_args, target["arg"])
        time.sleep(0.5)
    finally:
        stop.touch()
        try:
            writer.wait(timeout=120)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
    if writer.returncode != 0:
        raise SyncFailed(f"server writer failed: {writer.stderr.read()[-2000:]}")
    result = json.loads(out.read_text())
    result.update(sync_s=r["wall_s"], sync_peak_rss_mb=r["peak_rss_mb"],
                  goal_max_s=STALL_GOAL_S.get(target["kind"]))
    if result["goal_max_s"] is not None and result["max_s"] is not None:
        result["met"] = result["max_s"] < result["goal_max_s"] and not result["errors"]
    return result


def sync_target(b: Bench, mlruns: Path, label: str, kind: str, rounds: int,
                second_store: Path, save) -> dict:
    """The rows of one store on one target; ``save()`` after each row (partial results)."""
    res = {"target": kind, "rows": {}, "stall": {}}
    rows = res["rows"]
    work = b.work / f"store-{label}-{kind}"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(mlruns, work, symlinks=True)  # copy2: mtimes kept
    read_whole_tree(work)
    version = ["--mlflow-version", MLFLOW_VERSION]

    def row(name: str, runs: list) -> None:
        rows[name] = summary(name, runs)
        mig = rows.get("migrate", {}).get("median_wall_s")
        if mig and name != "migrate":
            rows[name]["vs_migrate"] = round(rows[name]["median_wall_s"] / mig, 3)
            if name in GOALS:
                rows[name]["goal"] = GOALS[name]
                rows[name]["met"] = rows[name]["vs_migrate"] <= GOALS[name]
        log(f"sync {label} {kind}: {name}: {rows[name]['median_wall_s']:.2f} s"
            + (f" ({rows[name]['vs_migrate']:.1%} of migrate)" if "vs_migrate" in rows[name]
               else "") + f", peak RSS {rows[name]['peak_rss_mb']:.0f} MB")
        save()

    migs = []
    for _ in range(rounds):
        t = b.new_target(kind, "migrate")
        try:
            migs.append(b.run("migrate", work, t["arg"], *version, *ids(kind)))
        finally:
            b.drop(t)
    row("migrate", migs)
    target = b.new_target(kind, "sync")
    try:
        row("first sync", [b.run("sync", work, target["arg"], *version, *ids(kind))])
        row("no-change sync", [b.run("sync", work, target["arg"]) for _ in range(rounds)])
        plus = []
        for i in range(rounds):
            res["added_runs"] = add_runs(work, 0.01, seed=100 + i)
            plus.append(b.run("sync", work, target["arg"]))
        row("+1% runs", plus)
        add_runs(work, 0.01, seed=7)
        res["stall"]["+1% sync"] = s = stall(b, target, [work])
        log(f"sync {label} {kind}: stall beside a +1% sync: max {s['max_s'] * 1000:.0f} ms, "
            f"{s['errors']} errors")
        save()
        res["stall"]["first sync of a 2nd store"] = s = stall(b, target, [second_store, *ids(kind)])
        log(f"sync {label} {kind}: stall beside a first sync of a 2nd store: max "
            f"{s['max_s'] * 1000:.0f} ms, {s['errors']} errors")
        save()
    finally:
        b.drop(target)
        shutil.rmtree(work, ignore_errors=True)
    return res


def fleet(b: Bench, venv: Path, n: int, rounds: int, base_spec: dict, save) -> dict:
    """No-change sync of one store with 1 and with ``n`` stores synced into one PostgreSQL
    database (each store 200 runs / 20k points, generated once into the cache)."""
    stores = []
    for i in range(n):
        spec = dict(base_spec, **FLEET_STORE, seed=1000 + i)
        stores.append(ensure_store(venv, spec, False)[0])
    res = {"stores": n, "store": FLEET_STORE, "goal": FLEET_GOAL}
    target = b.new_target("postgresql", "fleet")
    version = ["--mlflow-version", MLFLOW_VERSION, "--experiment-ids", "renumber"]
    try:
        b.run("sync", stores[0], target["arg"], *version)
        one = summary("1 store", [b.run("sync", stores[0], target["arg"])
                                  for _ in range(rounds)])
        t0 = time.perf_counter()
        for s in stores[1:]:
            b.run("sync", s, target["arg"], *version)
        res["fill_s"] = round(time.perf_counter() - t0, 1)
        many = summary(f"{n} stores", [b.run("sync", stores[0], target["arg"])
                                       for _ in range(rounds)])
    finally:
        b.drop(target)
    res.update(one=one, many=many,
               ratio=round(many["median_wall_s"] / one["median_wall_s"], 3))
    res["met"] = res["ratio"] <= FLEET_GOAL
    log(f"fleet: no-change sync {one['median_wall_s']:.2f} s with 1 store, "
        f"{many['median_wall_s']:.2f} s with {n} (ratio {res['ratio']:.2f})")
    save()
    return res


def ensure_servers(kinds: list, servers: dict, results: dict) -> list:
    """Reach the servers among ``kinds`` that run.py did not set up (no template needed);
    returns the kinds that can be used."""
    ok = []
    for kind in kinds:
        if kind == "sqlite" or kind in servers:
            ok.append(kind)
            continue
        srv = Server(kind)
        info = results.setdefault("servers", {}).setdefault(kind, {
            "url": srv.display(srv.admin_db)})
        try:
            info["version"] = srv.connect_check()
            servers[kind] = srv
            ok.append(kind)
        except (ServerError, OSError) as exc:
            info["error"] = " ".join(str(exc).split())[-500:]
            log(f"{SERVER_NAME[kind]} left out of the sync rows: {info['error']}")
    return ok


def run_sections(a, ctx: dict, venv: Path, sections: list, targets: list, stores: list,
                 results: dict, servers: dict, work: Path, save) -> None:
    b = Bench(ctx, venv, servers, work)
    kinds = [k for k in targets if k in SYNC_TARGETS] if "sync" in sections else []
    need = list(dict.fromkeys(kinds + (["postgresql"] if "fleet" in sections else [])))
    usable = ensure_servers(need, servers, results)
    for kind in usable:
        b.warm_up(kind)
    if "sync" in sections:
        out = results["sync"] = {"goals": GOALS, "stall_goal_s": STALL_GOAL_S, "sizes": []}
        for mlruns, size in zip(stores, results["sizes"]):
            spec = dict(size["spec"], seed=size["spec"]["seed"] + 99)
            second, _, _ = ensure_store(venv, spec, False)
            label = size_label(size)
            entry = {"label": label, "store": str(mlruns), "second_store": str(second),
                     "targets": {}}
            out["sizes"].append(entry)
            for kind in kinds:
                if kind not in usable:
                    continue
                try:
                    entry["targets"][kind] = sync_target(b, mlruns, label, kind,
                                                         a.rounds, second, save)
                except (SyncFailed, ServerError) as exc:
                    entry["targets"][kind] = {"target": kind, "error": str(exc)[-2000:]}
                    log(f"sync {label} {kind} FAILED: {exc}")
                save()
    if "fleet" in sections:
        if "postgresql" not in usable:
            results["fleet"] = {"error": "PostgreSQL not reached"}
            return
        try:
            base = dict(experiments=a.experiments, params=a.params, tags=a.tags,
                        models=a.models, keys=0)
            results["fleet"] = fleet(b, venv, a.fleet, a.rounds, base, save)
        except (SyncFailed, ServerError) as exc:
            results["fleet"] = {"error": str(exc)[-2000:]}
            log(f"fleet FAILED: {exc}")
        save()
