"""PostgreSQL as a live target: one transaction, row locks only, beside a running server.

The sync's transaction inserts new rows and updates or deletes only rows it synced before, which
it reads ``FOR NO KEY UPDATE`` first (unlike ``FOR UPDATE``, that lets the server's foreign-key
checks through: a tag set on a run being synced goes in at once). The server's writes go on
while it runs (no table lock, no DDL; the migration's trick of dropping and re-creating indexes
is never used here). Syncs of one database exclude each other -- and ``migrate`` -- by the
advisory lock key ``migrate`` uses; the holder's connection is named ``fs2sql sync <host> pid
<pid> <time>`` (``application_name``), which is what a waiting sync shows. Rows are inserted
with ``ON CONFLICT DO NOTHING``; large batches go through ``COPY`` into a temporary table first.
"""

from __future__ import annotations

from typing import List, Sequence

from .live import LiveTarget, holder_text
from .postgresql import PostgresTarget, is_widened, quote
from .server import INT32_MAX, connection_error

_KEY = "hashtext('fs2sql:' || current_database())"
_COPY_ABOVE = 2000  # rows: below this, executemany; above, COPY into a temporary table


class LivePostgres(LiveTarget):
    dialect = "postgresql"
    for_update = True

    def __init__(self, target: str):
        self._pg = PostgresTarget(target)
        self.parsed = self._pg.parsed
        self.display = self._pg.display
        self._engine = None
        self.conn = None
        self._temp = set()
        self.experiment_id_limit = INT32_MAX

    def _new_engine(self):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        args = {}
        if self.parsed.driver in ("psycopg", "psycopg2"):
            args = {"connect_timeout": 10, "application_name": ("fs2sql sync " +
                                                                holder_text())[:63]}
        return create_engine(self.parsed.url, poolclass=NullPool, connect_args=args)

    def connect(self):
        if self.conn is None:
            self._engine = self._new_engine()
            try:
                self.conn = self._engine.connect()
            except Exception as exc:
                raise connection_error(exc, self.parsed) from None
            if self.exists() and is_widened(self.conn):
                self.experiment_id_limit = None
            self.conn.commit()
        return self.conn

    def exists(self) -> bool:
        conn = self.connect()
        n = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = current_schema()").scalar()
        return bool(n)

    # -- the lock ----------------------------------------------------------------------------
    def try_lock(self) -> bool:
        got = bool(self.connect().exec_driver_sql(f"SELECT pg_try_advisory_lock({_KEY})").scalar())
        self.conn.commit()  # a session lock: it outlives this (empty) transaction
        return got

    def lock_holder(self) -> str:
        row = self.connect().exec_driver_sql(
            "SELECT a.application_name, host(a.client_addr), "
            "to_char(a.backend_start, 'HH24:MI:SS') FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) AND a.pid <> pg_backend_pid() "
            "ORDER BY a.backend_start LIMIT 1").fetchone()
        self.conn.commit()
        if row is None:
            return ""
        name, addr, started = row
        if name and name.startswith("fs2sql sync "):
            host, _, rest = name[len("fs2sql sync "):].partition(" pid ")
            pid, _, at = rest.partition(" ")
            return f"{at} on {host} (pid {pid})"
        return f"{started} from {addr or 'a local connection'} ({name or 'fs2sql migrate'})"

    def unlock(self) -> None:
        if self.conn is not None:
            try:
                self.conn.rollback()
                self.conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_KEY})")
                self.conn.commit()
            except Exception:
                pass

    # -- the write transaction -----------------------------------------------------------------
    def begin(self) -> None:
        self.conn.commit()  # whatever was read before starts afresh
        self._temp.clear()

    def insert_ignore(self, table: str, columns: Sequence[str], rows: List[tuple],
                      pk: Sequence[str]) -> int:
        names = ", ".join(quote(c) for c in columns)
        raw = self.conn.connection.driver_connection
        if len(rows) > _COPY_ABOVE and self.parsed.driver == "psycopg":
            temp = f"fs2sql_new_{table}"
            with raw.cursor() as cur:
                if temp not in self._temp:
                    cur.execute(f"CREATE TEMPORARY TABLE {quote(temp)} (LIKE {quote(table)}) "
                                "ON COMMIT DROP")
                    self._temp.add(temp)
                with cur.copy(f"COPY {quote(temp)} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(f"INSERT INTO {quote(table)} ({names}) SELECT {names} FROM "
                            f"{quote(temp)} ON CONFLICT DO NOTHING")
                n = cur.rowcount
                cur.execute(f"TRUNCATE {quote(temp)}")
            return n
        marks = ", ".join(["%s"] * len(columns))
        with raw.cursor() as cur:
            cur.executemany(f"INSERT INTO {quote(table)} ({names}) VALUES ({marks}) "
                            "ON CONFLICT DO NOTHING", rows)
            return cur.rowcount if cur.rowcount >= 0 else len(rows)

    def _sequence(self):
        return self.conn.exec_driver_sql(
            "SELECT pg_get_serial_sequence('experiments', 'experiment_id')").scalar()

    def reserve_experiment_ids(self, largest: int) -> None:
        # setval is not transactional: the server's next experiment can never take an ID this
        # sync is about to insert, even before it commits (a rollback leaves a harmless gap).
        seq = self._sequence()
        if seq:
            self.conn.exec_driver_sql(
                f"SELECT setval(%(seq)s, GREATEST(%(n)s, (SELECT CASE WHEN is_called THEN "
                f"last_value ELSE last_value - 1 END FROM {seq}), 1))",
                {"seq": seq, "n": int(largest)})

    def next_experiment_id(self) -> int:
        seq = self._sequence()
        largest = self.conn.exec_driver_sql(
            "SELECT COALESCE(MAX(experiment_id), 0) FROM experiments").scalar()
        if not seq:
            return int(largest) + 1
        self.reserve_experiment_ids(int(largest))
        return int(self.conn.exec_driver_sql("SELECT nextval(%(s)s)", {"s": seq}).scalar())

    def start_command(self) -> str:
        return self._pg.start_command()
