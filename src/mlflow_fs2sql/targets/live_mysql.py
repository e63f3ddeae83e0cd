"""MySQL/MariaDB as a live target: data changes in one InnoDB transaction, no DDL.

Once MLflow's schema exists, a sync only inserts, updates and deletes rows: one InnoDB
transaction (READ COMMITTED, so that it takes no gap locks that would block the server's
inserts), in strict mode with ``NO_AUTO_VALUE_ON_ZERO`` like the migration. The state tables are
created (DDL, committed at once) before the transaction begins; empty ones change nothing.
Syncs exclude each other -- and ``migrate`` -- with ``GET_LOCK('fs2sql:<database>')``, released by
the server when a killed sync's connection drops. Rows go in as the migration's multi-row
INSERTs with ``ON DUPLICATE KEY UPDATE`` of the first key column to itself: a row whose key
exists is left as it is, and no other error is turned into a warning (as ``INSERT IGNORE``
would).
"""

from __future__ import annotations

from typing import List, Sequence

from .live import LiveTarget
from .mysql import LOAD_SQL_MODE, MysqlTarget, _multi_row_inserts, quote
from .server import INT32_MAX, connection_error


class LiveMysql(LiveTarget):
    dialect = "mysql"
    for_update = True
    experiment_id_limit = INT32_MAX

    def __init__(self, target: str):
        self._my = MysqlTarget(target)
        self.parsed = self._my.parsed
        self.display = self._my.display
        self.database = self._my.database
        self._engine = None
        self.conn = None

    def connect(self):
        if self.conn is None:
            self._engine = self._my.engine()
            try:
                self.conn = self._engine.connect()
            except Exception as exc:
                raise connection_error(exc, self.parsed) from None
            self.conn.exec_driver_sql(f"SET SESSION sql_mode = '{LOAD_SQL_MODE}'")
            self.conn.exec_driver_sql(
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self.conn.commit()
        return self.conn

    def exists(self) -> bool:
        n = self.connect().exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        ).scalar()
        self.conn.commit()
        return bool(n)

    # -- the lock ----------------------------------------------------------------------------
    def _name(self) -> str:
        return f"fs2sql:{self.database}"

    def try_lock(self) -> bool:
        got = self.connect().exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self._name(),)).scalar()
        self.conn.commit()
        return bool(got)

    def lock_holder(self) -> str:
        row = self.connect().exec_driver_sql(
            "SELECT p.HOST, p.TIME FROM information_schema.PROCESSLIST p "
            "WHERE p.ID = IS_USED_LOCK(%s)", (self._name(),)).fetchone()
        self.conn.commit()
        if row is None:
            return ""
        import time

        started = time.strftime("%H:%M:%S", time.localtime(time.time() - int(row[1] or 0)))
        return f"{started} from {row[0]}"

    def unlock(self) -> None:
        if self.conn is not None:
            try:
                self.conn.rollback()
                self.conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (self._name(),))
                self.conn.commit()
            except Exception:
                pass

    # -- the write transaction -----------------------------------------------------------------
    def begin(self) -> None:
        self.conn.commit()

    def insert_ignore(self, table: str, columns: Sequence[str], rows: List[tuple],
                      pk: Sequence[str]) -> int:
        names = ", ".join(quote(c) for c in columns)
        first = quote(pk[0])
        prefix = f"INSERT INTO {quote(table)} ({names}) VALUES "
        suffix = f" ON DUPLICATE KEY UPDATE {first} = {first}"
        cursor = self.conn.connection.driver_connection.cursor()
        try:
            try:
                statements = list(_multi_row_inserts(prefix, rows, self._my._statement_chars))
            except TypeError:
                statements = None
            if statements is None or self.parsed.driver != "pymysql":
                marks = ", ".join(["%s"] * len(columns))
                cursor.executemany(prefix + f"({marks})" + suffix, rows)
            else:
                for statement in statements:
                    cursor.execute(statement + suffix)
        finally:
            cursor.close()
        return len(rows)

    def next_experiment_id(self) -> int:
        largest = self.conn.exec_driver_sql(
            "SELECT COALESCE(MAX(experiment_id), 0) FROM experiments").scalar()
        counter = self.conn.exec_driver_sql(
            "SELECT AUTO_INCREMENT FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'experiments'").scalar()
        return max(int(largest) + 1, int(counter or 0))

    def start_command(self) -> str:
        return self._my.start_command()
