"""Shared test helpers: tiny literal stores, the CLI runner, and real fixture stores."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import servers

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # fixtures_gen lives beside the package, not inside it
    sys.path.insert(0, str(REPO))


def query(db, sql, *args):
    """Rows of one SQL query on an SQLite file (opened and closed here)."""
    import sqlite3

    con = sqlite3.connect(str(db))
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def write_files(root: Path, files: dict) -> Path:
    """Write {relative path: str | bytes} below root; returns root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
    return root


def run_meta(run_id: str, experiment_id: str, **fields) -> str:
    """A run meta.yaml as MLflow 3.x writes it."""
    import yaml

    meta = {
        "artifact_uri": f"file:///tmp/mlruns/{experiment_id}/{run_id}/artifacts",
        "end_time": 1718000050000,
        "entry_point_name": "",
        "experiment_id": experiment_id,
        "lifecycle_stage": "active",
        "run_id": run_id,
        "run_name": "run",
        "source_name": "",
        "source_type": 4,
        "source_version": "",
        "start_time": 1718000000500,
        "status": 3,
        "tags": [],
        "user_id": "alice",
    }
    meta.update(fields)
    return yaml.safe_dump(meta, default_flow_style=False, allow_unicode=True)


def experiment_meta(experiment_id: str, name: str, **fields) -> str:
    import yaml

    meta = {
        "artifact_location": f"file:///tmp/mlruns/{experiment_id}",
        "creation_time": 1718000000123,
        "experiment_id": experiment_id,
        "last_update_time": 1718000000123,
        "lifecycle_stage": "active",
        "name": name,
    }
    meta.update(fields)
    return yaml.safe_dump(meta, default_flow_style=False, allow_unicode=True)


@pytest.fixture
def tiny_store(tmp_path) -> Path:
    """One experiment (0) with one finished run holding a param, a tag and a metric."""
    rid = "a" * 32
    return write_files(tmp_path / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        f"0/{rid}/meta.yaml": run_meta(rid, "0"),
        f"0/{rid}/params/lr": "0.1",
        f"0/{rid}/tags/mlflow.runName": "run",
        f"0/{rid}/metrics/loss": "1718000000100 0.5 0\n1718000000200 0.25 1\n",
    })


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache, where the file system does (tmpfs keeps them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached(path: Path, offset: int = 0) -> bool:
    """Whether the page of ``path`` at ``offset`` is in the page cache (Linux: a read with
    RWF_NOWAIT fails instead of waiting for the disk). A miss may start reading that part back
    in, so ask once per place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], offset, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def tree_hash(root: Path) -> str:
    """A hash of every path, mode and content below root (the source must never change)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [""]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(p.encode() + str(st.st_mode).encode())
            if name and not os.path.islink(p):
                with open(p, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path_factory):
    """The schema cache is shared by the session (building it takes seconds), never the user's."""
    cache = os.environ.get("FS2SQL_TEST_CACHE_DIR") or str(
        tmp_path_factory.getbasetemp() / "fs2sql-cache")
    monkeypatch.setenv("FS2SQL_CACHE_DIR", cache)


def fixture_store(version: str, size: str) -> Path:
    """A real FileStore written by MLflow ``version`` (built on first use by fixtures_gen)."""
    from fixtures_gen.build import ensure_store

    return Path(ensure_store(version, size))


_ORACLE_CACHE: dict = {}


def oracle_reader() -> str:
    """The MLflow whose FileStore and SqlAlchemyStore are compared: exactly the mlflow-skinny
    fs2sql is installed with (so its default schema is the reader's head, whatever release the
    registry served), in its own fixture venv (``fixtures_gen.envs``, package mlflow-skinny)."""
    from mlflow_fs2sql.schema import mlflow_skinny_version

    return mlflow_skinny_version()


def oracle_python() -> Path:
    """The python of the oracle reader's venv (built on first use)."""
    from fixtures_gen.envs import ensure_venv

    return ensure_venv(oracle_reader(), "mlflow-skinny")


def oracle_dump(uri: str) -> dict:
    """``fixtures_gen.oracle.dump`` by the oracle reader (see ``oracle_reader``)."""
    from fixtures_gen.oracle import dump

    return dump(oracle_reader(), uri, "mlflow-skinny")


def installed_head() -> str:
    """The head of the installed mlflow-skinny's migration scripts, by Alembic itself."""
    import mlflow
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    folder = os.path.join(os.path.dirname(mlflow.__file__), "store", "db_migrations")
    config = Config(os.path.join(folder, "alembic.ini"))
    config.set_main_option("script_location", folder)
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, heads
    return heads[0]


def oracle_pair(writer_version: str, size: str = "full"):
    """(FileStore dump, SQL dump of fs2sql's DB, DB path, mlruns path) through MLflow's own
    stores, once per session: migration by fs2sql (default schema: the installed head), reading
    by ``oracle_reader()``."""
    key = (writer_version, size)
    if key not in _ORACLE_CACHE:
        import tempfile

        from mlflow_fs2sql.migrate import migrate, verify

        store = fixture_store(writer_version, size)
        db = Path(tempfile.mkdtemp(prefix="fs2sql-oracle-")) / "out.db"
        migrate(str(store), str(db))
        assert verify(str(store), str(db)).ok
        fs = oracle_dump(store.as_uri())
        sql = oracle_dump(f"sqlite:///{db}")
        # A reader that could not read a section would compare two empty sides as equal.
        assert fs["unsupported"] == {} and sql["unsupported"] == {}, (fs["unsupported"],
                                                                     sql["unsupported"])
        _ORACLE_CACHE[key] = (fs, sql, db, store)
    return _ORACLE_CACHE[key]


_SCHEMA_CACHE: dict = {}


def default_schema():
    """(mlflow-skinny version, {table: set(columns)}) of the schema fs2sql makes by default."""
    if not _SCHEMA_CACHE:
        from mlflow_fs2sql.schema import cached_schema_columns

        columns, info = cached_schema_columns(None)
        _SCHEMA_CACHE["v"] = (info.mlflow_skinny_version,
                              {t: set(c) for t, c in columns.columns.items()})
    return _SCHEMA_CACHE["v"]


def require_schema(table: str, column: str = None) -> None:
    """Skip when the installed mlflow-skinny's schema lacks a table (e.g. Python 3.9, where pip's
    newest mlflow-skinny is 3.1.4: no assessments). fs2sql refuses such stores there."""
    version, tables = default_schema()
    if table not in tables or (column and column not in tables[table]):
        what = f"'{table}.{column}'" if column else f"'{table}'"
        pytest.skip(f"mlflow-skinny {version}, the newest pip installs on this Python, has no "
                    f"{what} in its schema; on it fs2sql refuses such data "
                    "(tests/test_mlflow_version.py)")


def require_revision(revision: str) -> None:
    """Skip when the installed mlflow-skinny does not ship an Alembic revision a test builds."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    folder = Path(spec.submodule_search_locations[0]) / "store" / "db_migrations" / "versions"
    if not list(folder.glob(f"{revision}_*.py")):
        version, _ = default_schema()
        pytest.skip(f"mlflow-skinny {version}, the newest pip installs on this Python, does not "
                    f"ship revision {revision}")


def cli_runner():
    """Typer's CliRunner with stderr apart from stdout (Click < 8.2 mixes them by default)."""
    import inspect

    from typer.testing import CliRunner

    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def damage_source_version() -> str:
    """The newest fixture store the default schema holds: 3.17.2's, or 2.22.5's where pip's
    mlflow-skinny is older than 3.2 (Python 3.9) and has no assessments table."""
    return "3.17.2" if "assessments" in default_schema()[1] else "2.22.5"


def metric_heavy_store(root, runs=60, points=3000):
    """Experiment 0 with ``runs`` runs of ``points`` metric points each: a load that lasts."""
    files = {"0/meta.yaml": experiment_meta("0", "Default")}
    for i in range(runs):
        rid = f"{i:032x}"
        files[f"0/{rid}/meta.yaml"] = run_meta(rid, "0")
        files[f"0/{rid}/metrics/loss"] = "".join(f"{1000 + s} {s * 0.5} {s}\n"
                                                  for s in range(points))
    return write_files(root, files)


# -- real database servers (tests/servers.py) ------------------------------------------------------
def _serving(kind: str):
    admin = servers.PG_ADMIN if kind == "postgresql" else servers.MYSQL_ADMIN
    servers._require(kind, admin)
    server = servers.Server(kind, admin)
    yield server
    server.drop_all()


@pytest.fixture
def pg():
    yield from _serving("postgresql")


@pytest.fixture
def my():
    yield from _serving("mysql")


@pytest.fixture(params=["postgresql", "mysql"])
def server(request):
    yield from _serving(request.param)
