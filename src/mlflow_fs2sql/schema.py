"""The target schema, made by MLflow's own Alembic migrations (never declared by hand).

Creating it imports MLflow's ORM models and runs dozens of migrations: seconds, whatever the store
size. So for SQLite the empty schema is built once per (mlflow-skinny version, revision) into a
user cache folder and copied for every migration; server targets run the same
``create_schema`` on their connection.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import warnings
from dataclasses import dataclass
from typing import Optional

from .errors import SchemaError

MIN_SQLITE = (3, 31, 0)  # MLflow refuses older SQLite (computed columns)


@dataclass(frozen=True)
class SchemaInfo:
    revision: str
    mlflow_skinny_version: str


def mlflow_skinny_version() -> str:
    """The installed mlflow-skinny (or full mlflow) release, without importing MLflow."""
    from importlib import metadata

    for dist in ("mlflow-skinny", "mlflow"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise SchemaError(
        "MLflow is not installed in fs2sql's environment; fs2sql needs mlflow-skinny for MLflow's "
        "own schema migrations.",
        hint="Reinstall fs2sql (pipx reinstall fs2sql) or pip install mlflow-skinny.",
    )


def cache_root() -> str:
    root = os.environ.get("FS2SQL_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fs2sql")
    return root


def create_schema(connection, revision: Optional[str] = None) -> str:
    """Create MLflow's tables on an empty database as MLflow itself does; return the revision.

    Same steps as ``mlflow.store.db.utils._initialize_tables``: the initial tables, then
    ``alembic upgrade`` with the scripts shipped in mlflow-skinny, up to ``revision`` (default: the
    head of the installed release).
    """
    import logging.config

    from alembic import command
    from alembic.migration import MigrationContext
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    InitialBase.metadata.create_all(connection)
    config = _get_alembic_config(connection.engine.url.render_as_string(hide_password=False))
    config.attributes["connection"] = connection
    # Older MLflow env.py scripts call logging.config.fileConfig(alembic.ini) unconditionally,
    # which prints every migration step at INFO on stderr. The user's logging is not theirs.
    file_config = logging.config.fileConfig
    logging.config.fileConfig = lambda *args, **kwargs: None
    try:
        command.upgrade(config, revision or "heads")
    finally:
        logging.config.fileConfig = file_config
    return MigrationContext.configure(connection).get_current_revision()


def check_sqlite_version() -> None:
    have = tuple(int(x) for x in sqlite3.sqlite_version.split(".")[:3])
    if have < MIN_SQLITE:
        raise SchemaError(
            f"This Python's SQLite is {sqlite3.sqlite_version}; MLflow needs 3.31.0 or newer, so "
            "its server could not open the result.",
            hint="Install fs2sql with a newer Python (pipx install --python python3.X fs2sql).",
        )


def empty_sqlite_schema(revision: Optional[str] = None) -> "tuple[str, SchemaInfo]":
    """Path of a cached, empty SQLite database with MLflow's schema; built on first use."""
    check_sqlite_version()
    version = mlflow_skinny_version()
    folder = os.path.join(cache_root(), "schemas")
    path = os.path.join(folder, f"mlflow-skinny-{version}-{revision or 'head'}.db")
    found = _cached_revision(path)
    if found:
        return path, SchemaInfo(found, version)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".schema-", suffix=".db", dir=folder)
    os.close(fd)
    try:
        found = _build_sqlite_schema(tmp, revision)
        os.replace(tmp, path)  # atomic: concurrent builders each publish a complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path, SchemaInfo(found, version)


def _build_sqlite_schema(path: str, revision: Optional[str]) -> str:
    """Run MLflow's migrations into ``path`` in a child process; return the revision.

    Importing MLflow's ORM models and Alembic and running the migrations takes about 90 MB that
    Python does not give back, so done in fs2sql's own process it would stay on top of the
    migration's working set: the first migration on a machine peaked at 188 MB on the many-runs
    bench store, later ones (cached schema) at 103 MB."""
    import json
    import subprocess

    from .child import module_command

    done = subprocess.run(module_command("mlflow_fs2sql.schema", path, revision or ""),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    out = done.stdout.decode("utf-8", "replace").strip()
    if done.returncode == 0 and out:
        return out.splitlines()[-1]
    err = done.stderr.decode("utf-8", "replace").strip()
    # --verbose shows the child's traceback as the cause
    cause = _ChildFailed(err or f"exit code {done.returncode}, nothing on stderr")
    try:
        failed = json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        last = err.splitlines()[-1] if err else f"exit code {done.returncode}"
        raise SchemaError(
            f"The process running MLflow's migrations ended without a schema ({last}).",
            hint="Run again with --verbose for details.") from cause
    raise SchemaError(failed["what"], hint=failed.get("hint")) from cause


class _ChildFailed(Exception):
    """What the schema-building child printed on stderr (its traceback)."""


def _build_in_this_process(path: str, revision: Optional[str]) -> str:
    import logging

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    # Alembic's env logs every step at INFO through MLflow's logger config; keep stderr clean.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            # MLflow's old migration scripts use APIs SQLAlchemy now deprecates: not ours to fix.
            warnings.simplefilter("ignore")
            found = create_schema(conn, revision)
            conn.commit()
    except Exception as exc:
        raise SchemaError(
            f"MLflow's migrations failed while creating the schema ({type(exc).__name__}: {exc}).",
            hint="Run again with --verbose for details.",
        ) from exc
    finally:
        engine.dispose()
    if not found:
        raise SchemaError("MLflow's migrations ran but recorded no Alembic revision.")
    return found


def main(argv=None) -> int:
    """The child (``child.module_command("mlflow_fs2sql.schema", PATH, REVISION)``): build an
    empty schema into PATH and print its revision; on failure, print the error as one JSON line
    and exit 1."""
    import json
    import sys

    argv = sys.argv[1:] if argv is None else argv
    try:
        print(_build_in_this_process(argv[0], (argv[1] if len(argv) > 1 else "") or None))
    except SchemaError as exc:
        import traceback

        traceback.print_exc()
        print(json.dumps({"what": exc.what, "hint": exc.hint}))
        return 1
    return 0


def _cached_revision(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        row = None
    if not row:
        os.unlink(path)  # damaged cache entry: rebuild
        return None
    return row[0]


def copy_file(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)


def read_target_columns(conn):
    """Column names and string sizes of every table, as the database reports them."""
    from sqlalchemy import String, inspect

    from .rows import TargetColumns

    insp = inspect(conn)
    cols = {}
    for table in insp.get_table_names():
        cols[table] = {
            c["name"]: (getattr(c["type"], "length", None) if isinstance(c["type"], String)
                        else None)
            for c in insp.get_columns(table)
        }
    return TargetColumns(cols).activate()


def cached_schema_columns(revision: Optional[str] = None):
    """(TargetColumns, SchemaInfo) of the cached empty schema, read without writing anything."""
    from sqlalchemy import create_engine

    path, info = empty_sqlite_schema(revision)
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            return read_target_columns(conn), info
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
