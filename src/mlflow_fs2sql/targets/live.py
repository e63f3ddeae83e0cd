"""A database MLflow's server may be using right now: what ``sync`` needs of each dialect.

Unlike a migration's ``Target`` (a new database, built then published), a ``LiveTarget`` writes
into an existing MLflow database in one short transaction, beside a running server:

* ``lock`` serialises fs2sql runs on one database (SQLite: an ``flock`` on a file beside it;
  PostgreSQL: a session advisory lock; MySQL: ``GET_LOCK``). The operating system or the server
  releases it when the process dies, so a killed sync never blocks the next one. A waiting sync
  says once who holds it, and gives up after ``timeout`` seconds (``LockTimeout``, exit 5).
* ``begin`` starts the write transaction; reads before it (``reader``) take no write lock.
* ``select_for_update`` reads rows that may be updated, locking only them (SQLite locks the whole
  file while the transaction writes: one writer at a time is how SQLite works).
* ``insert_ignore`` inserts rows, skipping any whose key appeared meanwhile (the server wrote
  it: kept, as every conflict is), and returns how many went in where the driver tells.
* experiment IDs: ``next_experiment_id`` hands out a new one; ``reserve_experiment_ids`` moves
  the server's sequence (or AUTO_INCREMENT) past the IDs this sync inserts, before it does.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, List, Optional, Sequence

from ..errors import EXIT_LOCKED, Fs2sqlError

DEFAULT_LOCK_TIMEOUT_S = 900.0
_POLL_S = 0.25


class LockTimeout(Fs2sqlError):
    exit_code = EXIT_LOCKED


def holder_text() -> str:
    """Who this process is, for another sync waiting on it."""
    return f"{socket.gethostname()} pid {os.getpid()} {time.strftime('%H:%M:%S')}"


class LiveTarget:
    display: str = ""
    dialect: str = ""
    experiment_id_limit: Optional[int] = None
    conn = None

    # -- connections -------------------------------------------------------------------------
    def exists(self) -> bool:
        """Does the database hold anything (tables)?"""
        raise NotImplementedError

    def connect(self):
        """The connection of this sync (reads, then the write transaction)."""
        raise NotImplementedError

    _engine = None

    def close(self) -> None:
        """Roll back whatever is open, close the connection and its engine, quietly."""
        try:
            if self.conn is not None:
                self.rollback()
                self.conn.close()
            if self._engine is not None:
                self._engine.dispose()
        except Exception:
            pass
        self.conn = self._engine = None

    # -- the lock ----------------------------------------------------------------------------
    def try_lock(self) -> bool:
        raise NotImplementedError

    def lock_holder(self) -> str:
        """Words for whoever holds the lock now ('' if unknown)."""
        return ""

    def unlock(self) -> None:
        raise NotImplementedError

    def lock(self, timeout: float, on_wait: Callable[[str], None]) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        said = False
        while not self.try_lock():
            if not said:
                holder = self.lock_holder()
                on_wait("waiting for another sync of this database"
                        + (f", started {holder}" if holder else "")
                        + f" (up to {_duration(timeout)}, --lock-timeout)")
                said = True
            if time.monotonic() >= deadline:
                holder = self.lock_holder()
                raise LockTimeout(
                    f"another fs2sql sync held this database for longer than "
                    f"{_duration(timeout)}{' (' + holder + ')' if holder else ''}; this one "
                    "changed nothing.", path=self.display,
                    hint="It runs again at its next scheduled time; raise --lock-timeout if "
                    "syncs regularly take longer than that.")
            time.sleep(_POLL_S)

    # -- the write transaction -----------------------------------------------------------------
    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            pass

    for_update = False

    def insert_ignore(self, table: str, columns: Sequence[str], rows: List[tuple],
                      pk: Sequence[str]) -> int:
        raise NotImplementedError

    def next_experiment_id(self) -> int:
        raise NotImplementedError

    def reserve_experiment_ids(self, largest: int) -> None:
        """Before inserting experiments with explicit IDs up to ``largest``."""

    def start_command(self) -> str:
        return ""


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def open_live(target: str) -> LiveTarget:
    from .server import is_server_url, parse_server_url

    if is_server_url(target):
        if parse_server_url(target).dialect == "postgresql":
            from .live_postgresql import LivePostgres

            return LivePostgres(target)
        from .live_mysql import LiveMysql

        return LiveMysql(target)
    from .live_sqlite import LiveSqlite

    return LiveSqlite(target)
