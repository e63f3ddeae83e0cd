"""MLflow's own server (full MLflow ``fixtures_gen.versions.SERVER``, the newest full MLflow that
installs, in its own virtualenv) starts on fs2sql's database made with ``--mlflow-version SERVER``
and lists the runs over its REST API -- on a store written by MLflow 2.22.5 and one by 3.17.2, in
SQLite, in PostgreSQL (experiments renumbered to 32-bit IDs, or the schema widened to keep the
18-digit FileStore IDs) and in MariaDB (renumbered). The server runs in its own process group,
killed whole at the end (gunicorn/uvicorn workers included).

The server is started with the backend URI fs2sql's own start command names (its driver: the
fixture venvs carry psycopg 3, psycopg2 and PyMySQL, see ``fixtures_gen/envs.py``). Servers that
do not answer skip these tests like ``tests/test_server_targets.py`` (they fail with CI=true).
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import oracle_pair, require_schema

from fixtures_gen.envs import ensure_venv
from fixtures_gen.versions import LATEST_2X, LATEST_3X, SERVER
from mlflow_fs2sql.ids import SOURCE_ID_TAG
from mlflow_fs2sql.migrate import MigrateOptions, migrate

pytestmark = [pytest.mark.oracle, pytest.mark.slow]
INT32_MAX = 2**31 - 1
PAGE = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _paged(port, path, body, key):
    """Every item of a paged REST search."""
    out, token = [], None
    while True:
        page = _post(port, path, {**body, **({"page_token": token} if token else {})})
        out.extend(page.get(key, []))
        token = page.get("next_page_token")
        if not token:
            return out


# -- SQLite ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [LATEST_2X, LATEST_3X])
def test_mlflow_server_lists_the_migrated_runs(version, tmp_path):
    fs, store = _fixture(version)
    db = tmp_path / "out.db"
    report = migrate(str(store), str(db), MigrateOptions(mlflow_version=SERVER, verify=True))
    assert report.ok, report.mismatches[:5]
    assert_server_lists_runs(SERVER, db, fs, tmp_path)


# -- PostgreSQL and MariaDB ------------------------------------------------------------------------
# MLflow installs no database driver: the start command names one it can get from pip (a bare
# mysql:// is SQLAlchemy's mysqlclient, which needs a compiler and libmysqlclient) and says so.
_START = {"postgresql": ("postgresql+psycopg2://", "pip install psycopg2-binary"),
          "mysql": ("mysql+pymysql://", "pip install pymysql")}


@pytest.mark.parametrize("version", [LATEST_2X, LATEST_3X])
def test_mlflow_server_lists_the_runs_on_a_renumbered_server_database(version, server, tmp_path):
    fs, store = _fixture(version)
    url = server.new_db()
    report = migrate(str(store), url, MigrateOptions(experiment_ids="renumber", verify=True,
                                                     mlflow_version=SERVER))
    assert report.ok, report.mismatches[:5]
    renumbered = _renumbered(report, fs)
    key = '"key"' if server.kind == "postgresql" else "`key`"
    tags = server.query(url, f"SELECT experiment_id, value FROM experiment_tags "
                             f"WHERE {key} = '{SOURCE_ID_TAG}'")
    assert {int(source): new for new, source in tags} == renumbered
    prefix, requires = _START[server.kind]
    uri = _start_uri(report, url)
    assert uri.startswith(prefix) and report.start_requires == requires
    assert_server_lists_runs(SERVER, uri, fs, tmp_path, renumbered)


def test_mlflow_server_lists_the_runs_on_widened_postgresql(pg, tmp_path):
    """Widened: the exact 18-digit IDs, reached through psycopg2 as fs2sql's start command says
    (psycopg 3 binds experiment IDs as INTEGER)."""
    fs, store = _fixture(LATEST_3X)
    assert any(int(e["experiment_id"]) > INT32_MAX for e in fs["experiments"])
    url = pg.new_db()
    report = migrate(str(store), url, MigrateOptions(experiment_ids="widen", verify=True,
                                                     mlflow_version=SERVER))
    assert report.ok, report.mismatches[:5]
    assert report.experiment_ids == {"policy": "widen", "renumbered": {}}
    assert _start_uri(report, url).startswith("postgresql+psycopg2://")
    assert_server_lists_runs(SERVER, _start_uri(report, url), fs, tmp_path)


def _fixture(version):
    """(FileStore dump by the oracle reader, mlruns path) of the ``full`` store of ``version``."""
    if version == LATEST_3X:
        require_schema("assessments")
    fs, _, _, store = oracle_pair(version)
    return fs, store


def _renumbered(report, fs) -> dict:
    """{source ID: database ID} from the report; exactly the experiments too large for 32 bits
    were renumbered, to 1, 2, ... (0 stays 0)."""
    assert report.experiment_ids["policy"] == "renumber"
    renumbered = {int(k): v for k, v in report.experiment_ids["renumbered"].items()}
    large = {int(e["experiment_id"]) for e in fs["experiments"]
             if int(e["experiment_id"]) > INT32_MAX}
    assert set(renumbered) == large
    assert sorted(renumbered.values()) == list(range(1, len(renumbered) + 1))
    return renumbered


def _start_uri(report, url: str) -> str:
    """The backend URI of fs2sql's start command (its scheme and driver), with the credentials
    of ``url`` (the command shows the password as ***)."""
    prefix = "mlflow server --backend-store-uri "
    assert report.start_command.startswith(prefix), report.start_command
    shown = report.start_command[len(prefix):].strip("'\"")
    return shown.split("://", 1)[0] + "://" + url.split("://", 1)[1]


# -- the check ------------------------------------------------------------------------------------
def assert_server_lists_runs(server_version, db, fs, tmp_path, renumbered=None):
    """Start full MLflow ``server_version``'s server on ``db`` -- an SQLite file (the server
    gets a copy) or a database URL -- and check over its REST API that it lists every
    experiment and every run of the FileStore dump ``fs``: IDs, names, states and params, with
    experiment IDs mapped through ``renumbered`` ({source ID: database ID})."""
    if isinstance(db, Path):
        copy = tmp_path / "server.db"
        copy.write_bytes(db.read_bytes())
        backend = f"sqlite:///{copy}"
    else:
        backend = db
    renumbered = renumbered or {}

    def server_id(experiment_id) -> str:
        return str(renumbered.get(int(experiment_id), experiment_id))

    python = ensure_venv(server_version)
    port = _free_port()
    log_path = tmp_path / "mlflow-server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(python.parent / "mlflow"), "server", "--backend-store-uri", backend,
             "--default-artifact-root", (tmp_path / "artifacts").as_uri(),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    out = log_path.read_text(errors="replace")[-3000:]
                    pytest.fail(f"mlflow server did not start on {backend.split(':', 1)[0]}:"
                                f"\n{out}")
                time.sleep(0.5)
        experiments = _paged(port, "/api/2.0/mlflow/experiments/search",
                             {"view_type": "ALL", "max_results": PAGE}, "experiments")
        got = sorted((e["experiment_id"], e["name"], e["lifecycle_stage"]) for e in experiments)
        want = sorted((server_id(e["experiment_id"]), e["name"], e["lifecycle_stage"])
                      for e in fs["experiments"])
        assert got == want
        runs = _paged(port, "/api/2.0/mlflow/runs/search",
                      {"experiment_ids": [e[0] for e in want], "run_view_type": "ALL",
                       "max_results": PAGE}, "runs")
        got_runs = sorted(_run_view(r["info"], {p["key"]: p["value"] for p in
                                                r.get("data", {}).get("params", [])})
                          for r in runs)
        want_runs = sorted(_run_view({**r["info"], "experiment_id":
                                      server_id(r["info"]["experiment_id"])}, r["params"])
                           for r in fs["runs"])
        assert len(got_runs) == len(want_runs) == len(fs["runs"]) > 0
        assert [r[0] for r in got_runs] == [r[0] for r in want_runs]  # the run IDs first
        assert got_runs == want_runs
    finally:
        stop_process_group(server)


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop ``proc`` and everything it started (``mlflow server`` forks gunicorn or uvicorn
    workers, which outlive a terminated parent): SIGTERM to its process group, SIGKILL to what
    is left after ``timeout`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so that only live members keep the group
            if not _live_group_members(proc.pid):
                break
            time.sleep(0.2)
        else:
            continue  # someone survived SIGTERM: SIGKILL the group
        break
    proc.wait()


def _live_group_members(pgid: int) -> list:
    """PIDs of the process group's members that are not zombies (from /proc on Linux; where
    there is no /proc, whether the group still exists at all)."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            live.append(int(entry))
    return live


def _run_view(info: dict, params: dict) -> tuple:
    """What is compared of one run: REST JSON and the dump's RunInfo alike."""
    return (info["run_id"], str(info["experiment_id"]), info.get("run_name") or "",
            info["status"], info["lifecycle_stage"], int(info["start_time"] or 0),
            int(info.get("end_time") or 0), json.dumps(params, sort_keys=True))


# -- the fixture venvs carry the drivers ----------------------------------------------------------
def test_a_venv_cached_without_the_drivers_is_rebuilt(tmp_path, monkeypatch):
    """A venv whose marker predates the drivers (it held only the MLflow version) is deleted and
    built again with them; a venv built for the current requirements is kept."""
    from fixtures_gen import envs

    monkeypatch.setenv("FS2SQL_CACHE", str(tmp_path))
    monkeypatch.setattr(envs, "find_base_python", lambda: "python3")
    built = []

    def fake_install(venv, base_python, reqs):
        built.append(list(reqs))
        (venv / "bin").mkdir(parents=True)

    monkeypatch.setattr(envs, "_install", fake_install)
    old = envs.venv_dir(SERVER)
    (old / "bin").mkdir(parents=True)
    (old / "stale-file").write_text("")
    (old / envs.MARKER).write_text(SERVER + "\n")
    assert envs.ensure_venv(SERVER) == old / "bin" / "python"
    assert len(built) == 1 and not (old / "stale-file").exists()
    assert {"psycopg2-binary", "psycopg[binary]", "pymysql"} <= set(built[0])
    assert (old / envs.MARKER).read_text().splitlines() == built[0]
    envs.ensure_venv(SERVER)
    assert len(built) == 1  # up to date: kept
