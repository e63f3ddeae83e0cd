"""The bench's environment: its cache, locks, log, the MLflow 3.17.2 venv, the floor's empty
schema, and a description of the machine (for RESULTS.md)."""

from __future__ import annotations

import fcntl
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

MLFLOW_VERSION = "3.17.2"
BENCH_DIR = Path(__file__).resolve().parent
MARKER = ".fs2sql-bench-complete"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    env = os.environ.get("FS2SQL_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "fs2sql-dev"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def find_base_python(override: str | None) -> str:
    if override:
        return override
    env = os.environ.get("FS2SQL_VENV_PYTHON")
    if env:
        return env
    pyenv_root = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv")))
    cands = sorted(pyenv_root.glob("versions/3.11.*/bin/python"))
    if cands:
        return str(cands[-1])
    for name in ("python3.11", "python3.12", "python3.10"):
        found = shutil.which(name)
        if found:
            return found
    return sys.executable


# What the bench venv holds; the marker file records it, so a cached venv made before a package
# was added here is completed (pip install into it) instead of silently lacking it.
VENV_PACKAGES = (f"mlflow=={MLFLOW_VERSION}", "psycopg[binary]", "pymysql")


def _venv_install(py: Path, packages, env: dict) -> None:
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "pip", "install", "-q", "-p", str(py), *packages], check=True,
                       env=env)
    else:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True, env=env)


def ensure_bench_venv(base_python: str | None) -> Path:
    """Full mlflow==3.17.2 venv (+ psycopg, PyMySQL for the server floor) at
    <cache>/venvs/bench-mlflow-3.17.2, built in place under a lock. A marker file written last
    lists the installed requirements: without it (half-built) the venv is rebuilt, with an older
    list (no drivers) the missing packages are added."""
    venv = cache_root() / "venvs" / f"bench-mlflow-{MLFLOW_VERSION}"
    py = venv / "bin" / "python"
    want = "\n".join(VENV_PACKAGES) + "\n"

    def have() -> str | None:
        try:
            return (venv / MARKER).read_text()
        except OSError:
            return None

    if have() == want:
        return venv
    with file_lock(venv.parent / f".bench-mlflow-{MLFLOW_VERSION}.lock"):
        marker = have()
        if marker == want:
            return venv
        env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
        if marker is not None and py.exists():
            missing = [p for p in VENV_PACKAGES if p not in marker.split()
                       and not p.startswith("mlflow==")]
            log(f"completing {venv}: {' '.join(missing)}")
            _venv_install(py, missing, env)
            (venv / MARKER).write_text(want)
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        base = find_base_python(base_python)
        log(f"building {venv} ({' '.join(VENV_PACKAGES)}, base {base})")
        uv = shutil.which("uv")
        try:
            if uv:
                subprocess.run([uv, "venv", "-q", "-p", base, str(venv)], check=True, env=env)
            else:
                subprocess.run([base, "-m", "venv", str(venv)], check=True)
            _venv_install(py, VENV_PACKAGES, env)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        (venv / MARKER).write_text(want)
    return venv


def ensure_schema_template(venv: Path) -> tuple[Path, float | None]:
    """Empty MLflow 3.17.2 SQLite schema made by MLflow itself; returns (path, seconds if built)."""
    path = cache_root() / "bench-schema" / f"mlflow-{MLFLOW_VERSION}.db"
    if path.exists():
        return path, None
    with file_lock(path.parent / ".lock"):
        if path.exists():
            return path, None
        tmp = path.parent / f".tmp-{os.getpid()}.db"
        code = ("import sys\nfrom sqlalchemy import create_engine\n"
                "from mlflow.store.db.utils import _initialize_tables\n"
                "_initialize_tables(create_engine('sqlite:///' + sys.argv[1]))\n")
        t0 = time.perf_counter()
        subprocess.run([str(venv / "bin" / "python"), "-c", code, str(tmp)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        os.rename(tmp, path)
    log(f"schema template {path} created by MLflow in {dt:.1f} s")
    return path, dt


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        ram_gb = round(int(m.group(1)) / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    os_name = platform.platform()
    try:
        rel = Path("/etc/os-release").read_text()
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', rel, re.M)
        if m:
            os_name = f"{m.group(1)} (kernel {platform.release()})"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": os_name,
        "python_bench_driver": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_start": list(os.getloadavg()),
    }
