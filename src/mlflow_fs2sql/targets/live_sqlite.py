"""SQLite as a live target: the database file MLflow's server has open.

The write transaction is ``BEGIN IMMEDIATE`` (SQLite's write lock, waited for up to the busy
timeout) in rollback-journal mode, MLflow's own: a failure, Ctrl-C or kill -9 before COMMIT
leaves the file as it was (a killed writer's hot journal is rolled back by the next opener).
While it writes, the server's own writes wait (SQLite has one writer at a time), so ``sync``
reads and parses everything before it begins. Syncs are serialised by an ``flock`` on
``.<name>.fs2sql-lock`` beside the database -- never on the database file itself, whose
``fcntl`` locks SQLite owns (on NFS ``flock`` is emulated with them).
"""

from __future__ import annotations

import fcntl
import os
from typing import List, Optional, Sequence

from .live import LiveTarget, holder_text
from .sqlite import describe_sqlite_file, sqlite_path

BUSY_TIMEOUT_S = 60.0


class LiveSqlite(LiveTarget):
    dialect = "sqlite"

    def __init__(self, target: str):
        self.path = sqlite_path(target)
        self.display = self.path
        folder, name = os.path.split(self.path)
        self.lock_path = os.path.join(folder, f".{name}.fs2sql-lock")
        self._lock_fd: Optional[int] = None
        self._engine = None
        self.conn = None

    def exists(self) -> bool:
        return os.path.isfile(self.path) and not describe_sqlite_file(self.path).startswith(
            ("an empty", "a file that is not"))

    def describe(self) -> str:
        return describe_sqlite_file(self.path) if os.path.exists(self.path) else "missing"

    def connect(self):
        from sqlalchemy import create_engine, event
        from sqlalchemy.pool import NullPool

        if self.conn is not None:
            return self.conn
        self._engine = create_engine(
            f"sqlite:///{self.path}", poolclass=NullPool,
            connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

        @event.listens_for(self._engine, "connect")
        def _pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # fs2sql says when a transaction begins
            dbapi_conn.execute("PRAGMA foreign_keys = ON")  # as MLflow runs every session
            dbapi_conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

        self.conn = self._engine.connect()
        return self.conn

    # -- the lock: flock on a file beside the database -------------------------------------------
    def try_lock(self) -> bool:
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, (holder_text() + "\n").encode(), 0)
        return True

    def lock_holder(self) -> str:
        try:
            with open(self.lock_path, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
        except OSError:
            return ""
        host, _, rest = text.partition(" pid ")
        pid, _, started = rest.partition(" ")
        return f"{started} on {host} (pid {pid})" if started else text

    def unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- the write transaction -------------------------------------------------------------------
    def begin(self) -> None:
        self.conn.exec_driver_sql("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.exec_driver_sql("COMMIT")
        self.conn.commit()

    def rollback(self) -> None:
        try:
            if self.conn.connection.driver_connection.in_transaction:
                self.conn.exec_driver_sql("ROLLBACK")
            self.conn.rollback()
        except Exception:
            pass

    def insert_ignore(self, table: str, columns: Sequence[str], rows: List[tuple],
                      pk: Sequence[str]) -> int:
        raw = self.conn.connection.driver_connection
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        before = raw.total_changes
        # ON CONFLICT DO NOTHING skips only rows whose key exists (OR IGNORE would also drop
        # rows breaking NOT NULL or CHECK constraints, silently).
        raw.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks}) '
                        "ON CONFLICT DO NOTHING", rows)
        return raw.total_changes - before

    def next_experiment_id(self) -> int:
        # MLflow's experiments table has no AUTOINCREMENT on SQLite: the next rowid is max + 1.
        return int(self.conn.exec_driver_sql(
            "SELECT COALESCE(MAX(experiment_id), 0) + 1 FROM experiments").scalar())

    def start_command(self) -> str:
        return f"mlflow server --backend-store-uri sqlite:///{self.path}"
