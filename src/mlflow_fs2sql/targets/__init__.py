"""Where the rows go. Everything that differs by database lives behind ``Target``.

SQLite (``sqlite.py``): build into a temporary file beside the target, then rename it into place.
The walker, the writer, ``verify`` and the report never ask which database it is.
"""

from __future__ import annotations

from typing import Optional, Tuple

from ..errors import TargetError
from .base import Target


def open_target(target: str, *, overwrite: bool = False, revision: Optional[str] = None) -> Target:
    """The ``Target`` for a path or URL: SQLite (default), PostgreSQL or MySQL/MariaDB."""
    from .server import is_server_url, parse_server_url

    if is_server_url(target):
        dialect = parse_server_url(target).dialect
        if dialect == "postgresql":
            from .postgresql import PostgresTarget

            return PostgresTarget(target, overwrite=overwrite, revision=revision)
        from .mysql import MysqlTarget

        return MysqlTarget(target, overwrite=overwrite, revision=revision)
    if target.lower().startswith("file:"):
        raise TargetError(
            f"'{target}' is a file:// URI, which MLflow uses for FileStores, not databases.",
            hint="Give a file path such as out.db or an sqlite:/// URI.",
        )
    from .sqlite import SqliteTarget

    return SqliteTarget(target, overwrite=overwrite, revision=revision)


def open_for_reading(target: str) -> Tuple[object, str]:
    """(SQLAlchemy engine that never writes, display name) of an existing database, for
    ``verify``. Server sessions are read-only; SQLite is opened with ``mode=ro``."""
    from .server import is_server_url

    if is_server_url(target):
        tgt = open_target(target)
        return tgt.engine(read_only=True), tgt.display
    from .sqlite import open_sqlite_readonly, sqlite_path

    return open_sqlite_readonly(target), sqlite_path(target)


def connect_for_reading(target: str, engine):
    """A connection from ``open_for_reading``'s engine; a failure is one clear paragraph."""
    from .server import connection_error, is_server_url, parse_server_url

    try:
        return engine.connect()
    except Exception as exc:
        if is_server_url(target):
            raise connection_error(exc, parse_server_url(target)) from None
        raise


__all__ = ["Target", "open_for_reading", "open_target"]
