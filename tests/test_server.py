"""MLflow's own server (full MLflow 3.17.2, its own virtualenv) starts on fs2sql's database and
lists the runs over its REST API — on a store written by MLflow 2.22.5 and one by 3.17.2."""

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import oracle_pair

from fixtures_gen.envs import ensure_venv
from fixtures_gen.versions import LATEST_2X, LATEST_3X

pytestmark = [pytest.mark.oracle, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("version", [LATEST_2X, LATEST_3X])
def test_mlflow_server_lists_the_migrated_runs(version, tmp_path):
    fs, _, db, _ = oracle_pair(version)
    assert_server_lists_runs("3.17.2", db, fs, tmp_path)


def assert_server_lists_runs(server_version, db, fs, tmp_path):
    """Start full MLflow ``server_version``'s server on a copy of ``db``; every run of the
    FileStore dump ``fs`` must come back from its REST API."""
    copy = tmp_path / "server.db"
    copy.write_bytes(db.read_bytes())
    python = ensure_venv(server_version)
    port = _free_port()
    server = subprocess.Popen(
        [str(python.parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{copy}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    out = server.stdout.read().decode(errors="replace")[-3000:]
                    pytest.fail(f"mlflow server did not start:\n{out}")
                time.sleep(0.5)
        experiment_ids = [e["experiment_id"] for e in fs["experiments"]]
        found = _post(port, "/api/2.0/mlflow/runs/search",
                      {"experiment_ids": experiment_ids, "run_view_type": "ALL",
                       "max_results": 1000})
        got = sorted(r["info"]["run_id"] for r in found.get("runs", []))
        assert got == sorted(r["info"]["run_id"] for r in fs["runs"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
