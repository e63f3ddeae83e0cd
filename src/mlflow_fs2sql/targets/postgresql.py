"""PostgreSQL: schema, widening and data in ONE transaction, rows streamed with COPY.

PostgreSQL's DDL is transactional, so MLflow's migrations run on the load's own connection
(``server.create_schema_in_transaction``) and nothing is committed before the last row is in
and (with ``--verify``) compared. A failure, Ctrl-C or kill -9 at any moment -- the server rolls
back a transaction whose client went away -- leaves the database exactly as it was. A
transaction-scoped advisory lock keeps two fs2sql runs from loading the same database at once.

Driver: psycopg 3. Its ``COPY ... FROM STDIN`` is the fastest path measured (1M metric rows with
MLflow's primary key: COPY ~7 s, psycopg2 ``execute_values`` ~29 s, SQLAlchemy executemany
~44 s), it is what SQLAlchemy 2.1 maps a plain ``postgresql://`` to, and it ships binary wheels
(``psycopg[binary]``) so no compiler or libpq is needed. Other drivers named in the URL
(``postgresql+psycopg2://``) work through the driver's executemany.
"""

from __future__ import annotations

import re
from typing import Callable, List, Optional, Sequence

from ..errors import TargetBusy, TargetError
from ..schema import mlflow_skinny_version
from .server import (
    ServerTarget,
    TargetState,
    connection_error,
    create_schema_in_transaction,
    inspect_state,
    upgrade_in_transaction,
)

WIDENED_MARK = "fs2sql: experiment IDs widened to BIGINT"
_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtext('fs2sql:' || current_database()))"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresTarget(ServerTarget):
    can_widen = True

    def __init__(self, target: str, *, overwrite: bool = False, revision: Optional[str] = None):
        super().__init__(target, revision=revision)
        self.widen = False
        self._raw = None
        self._default_present = False
        self._deferred_fks: List[tuple] = []
        self._deferred_indexes: List[str] = []
        self._types: dict = {}

    # -- connections -------------------------------------------------------------------------
    def engine(self, *, read_only: bool = False):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        args = {"connect_timeout": 10, "application_name": "fs2sql"}
        if read_only:
            args["options"] = "-c default_transaction_read_only=on"
        if self.parsed.driver not in ("psycopg", "psycopg2"):
            args = {}
        return create_engine(self.parsed.url, poolclass=NullPool, connect_args=args)

    def _connect(self, engine, what: str = "connect"):
        try:
            return engine.connect()
        except Exception as exc:
            raise connection_error(exc, self.parsed, what) from None

    # -- checks ------------------------------------------------------------------------------
    def prepare(self) -> None:
        engine = self.engine()
        try:
            with self._connect(engine) as conn:
                try:
                    self.state = self._check(conn)
                finally:
                    conn.rollback()
        finally:
            engine.dispose()

    def _check(self, conn) -> TargetState:
        try:
            schema, may_create = conn.exec_driver_sql(
                "SELECT current_schema(), has_schema_privilege(current_schema(), 'CREATE')"
            ).fetchone()
        except Exception as exc:
            raise connection_error(exc, self.parsed, "read the database") from None
        if schema is None:
            raise TargetError(
                "the user's search_path names no schema that exists, so MLflow's tables would "
                "have nowhere to go. Nothing was written.", path=self.display,
                hint="Create the schema (CREATE SCHEMA ...) or fix search_path for this user.")
        state = inspect_state(conn, self.parsed, self.requested_revision, quote)
        if state.empty and not may_create:
            raise TargetError(
                f"the user may not create tables in schema '{schema}' of this database. Nothing "
                "was written.", path=self.display,
                hint=f"GRANT CREATE ON SCHEMA {schema} TO <user> (PostgreSQL 15 no longer "
                "grants it on public by default), or use the database's owner.")
        return state

    # -- load --------------------------------------------------------------------------------
    def begin(self):
        self._engine = self.engine()
        self.conn = self._connect(self._engine)
        try:
            if not self.conn.exec_driver_sql(_LOCK_SQL).scalar():
                raise TargetBusy(
                    "another fs2sql is writing into this database right now. Nothing was "
                    "written.", path=self.display,
                    hint="Wait for it to finish (or stop it), then run again.")
            # Again inside the transaction: nothing may have changed since ``prepare``.
            self.state = self._check(self.conn)
            if self.state.empty:
                self.revision = create_schema_in_transaction(self.conn, self.requested_revision)
            else:
                self.revision = self.state.revision
                self._default_present = self.state.default_experiment
            if self.widen:
                widen_experiment_ids(self.conn)
            self._deferred_fks = _detach_foreign_keys(self.conn, _BULK_TABLES)
            self._deferred_indexes = _detach_indexes(self.conn, _BULK_TABLES)
        except TargetError:
            raise
        except Exception as exc:
            raise connection_error(exc, self.parsed, "create MLflow's tables") from exc
        self.mlflow_skinny_version = mlflow_skinny_version()
        self._raw = self.conn.connection.driver_connection
        return self.conn

    def insert_many(self, table: str, columns: Sequence[str], rows: List[tuple]) -> None:
        if table == "experiments" and self._default_present:
            self._replace_default_experiment(columns, rows)
        names = ", ".join(quote(c) for c in columns)
        try:
            if self.parsed.driver == "psycopg":
                types = self._binary_types(table, columns)
                binary = " (FORMAT BINARY)" if types else ""
                with self._raw.cursor() as cur:
                    with cur.copy(f"COPY {quote(table)} ({names}) FROM STDIN{binary}") as copy:
                        if types:
                            copy.set_types(types)
                        write = copy.write_row
                        for row in rows:
                            write(row)
            else:
                marks = ", ".join(["%s"] * len(columns))
                self.conn.exec_driver_sql(
                    f"INSERT INTO {quote(table)} ({names}) VALUES ({marks})", rows)
        except Exception as exc:
            raise _load_error(exc, self.parsed, table) from exc

    def _binary_types(self, table: str, columns: Sequence[str]) -> Optional[List[str]]:
        """Column types for binary COPY of the metric tables (millions of rows, values of
        exactly known Python types: str, float, int, bool); other tables go as text."""
        if table not in ("metrics", "latest_metrics"):
            return None
        cached = self._types.get(table)
        if cached is None:
            found = dict(self.conn.exec_driver_sql(
                "SELECT a.attname::text, a.atttypid::regtype::text "
                "FROM pg_attribute a WHERE a.attrelid = to_regclass(%(t)s) AND a.attnum > 0 "
                "AND NOT a.attisdropped", {"t": quote(table)}).fetchall())
            cached = self._types[table] = [found[c] for c in columns]
        return cached

    def _replace_default_experiment(self, columns, rows) -> None:
        """MLflow's server made experiment 0 'Default' on first start; the store's own
        experiment 0 takes its place (same transaction)."""
        at = list(columns).index("experiment_id")
        if any(row[at] == 0 for row in rows):
            self.conn.exec_driver_sql("DELETE FROM experiments WHERE experiment_id = 0")
            self._default_present = False

    # -- finish ------------------------------------------------------------------------------
    def publish(self, before: Optional[Callable[[], None]] = None) -> None:
        try:
            # Each index built once from sorted rows instead of updated row by row; then one
            # validating pass per foreign key instead of a trigger call per row. Same
            # transaction, same names and definitions as MLflow's migrations made them.
            if self._deferred_indexes:
                self.conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
            for statement in self._deferred_indexes:
                self.conn.exec_driver_sql(statement)
            self._deferred_indexes = []
            for table, name, definition in self._deferred_fks:
                self.conn.exec_driver_sql(
                    f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} {definition}")
            self._deferred_fks = []
            move_sequence_past_ids(self.conn)
            # Statistics for the planner now, not whenever autovacuum gets to it: without them
            # it takes the freshly loaded tables for empty, and verify's (and the server's)
            # lookups by run scan whole tables (100k runs: verify 330 s, most of it server CPU).
            self.conn.exec_driver_sql("ANALYZE")
            if before is not None:
                before()
            self.conn.commit()
        except BaseException:
            self.abort()
            raise
        self._close()

    def abort(self) -> None:
        try:
            if self.conn is not None:
                self.conn.rollback()
        except Exception:
            pass
        self._close()

    def _close(self) -> None:
        self._close_connection()
        self._raw = None


# The tables that take millions of rows: their foreign keys are checked once, after the load.
_BULK_TABLES = ("metrics", "latest_metrics", "params", "tags")


def _constraints(conn, tables, types: str, where: str = "") -> List[tuple]:
    """(table, name, definition) of the constraints of ``tables`` whose type is in ``types``
    ('f' foreign key, 'p' primary key, 'u' unique), in the current schema."""
    return [tuple(r) for r in conn.exec_driver_sql(
        "SELECT cl.relname::text, co.conname::text, pg_get_constraintdef(co.oid) "
        "FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid "
        "WHERE co.contype::text = ANY(%(types)s) "
        "AND cl.relnamespace = current_schema()::regnamespace "
        f"AND cl.relname::text = ANY(%(tables)s) {where} ORDER BY 1, 2",
        {"types": list(types), "tables": list(tables)})]


def _drop_constraints(conn, found: List[tuple]) -> None:
    for table, name, _ in found:
        conn.exec_driver_sql(f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}")


def _detach_foreign_keys(conn, tables) -> List[tuple]:
    """Drop the foreign keys of ``tables`` (inside the load's transaction); return
    (table, name, definition) to re-add them before commit."""
    found = _constraints(conn, tables, "f")
    _drop_constraints(conn, found)
    return found


def _detach_indexes(conn, tables) -> List[str]:
    """Drop the primary keys and indexes of ``tables`` (inside the load's transaction) that no
    foreign key depends on; return the statements that re-create them exactly."""
    constraints = _constraints(conn, tables, "pu", "AND NOT EXISTS (SELECT 1 FROM pg_constraint "
                               "f WHERE f.contype = 'f' AND f.conindid = co.conindid)")
    indexes = [tuple(r) for r in conn.exec_driver_sql(
        "SELECT ic.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class tc ON tc.oid = i.indrelid "
        "WHERE tc.relnamespace = current_schema()::regnamespace "
        "AND tc.relname::text = ANY(%(tables)s) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
        "WHERE c.conindid = i.indexrelid) ORDER BY 1", {"tables": list(tables)})]
    _drop_constraints(conn, constraints)
    restore = [f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} {definition}"
               for table, name, definition in constraints]
    for name, definition in indexes:
        conn.exec_driver_sql(f"DROP INDEX {quote(name)}")
        restore.append(definition)
    return restore


def move_sequence_past_ids(conn) -> None:
    """MLflow's next ``create_experiment`` must get an ID no migrated experiment has."""
    seq = conn.exec_driver_sql(
        "SELECT pg_get_serial_sequence('experiments', 'experiment_id')").scalar()
    if seq:
        conn.exec_driver_sql(
            "SELECT setval(%(seq)s, COALESCE((SELECT MAX(experiment_id) FROM experiments), 0) "
            "+ 1, false)", {"seq": seq})


def _experiment_id_columns(conn) -> List[tuple]:
    """Every 32-bit ``experiment_id`` column and every column referencing experiments."""
    rows = conn.exec_driver_sql(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND data_type = 'integer' "
        "AND column_name = 'experiment_id' "
        "UNION SELECT cl.relname::text, a.attname::text FROM pg_constraint co "
        "JOIN pg_class cl ON cl.oid = co.conrelid "
        "JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = ANY(co.conkey) "
        "WHERE co.contype = 'f' AND co.confrelid = to_regclass('experiments') "
        "AND format_type(a.atttypid, a.atttypmod) = 'integer' "
        "ORDER BY 1, 2").fetchall()
    return [tuple(r) for r in rows]


def widen_experiment_ids(conn) -> int:
    """BIGINT for every experiment ID column and the sequence; PostgreSQL keeps the foreign
    keys itself. Marked with a column comment so ``upgrade-schema`` recognises the schema."""
    columns = _experiment_id_columns(conn)
    for table, column in columns:
        conn.exec_driver_sql(f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(column)} "
                             "TYPE BIGINT")
    seq = conn.exec_driver_sql(
        "SELECT pg_get_serial_sequence('experiments', 'experiment_id')").scalar()
    if seq:
        conn.exec_driver_sql(f"ALTER SEQUENCE {seq} AS BIGINT")
    conn.exec_driver_sql(f"COMMENT ON COLUMN experiments.experiment_id IS '{WIDENED_MARK}'")
    return len(columns)


def is_widened(conn) -> bool:
    return conn.exec_driver_sql(
        "SELECT col_description('experiments'::regclass, a.attnum) FROM pg_attribute a "
        "WHERE a.attrelid = 'experiments'::regclass AND a.attname = 'experiment_id'"
    ).scalar() == WIDENED_MARK


def upgrade_widened_schema(target: str, revision: Optional[str] = None) -> tuple:
    """``fs2sql upgrade-schema``: MLflow's migrations, then widening again, in one transaction.

    Returns (revision before, revision after, columns widened)."""
    t = PostgresTarget(target)
    engine = t.engine()
    try:
        conn = t._connect(engine)
        try:
            if not conn.exec_driver_sql(_LOCK_SQL).scalar():
                raise TargetBusy("another fs2sql is writing into this database right now.",
                                  path=t.display, hint="Wait for it to finish, then run again.")
            tables = set(conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()").scalars())
            if "alembic_version" not in tables or "experiments" not in tables:
                held = (f"{len(tables)} other table{'' if len(tables) == 1 else 's'} "
                        f"({', '.join(sorted(tables)[:8])})" if tables else "no tables")
                raise TargetError(
                    f"holds no MLflow schema to upgrade ({held}). Nothing was changed.",
                    path=t.display, hint="upgrade-schema upgrades a database fs2sql migrated with "
                    "--experiment-ids widen; make one with: fs2sql migrate ./mlruns URL "
                    "--experiment-ids widen.")
            if not is_widened(conn):
                raise TargetError(
                    "this MLflow schema was not widened by fs2sql (experiment IDs are MLflow's "
                    "own 32-bit columns). Nothing was changed.", path=t.display,
                    hint="Upgrade it with MLflow's own command: mlflow db upgrade <URL>.")
            before = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            # A migration may add an INTEGER experiment_id column and fill it from a widened
            # one in the same step: such DDL is created BIGINT right away.
            from sqlalchemy import event

            event.listen(conn, "before_cursor_execute", _widen_ddl, retval=True)
            try:
                upgrade_in_transaction(conn, revision)
            finally:
                event.remove(conn, "before_cursor_execute", _widen_ddl)
            after = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            widen_experiment_ids(conn)
            move_sequence_past_ids(conn)
            n = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND column_name = 'experiment_id' AND data_type = 'bigint'"
            ).scalar()
            conn.commit()
            return before, after, n
        except TargetError:
            conn.rollback()
            raise
        except Exception as exc:
            conn.rollback()
            raise connection_error(exc, t.parsed, "upgrade MLflow's schema") from exc
        finally:
            conn.close()
    finally:
        engine.dispose()


_ID_DDL = re.compile(r'(\bexperiment_id"?\s+)INTEGER\b', re.IGNORECASE)


def _widen_ddl(conn, cursor, statement, parameters, context, executemany):
    head = statement.lstrip()[:12].upper()
    if head.startswith(("CREATE TABLE", "ALTER TABLE")):
        statement = _ID_DDL.sub(r"\1BIGINT", statement)
    return statement, parameters


def _load_error(exc: Exception, parsed, table: str) -> TargetError:
    orig = getattr(exc, "orig", None) or exc
    message = parsed.scrub(" ".join(str(orig).split()))
    if "0x00" in message or "nul character" in message.lower():
        return TargetError(
            f"a value for table {table} contains the NUL character, which PostgreSQL cannot "
            f"store in text ({message}). Nothing was written.", path=parsed.display,
            hint="Migrate into SQLite, or remove the NUL from the source file.")
    return TargetError(f"PostgreSQL refused rows of table {table} ({message}). Nothing was "
                       "written; the database is as it was.", path=parsed.display,
                       hint="Run again with --verbose and please report it.")
