"""Servers on loopback for the artifact tests: moto's S3 and MLflow's own tracking server.

Each runs in its own process group on an ephemeral port and is stopped with that group (MLflow
starts uvicorn/gunicorn workers), also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def moto_s3(tmp_path: Path, bucket: str = "team-bucket") -> Iterator[Dict[str, str]]:
    """An S3 endpoint (moto's server mode) with ``bucket``; yields the environment that points
    boto3 (and MLflow's S3 repository, through MLFLOW_S3_ENDPOINT_URL) at it."""
    pytest.importorskip("moto", reason="moto[server] is in the test extra")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    log = tmp_path / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait(endpoint, proc, log, "moto")
        env = dict(S3_ENV, MLFLOW_S3_ENDPOINT_URL=endpoint)
        boto3.client("s3", endpoint_url=endpoint, **_creds()).create_bucket(Bucket=bucket)
        yield env
    finally:
        _stop(proc)


def _creds() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}


def s3_client(env: Dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], **_creds())


@contextlib.contextmanager
def mlflow_server(python: Path, backend: str, tmp_path: Path, args: List[str],
                  env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """``mlflow server`` of the venv of ``python`` on ``backend``; yields its URL."""
    port = free_port()
    log = tmp_path / f"mlflow-server-{port}.log"
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server_env.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(python.parent / "mlflow"), "server", "--backend-store-uri", backend,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=server_env,
            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(f"{url}/health", proc, log, "mlflow server")
        yield url
    finally:
        _stop(proc)
