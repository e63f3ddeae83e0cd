"""Per-MLflow-version virtualenvs, cached outside git.

``ensure_venv("3.17.2")`` returns the path of the venv's python, creating the venv on first use.
Cache root: ``$FS2SQL_CACHE`` or ``~/.cache/fs2sql-dev``; venvs live in ``<root>/venvs/mlflow-<ver>``.

Two kinds: full ``mlflow`` (the fixture writers and ``mlflow server``) and, with
``package="mlflow-skinny"``, the oracle readers in ``<root>/venvs/mlflow-skinny-<ver>``: MLflow's
FileStore and SqlAlchemyStore need only mlflow-skinny, SQLAlchemy and Alembic, so the reader can be
exactly the mlflow-skinny fs2sql is installed with, even when that release's full ``mlflow`` does
not install (3.18.0: its ``mlflow-tracing`` was never published).

Concurrency and idempotency: a per-version lock file serialises builders, and a marker file
written last says the venv is complete. The venv is built in place (not in a temp dir renamed
afterwards) because a venv's console scripts (``bin/mlflow``) embed its absolute path; a
half-built venv without the marker (killed build) is deleted and rebuilt by the next caller.
The marker holds the venv's requirement list: a venv cached by an older fs2sql checkout whose
list differs (e.g. one made before the database drivers were added) is deleted and rebuilt too.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

from .versions import VENV_PYTHON_VERSION

MARKER = ".fs2sql-complete"
DB_DRIVERS = ("psycopg2-binary", "psycopg[binary]", "pymysql")


def cache_root() -> Path:
    """Root of the fixture cache (venvs and stores)."""
    env = os.environ.get("FS2SQL_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "fs2sql-dev"
    root.mkdir(parents=True, exist_ok=True)
    return root


PACKAGES = ("mlflow", "mlflow-skinny")


def venv_dir(mlflow_version: str, package: str = "mlflow") -> Path:
    if package not in PACKAGES:
        raise ValueError(f"package must be one of {PACKAGES}, not {package!r}")
    return cache_root() / "venvs" / f"{package}-{mlflow_version}"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def find_base_python() -> str:
    """The interpreter the venvs are made from: a pyenv 3.11, else any python3.11 on PATH."""
    override = os.environ.get("FS2SQL_VENV_PYTHON")
    if override:
        return override
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(f"{pyenv_root}/versions/{VENV_PYTHON_VERSION}.*/bin/python"))
    if candidates:
        return candidates[-1]
    found = shutil.which(f"python{VENV_PYTHON_VERSION}")
    if found:
        return found
    if sys.version_info[:2] == tuple(int(x) for x in VENV_PYTHON_VERSION.split(".")):
        return sys.executable
    raise RuntimeError(
        f"No Python {VENV_PYTHON_VERSION} found for the fixture venvs. Install it (pyenv) or set "
        "FS2SQL_VENV_PYTHON to its path."
    )


def requirements(mlflow_version: str, package: str = "mlflow") -> List[str]:
    """What goes into the venv for one MLflow release (full ``mlflow`` or ``mlflow-skinny``)."""
    # The database drivers let MLflow's own stores and ``mlflow server`` open fs2sql's server
    # targets: psycopg 3 (SQLAlchemy 2.1's ``postgresql://``), psycopg2 (required on a widened
    # database, see targets/postgresql.py) and PyMySQL (``mysql+pymysql://``).
    if package == "mlflow-skinny":
        # A reader: the stores need SQLAlchemy and Alembic, which mlflow-skinny does not pull;
        # the dump scripts need nothing else (pandas only writes datasets).
        reqs = [f"mlflow-skinny=={mlflow_version}", "sqlalchemy", "alembic", *DB_DRIVERS]
    else:
        reqs = [f"mlflow=={mlflow_version}", "pandas", *DB_DRIVERS]
    if _version_tuple(mlflow_version) < (2, 0):
        # MLflow 1.x (1.30.1 on Python 3.11): its generated protobuf code needs protobuf 3
        # (protobuf >= 4 fails at import: "cannot import name 'service'"), it imports
        # pkg_resources (setuptools < 70, which uv's venvs lack), and SQLAlchemy 2 and pandas 2
        # postdate it.
        return reqs + ["protobuf<4", "setuptools<70", "sqlalchemy<2", "pandas<2"]
    if _version_tuple(mlflow_version) < (3, 10):
        # Releases older than these libraries need the pins: with OpenTelemetry >= 1.35, 2.x
        # traces never finish (they stay IN_PROGRESS) and 3.2.0 fails to end spans
        # ("'MlflowV3SpanProcessor' object has no attribute '_shutdown'"); SQLAlchemy 2.1
        # postdates them too. 3.17.2 works with the newest versions, so it gets no pins.
        reqs += ["sqlalchemy<2.1", "opentelemetry-sdk<1.35", "opentelemetry-api<1.35"]
    return reqs


def _version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in version.split(".")[:2])


def _uv() -> str | None:
    return shutil.which("uv")


def _install(tmp: Path, base_python: str, reqs: List[str]) -> None:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
    uv = _uv()
    if uv:
        subprocess.run([uv, "venv", "-q", "-p", base_python, str(tmp)], check=True, env=env)
        subprocess.run(
            [uv, "pip", "install", "-q", "-p", str(_venv_python(tmp)), *reqs], check=True, env=env
        )
    else:
        subprocess.run([base_python, "-m", "venv", str(tmp)], check=True)
        subprocess.run(
            [str(_venv_python(tmp)), "-m", "pip", "install", "-q", *reqs], check=True, env=env
        )


def _marker_text(reqs: List[str]) -> str:
    return "".join(req + "\n" for req in reqs)


def _is_complete(venv: Path, reqs: List[str]) -> bool:
    """The venv was built to the end, for exactly ``reqs`` (an older marker held only the
    MLflow version: such a venv lacks the database drivers and counts as stale)."""
    try:
        return (venv / MARKER).read_text() == _marker_text(reqs)
    except OSError:
        return False


def ensure_venv(mlflow_version: str, package: str = "mlflow") -> Path:
    """Return the python of a venv with ``<package>==<mlflow_version>`` (full ``mlflow`` by
    default, or ``mlflow-skinny`` for an oracle reader), building it if needed.

    Idempotent and safe for concurrent callers (per-venv lock; marker written last). A venv
    whose marker names other requirements than ``requirements(mlflow_version, package)`` is
    rebuilt.
    """
    final = venv_dir(mlflow_version, package)
    reqs = requirements(mlflow_version, package)
    if _is_complete(final, reqs):
        return _venv_python(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if _is_complete(final, reqs):
            return _venv_python(final)
        if final.exists():  # half-built leftover from a killed build, or built for other reqs
            shutil.rmtree(final)
        try:
            _install(final, find_base_python(), reqs)
            (final / MARKER).write_text(_marker_text(reqs))
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
    return _venv_python(final)


def run_in_venv(mlflow_version: str, args: List[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in the full-MLflow venv of ``mlflow_version`` (built if needed)."""
    python = ensure_venv(mlflow_version)
    return subprocess.run([str(python), *args], **kwargs)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the fixture venv of MLflow releases.")
    parser.add_argument("versions", nargs="+")
    parser.add_argument("--skinny", action="store_true", help="mlflow-skinny reader venvs")
    args = parser.parse_args()
    for v in args.versions:
        print(ensure_venv(v, "mlflow-skinny" if args.skinny else "mlflow"))
