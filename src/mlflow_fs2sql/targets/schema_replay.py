"""MLflow's schema on a server, built once by MLflow's migrations and then replayed.

Running MLflow's Alembic migrations imports MLflow's ORM models and dozens of migration scripts:
about 3-4 s and 90 MB of memory before the first row, for every migration. The SQLite target
avoids that with a cached empty database file; a server has no file to copy, so the first
migration into a given kind of server records every statement MLflow's migrations send on the
load's connection, and later migrations send the same statements again, in the same order, on
their own connection.

What makes a replay exactly MLflow's schema:

- The cache key holds everything the statements depend on: dialect (MariaDB apart from MySQL),
  server version, driver, the PostgreSQL schema, the installed mlflow-skinny release and the
  requested revision. A replay only ever starts on an empty database, the state the recording
  started from.
- Reads (SELECT, SHOW) are left out: on a database being built from empty they change nothing,
  and what MLflow's migrations learned from them is already spelled out in the statements that
  follow. A recording whose writes name the database itself (which differs per target) is
  never stored.
- After a replay the schema as the server describes it (columns with types, nullability and
  defaults; indexes; constraints; triggers) is compared with the one the recording produced; on
  any difference the replay is undone (``reset``), the cache entry deleted,
  and MLflow's migrations run as on the first time. ``FS2SQL_NO_SCHEMA_CACHE=1`` always runs
  them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Callable, List, Optional, Tuple

FORMAT = 2
_READS = ("SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN")


def _enabled() -> bool:
    return os.environ.get("FS2SQL_NO_SCHEMA_CACHE", "").strip() in ("", "0")


def cache_path(conn, revision: Optional[str]) -> str:
    from ..schema import cache_root, mlflow_skinny_version

    dialect = conn.dialect
    flavour = "mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name
    server = ".".join(str(p) for p in (dialect.server_version_info or ()))
    where = ""
    if dialect.name == "postgresql":
        where = conn.exec_driver_sql("SELECT current_schema()").scalar() or ""
    key = "-".join([flavour, server, dialect.driver, where, mlflow_skinny_version(),
                    revision or "head"])
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_root(), "server-schemas", f"{flavour}-{digest}.json")


_FINGERPRINT = {
    "postgresql": [
        "SELECT table_name, column_name, data_type, is_nullable, character_maximum_length, "
        "column_default FROM information_schema.columns WHERE table_schema = current_schema()",
        "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = current_schema()",
        "SELECT cl.relname::text, co.conname::text, pg_get_constraintdef(co.oid) "
        "FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid "
        "WHERE cl.relnamespace = current_schema()::regnamespace",
        "SELECT t.tgrelid::regclass::text, t.tgname::text, pg_get_triggerdef(t.oid) "
        "FROM pg_trigger t JOIN pg_class cl ON cl.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal AND cl.relnamespace = current_schema()::regnamespace",
    ],
    "mysql": [
        "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()",
        "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE "
        "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()",
        "SELECT CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_NAME, UPDATE_RULE, DELETE_RULE "
        "FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()",
        "SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE "
        "FROM information_schema.TABLE_CONSTRAINTS WHERE TABLE_SCHEMA = DATABASE()",
        "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, "
        "ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()",
    ],
}


def schema_fingerprint(conn) -> str:
    """A digest of the schema as the server describes it: columns (types, nullability,
    defaults), indexes, constraints and triggers of the current database/schema."""
    digest = hashlib.sha256()
    for query in _FINGERPRINT["postgresql" if conn.dialect.name == "postgresql" else "mysql"]:
        rows = sorted(tuple("\0" if v is None else str(v) for v in row)
                      for row in conn.exec_driver_sql(query))
        digest.update(json.dumps(rows).encode("utf-8"))
    return digest.hexdigest()


def _is_read(statement: str) -> bool:
    head = statement.lstrip().split(None, 1)
    return bool(head) and head[0].upper() in _READS


def _load(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def _save(path: str, data: dict) -> None:
    tmp = None
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".schema-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)  # atomic: concurrent recorders each publish a whole file
    except (OSError, TypeError, ValueError):
        if tmp is not None:
            _drop(tmp)


def _replay(conn, data: dict) -> Optional[str]:
    """Send the recorded statements; the revision if the result is the recorded schema."""
    for statement, parameters, many in data["statements"]:
        if many:
            conn.exec_driver_sql(statement, [tuple(p) if isinstance(p, list) else p
                                             for p in parameters])
        elif parameters is None or parameters == [] or parameters == {}:
            conn.exec_driver_sql(statement)
        else:
            conn.exec_driver_sql(statement, tuple(parameters) if isinstance(parameters, list)
                                 else parameters)
    found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    if found == data["revision"] and schema_fingerprint(conn) == data["schema"]:
        return found
    return None


def _drop(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def create_schema(conn, revision: Optional[str], run_migrations: Callable[[], str],
                  reset: Optional[Callable[[], None]] = None,
                  database: str = "") -> Tuple[str, bool]:
    """MLflow's schema on the empty database behind ``conn``: replayed when a recording exists,
    else made by ``run_migrations()`` (and recorded). Returns (revision, replayed).

    ``reset`` empties the database again after a failed replay where DDL is not transactional
    (MySQL); without it the replay runs inside a savepoint (PostgreSQL)."""
    if not _enabled():
        return run_migrations(), False
    path = cache_path(conn, revision)
    data = _load(path)
    if data is not None:
        savepoint = conn.begin_nested() if reset is None else None
        try:
            found = _replay(conn, data)
        except Exception:
            found = None
        if found is not None:
            if savepoint is not None:
                savepoint.commit()
            return found, True
        _drop(path)
        if savepoint is not None:
            savepoint.rollback()
        else:
            reset()
    recorded: List[list] = []

    def record(_conn, _cursor, statement, parameters, _context, executemany):
        if not _is_read(statement):
            recorded.append([statement, parameters, bool(executemany)])

    from sqlalchemy import event

    event.listen(conn, "before_cursor_execute", record)
    try:
        found = run_migrations()
    finally:
        event.remove(conn, "before_cursor_execute", record)
    if database and any(database in statement for statement, _, _ in recorded):
        return found, False
    _save(path, {"format": FORMAT, "revision": found, "statements": recorded,
                 "schema": schema_fingerprint(conn)})
    return found, False
