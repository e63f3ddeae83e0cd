"""Many machines, one database: concurrent ``fs2sql sync`` processes (issue 17).

Real processes (the installed ``fs2sql``), real servers, and beside them MLflow's own
SqlAlchemyStore logging metrics as a server would (fixtures_gen/server_writer.py, in MLflow
3.17.2's venv). Every store has an experiment named "shared" and a small colliding ID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, experiment_meta, run_meta, write_files

pytestmark = pytest.mark.slow

SERVER_MLFLOW = "3.17.2"  # its SqlAlchemyStore writes beside the syncs (schema dc11669786a5)
NODES = 4


def fs2sql(*args, **kw):
    exe = shutil.which("fs2sql") or str(Path(sys.executable).with_name("fs2sql"))
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def node_store(root: Path, node: int, runs: int, start: int = 0) -> Path:
    files = {"0/meta.yaml": experiment_meta("0", "Default"),
             "1/meta.yaml": experiment_meta("1", "shared"),
             f"{2 + node}/meta.yaml": experiment_meta(str(2 + node), f"node-{node}")}
    for i in range(start, start + runs):
        rid = f"{node:02x}{i:030x}"
        exp = "1" if i % 2 else str(2 + node)
        files[f"{exp}/{rid}/meta.yaml"] = run_meta(rid, exp, run_name=f"n{node}-{i}")
        files[f"{exp}/{rid}/params/lr"] = str(i)
        files[f"{exp}/{rid}/metrics/loss"] = "".join(f"{1000 + s} {s} {s}\n" for s in range(50))
    write_files(root, files)
    t = time.time() - 30
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), (t, t))
    return root


def run_ids(root: Path):
    return {p.name for p in root.glob("*/*") if p.is_dir() and len(p.name) == 32}


def all_at_once(stores, target, *extra):
    procs = [fs2sql("sync", str(s), target, "--mlflow-version", SERVER_MLFLOW, "-q", "--json",
                    "-", *extra) for s in stores]
    outputs = [p.communicate(timeout=600) for p in procs]
    results = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]
    for code, _out, err in results:
        assert code == 0, err
        assert "--force" not in err
    return [json.loads(out) for _, out, _ in results]


class Writer:
    """MLflow's SqlAlchemyStore logging to its own run during the syncs."""

    def __init__(self, uri: str, tmp: Path):
        from fixtures_gen.envs import ensure_venv

        self.stop = tmp / "stop"
        self.out = tmp / "writer.json"
        python = ensure_venv(SERVER_MLFLOW)
        self.proc = subprocess.Popen([str(python), str(REPO / "fixtures_gen" / "server_writer.py"),
                                      uri, str(self.stop), str(self.out)],
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 120
        while not Path(str(self.out) + ".started").exists():
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.1)

    def finish(self) -> dict:
        self.stop.touch()
        self.proc.wait(timeout=120)
        return json.loads(self.out.read_text())


def targets(kind, tmp_path, pg, my):
    if kind == "sqlite":
        path = tmp_path / "team.db"
        return str(path), f"sqlite:///{path}", lambda sql: sqlite3.connect(path).execute(
            sql).fetchall()
    server = pg if kind == "postgresql" else my
    url = server.new_db()
    from servers import _driver_url

    driver = _driver_url(url).replace("postgresql+psycopg://", "postgresql+psycopg2://")
    return url, driver, lambda sql: server.query(url, sql)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_a_cluster_syncs_at_once_into_one_new_database(kind, tmp_path, request):
    pg = request.getfixturevalue("pg") if kind == "postgresql" else None
    my = request.getfixturevalue("my") if kind == "mysql" else None
    target, mlflow_uri, query = targets(kind, tmp_path, pg, my)
    stores = [node_store(tmp_path / f"node{n}" / "mlruns", n, runs=6) for n in range(NODES)]
    reports = all_at_once(stores, target)
    assert sum(r["sources"][0]["first_sync"] for r in reports) == 1  # exactly one created it
    # more runs on every node, and the server writing, while all sync again at once
    for n, s in enumerate(stores):
        node_store(s, n, runs=4, start=6)
    writer = Writer(mlflow_uri, tmp_path)
    all_at_once(stores, target)
    written = writer.finish()
    assert written["errors"] == 0, written["first_error"]
    expected = set().union(*(run_ids(s) for s in stores))
    got = [r[0] for r in query("SELECT run_uuid FROM runs")]
    assert len(got) == len(set(got))  # exactly once
    assert set(got) == expected | {written["run_id"]}
    names = [r[0] for r in query("SELECT name FROM experiments")]
    assert sorted(names) == sorted(set(names))
    assert set(names) >= {"Default", "shared", "written by the server"} | {
        f"node-{n}" for n in range(NODES)}
    n_points = query(f"SELECT COUNT(*) FROM metrics WHERE run_uuid = '{written['run_id']}'")[0][0]
    assert n_points == written["points"]
    check = fs2sql("verify", *map(str, stores), target, "-q", "--json", "-")
    out, err = check.communicate(timeout=600)
    assert check.returncode == 0, out + err
    listed = json.loads(out)["listed"]
    assert any("written by the server" in k for k in listed)


def _hold_lock(target: str, seconds: float):
    """A process holding the sync lock of ``target`` the way a sync does."""
    code = ("import sys, time; from mlflow_fs2sql.targets.live import open_live; "
            "t = open_live(sys.argv[1]); assert t.try_lock(); print('locked', flush=True); "
            f"time.sleep({seconds})")
    proc = subprocess.Popen([sys.executable, "-c", code, target], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_a_sync_waits_for_the_lock_says_who_holds_it_and_gives_up_with_exit_5(kind, tmp_path,
                                                                              request):
    pg = request.getfixturevalue("pg") if kind == "postgresql" else None
    my = request.getfixturevalue("my") if kind == "mysql" else None
    target, _, query = targets(kind, tmp_path, pg, my)
    store = node_store(tmp_path / "mlruns", 0, runs=2)
    first = fs2sql("sync", str(store), target, "-q")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = query("SELECT COUNT(*) FROM runs")
    node_store(store, 0, runs=2, start=2)
    holder = _hold_lock(target, 60)
    try:
        waiting = fs2sql("sync", str(store), target, "--lock-timeout", "2", "-q")
        code = waiting.wait(timeout=120)
        err = waiting.stderr.read()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert code == 5, err
    assert "waiting for another sync of this database, started" in err
    if kind in ("sqlite", "postgresql"):
        assert os.uname().nodename in err
    assert "changed nothing" in err
    assert query("SELECT COUNT(*) FROM runs") == before
    # the killed holder left nothing held: the next sync goes straight through
    after = fs2sql("sync", str(store), target, "--lock-timeout", "5", "-q")
    assert after.wait(timeout=300) == 0, after.stderr.read()
    assert query("SELECT COUNT(*) FROM runs")[0][0] == before[0][0] + 2


def test_waiting_syncs_finish_when_the_lock_holder_is_killed(tmp_path, pg):
    target = pg.new_db()
    stores = [node_store(tmp_path / f"node{n}" / "mlruns", n, runs=3) for n in range(3)]
    holder = _hold_lock(target, 600)
    procs = [fs2sql("sync", str(s), target, "-q") for s in stores]
    time.sleep(2)
    assert all(p.poll() is None for p in procs)  # all waiting
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert len(pg.query(target, "SELECT run_uuid FROM runs")) == 9


def test_a_store_moved_to_another_path_is_synced_as_the_same_source(tmp_path, pg):
    target = pg.new_db()
    store = node_store(tmp_path / "here" / "mlruns", 0, runs=4)
    assert fs2sql("sync", str(store), target, "-q").wait(timeout=300) == 0
    moved = tmp_path / "elsewhere" / "mlruns"
    shutil.copytree(store, moved)
    shutil.rmtree(store)
    node_store(moved, 0, runs=1, start=4)
    proc = fs2sql("sync", str(moved), target, "--json", "-", "-q")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["sources"][0]["moved_from"].endswith(str(store))
    runs = next(k for k in report["kinds"] if k["table"] == "runs")
    assert runs["inserted"] == 1  # only the new run; nothing twice
    assert pg.query(target, "SELECT COUNT(*) FROM fs2sql_sources") == [(1,)]
    assert pg.query(target, "SELECT COUNT(*) FROM experiments WHERE name = 'node-0'") == \
        [(1,)]
