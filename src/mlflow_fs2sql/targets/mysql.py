"""MySQL/MariaDB: build in a staging database, then move every table in with ONE ``RENAME TABLE``.

MySQL commits DDL implicitly, so MLflow's schema cannot be created inside the load's transaction
as on PostgreSQL. fs2sql therefore builds the whole database -- MLflow's migrations, every row,
and (with ``--verify``) the comparison -- in a staging database ``fs2sql_stage_<name>`` on the same
server, and publishes it with a single ``RENAME TABLE stage.t1 TO db.t1, stage.t2 TO db.t2, ...``,
which MySQL and MariaDB execute atomically (all tables or none; other sessions never see a
subset; InnoDB moves the foreign keys along).

The exact guarantee:

* A failure or Ctrl-C before the rename: the staging database is dropped; the target database is
  untouched (no table was ever created in it).
* kill -9 before the rename: the target is untouched; the staging database stays behind and is
  dropped by the next fs2sql run against the same database (it takes the same named lock,
  ``GET_LOCK('fs2sql:<db>')``, which the killed session released when the server dropped its
  connection). Nothing in the target blocks the re-run.
* kill -9 during the rename: the server completes or rolls back the statement on its own.
* One exception to "one step": MySQL cannot move a table that has triggers across databases
  (error 1435), and MLflow (>= 3.8) puts one on ``secrets`` (which FileStores never fill). That
  trigger is dropped in the staging database and re-created in the target by the statement right
  after the rename; a kill exactly between those two statements leaves the complete migration
  without that trigger (re-create it from MLflow's migration ``1bd49d398cd23`` if it happens).
* kill -9 after the rename: the migration is complete (``fs2sql verify`` passes); only the empty
  staging database may be left, and the next run against that database removes it.

A database MLflow's server initialised (schema + experiment 0 only) is replaced in the same
statement: its tables move into a second database ``fs2sql_old_<name>`` while the new ones move
in; both helper databases are dropped afterwards.

The load runs in strict SQL mode (``STRICT_ALL_TABLES``: no silent truncation or clamping -- with
``sql_mode=''``, which MLflow sets on its own sessions, MariaDB stores 2147483647 for a too-large
experiment ID) plus ``NO_AUTO_VALUE_ON_ZERO`` (else experiment 0 becomes 1), with the same
value-length checks as for SQLite beforehand. Rows go in as multi-row INSERTs of up to 1M
characters, their literals written the way PyMySQL writes them but without its per-value
dispatch, which cost more than the server's own work (PyMySQL's ``executemany``: 1M metric
rows in ~25 s; these statements: see bench/RESULTS.md). PyMySQL is pure Python (no compiler,
no client library), which is why it is the driver fs2sql installs; a plain ``mysql://`` URL
uses it.

InnoDB hands out ``max(experiment_id) + 1`` to MLflow's next ``create_experiment`` on its own
(the AUTO_INCREMENT counter follows explicit inserts and moves with the table).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator, List, Optional, Sequence

from ..errors import TargetBusy, TargetError
from ..schema import mlflow_skinny_version
from .server import (
    ServerTarget,
    connection_error,
    create_schema_in_transaction,
    inspect_state,
    mysql_grants,
)

LOAD_SQL_MODE = "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION"


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def stage_name(database: str, prefix: str = "fs2sql_stage_") -> str:
    """The staging database for ``database`` (at most 64 characters, MySQL's limit)."""
    name = f"{prefix}{database}"
    if len(name) > 64:
        digest = hashlib.sha1(database.encode("utf-8")).hexdigest()[:10]
        name = f"{prefix}{database[:40]}_{digest}"
    return name


class MysqlTarget(ServerTarget):
    can_widen = False

    def __init__(self, target: str, *, overwrite: bool = False, revision: Optional[str] = None):
        super().__init__(target, revision=revision)
        self.database = self.parsed.database
        self.stage = stage_name(self.database)
        # Where an MLflow-initialised target's own tables go in the same RENAME (not the stage:
        # InnoDB's foreign key names are per database and would collide there).
        self.old = stage_name(self.database, "fs2sql_old_")
        self._admin_engine = None
        self.admin = None
        self._locked = False
        self._statement_chars = 1_000_000

    # -- connections -------------------------------------------------------------------------
    def engine(self, *, read_only: bool = False, database: Optional[str] = None):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        url = self.parsed.url.set(database=database or self.database)
        args = {}
        if self.parsed.driver == "pymysql":
            args = {"connect_timeout": 10, "charset": "utf8mb4"}
            if read_only:
                args["init_command"] = "SET SESSION TRANSACTION READ ONLY"
        return create_engine(url, poolclass=NullPool, connect_args=args)

    def _connect(self, engine, what: str = "connect"):
        try:
            return engine.connect()
        except Exception as exc:
            raise connection_error(exc, self.parsed, what) from None

    def _lock(self, conn) -> bool:
        got = conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (f"fs2sql:{self.database}",))
        return bool(got.scalar())

    # -- checks ------------------------------------------------------------------------------
    def prepare(self) -> None:
        engine = self.engine()
        try:
            with self._connect(engine) as conn:
                try:
                    self.state = inspect_state(conn, self.parsed, self.requested_revision, quote)
                    if self._lock(conn):  # nobody is loading: leftovers of a killed run go
                        self._drop_stage(conn)
                        conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)",
                                             (f"fs2sql:{self.database}",))
                except TargetError:
                    raise
                except Exception as exc:
                    raise connection_error(exc, self.parsed, "read the database") from None
        finally:
            engine.dispose()

    def _drop_stage(self, conn) -> None:
        # Only those that exist (and that the user can see): DROP ... IF EXISTS needs the
        # privilege even for a database that is not there, and fs2sql_old_ is needed only
        # for a target MLflow initialised.
        found = set(conn.exec_driver_sql(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (%s, %s)",
            (self.stage, self.old)).scalars())
        for name in (self.stage, self.old):
            if name in found:
                conn.exec_driver_sql(f"DROP DATABASE {quote(name)}")

    # -- load --------------------------------------------------------------------------------
    def begin(self):
        self._admin_engine = self.engine()
        self.admin = self._connect(self._admin_engine)
        try:
            if not self._lock(self.admin):
                raise TargetBusy(
                    "another fs2sql is writing into this database right now. Nothing was "
                    "written.", path=self.display,
                    hint="Wait for it to finish (or stop it), then run again.")
            self._locked = True
            self.state = inspect_state(self.admin, self.parsed, self.requested_revision, quote)
            charset, collation = self.admin.exec_driver_sql(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
                "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()").fetchone()
            self._drop_stage(self.admin)
            name = self.stage
            try:
                # The target's own character set and collation, as MLflow's tables would get.
                for name in [self.stage] + ([] if self.state.empty else [self.old]):
                    self.admin.exec_driver_sql(
                        f"CREATE DATABASE {quote(name)} CHARACTER SET {charset} "
                        f"COLLATE {collation}")
            except Exception as exc:
                moved = ("" if self.state.empty else f" (and moves the tables MLflow made in "
                         f"the target to '{self.old}')")
                raise TargetError(
                    f"fs2sql builds the new tables in a staging database '{self.stage}'{moved} "
                    "and then renames them into place in one step (MySQL cannot undo DDL), but "
                    f"this user may not create '{name}' "
                    f"({self.parsed.scrub(str(getattr(exc, 'orig', exc)))}). Nothing was "
                    "written.", path=self.display,
                    hint="As an administrator, grant: " + " ".join(mysql_grants(self.parsed))
                    + " Then run again.") from None
            self._engine = self.engine(database=self.stage)
            self.conn = self._connect(self._engine)
            revision = self.requested_revision if self.state.empty else self.state.revision

            def reset() -> None:  # a schema replay that went wrong: an empty stage again
                self.conn.rollback()  # its metadata locks would block the DROP below
                self.admin.exec_driver_sql(f"DROP DATABASE {quote(self.stage)}")
                self.admin.exec_driver_sql(f"CREATE DATABASE {quote(self.stage)} CHARACTER SET "
                                           f"{charset} COLLATE {collation}")
                self.conn.exec_driver_sql(f"USE {quote(self.stage)}")

            self.revision = create_schema_in_transaction(self.conn, revision, reset=reset,
                                                         database=self.stage)
            self.conn.commit()
            self.conn.exec_driver_sql(f"SET SESSION sql_mode = '{LOAD_SQL_MODE}'")
            # Statements of at most 1M characters, and never more than an eighth of the
            # server's packet limit (a character may take 4 bytes in utf8mb4).
            packet = self.conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
            self._statement_chars = max(4096, min(1_000_000, int(packet or 0) // 8))
        except TargetError:
            raise
        except Exception as exc:
            raise connection_error(exc, self.parsed, "create MLflow's tables") from exc
        self.mlflow_skinny_version = mlflow_skinny_version()
        return self.conn

    def insert_many(self, table: str, columns: Sequence[str], rows: List[tuple]) -> None:
        names = ", ".join(quote(c) for c in columns)
        prefix = f"INSERT INTO {quote(table)} ({names}) VALUES "
        try:
            cursor = self.conn.connection.driver_connection.cursor()
            try:
                statements = None
                if self.parsed.driver == "pymysql":  # other drivers escape their own way
                    try:
                        statements = list(_multi_row_inserts(prefix, rows,
                                                             self._statement_chars))
                    except TypeError:  # a value of a type only the driver knows how to write
                        pass
                if statements is None:
                    marks = ", ".join(["%s"] * len(columns))
                    cursor.executemany(prefix + f"({marks})", rows)
                else:
                    for statement in statements:
                        cursor.execute(statement)
            finally:
                cursor.close()
        except Exception as exc:
            orig = getattr(exc, "orig", exc)
            raise TargetError(
                f"MySQL/MariaDB refused rows of table {table} "
                f"({self.parsed.scrub(' '.join(str(orig).split()))}). Nothing was written; "
                "the target database is as it was.", path=self.display,
                hint="Run again with --verbose and please report it.") from exc

    # -- finish ------------------------------------------------------------------------------
    def publish(self, before: Optional[Callable[[], None]] = None) -> None:
        try:
            self.conn.commit()
            if self.state is not None and self.state.default_experiment:
                self._keep_server_default_experiment()
            if before is not None:
                before()
            self.conn.commit()
            tables = [r[0] for r in self.conn.exec_driver_sql("SHOW TABLES")]
            triggers = self._detach_triggers(self.conn)
            moves = []
            if self.state is not None and not self.state.empty:
                moves += [f"{quote(self.database)}.{quote(t)} TO {quote(self.old)}.{quote(t)}"
                          for t in self.state.tables]
            moves += [f"{quote(self.stage)}.{quote(t)} TO {quote(self.database)}.{quote(t)}"
                      for t in tables]
            self.conn.close()
            self.conn = None
            # An initialised target's own trigger cannot move either: dropped just before.
            old_triggers = [] if self.state is None or self.state.empty else \
                self._detach_triggers(self.admin)
            try:
                # The one step that publishes: atomic in MySQL and MariaDB.
                self.admin.exec_driver_sql("RENAME TABLE " + ", ".join(moves))
            except BaseException:
                for statement in old_triggers:
                    self.admin.exec_driver_sql(statement)
                raise
            for statement in triggers:  # on the (always empty) secrets table: see the docstring
                self.admin.exec_driver_sql(statement)
        except BaseException:
            self.abort()
            raise
        self.abort()  # drops the (now empty) staging database and releases the lock

    def _detach_triggers(self, conn) -> List[str]:
        """MySQL cannot move a table with triggers to another database (error 1435), so the
        triggers MLflow's migrations made in the staging database are dropped there and their
        CREATE statements returned, to run in the target right after the rename."""
        import re

        statements = []
        for (name,) in conn.exec_driver_sql(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY ACTION_ORDER").fetchall():
            row = conn.exec_driver_sql(f"SHOW CREATE TRIGGER {quote(name)}").fetchone()
            create = re.sub(r"^CREATE\s+DEFINER\s*=\s*\S+\s+", "CREATE ", row[2], flags=re.I)
            statements.append(create)
            conn.exec_driver_sql(f"DROP TRIGGER {quote(name)}")
        return statements

    def _keep_server_default_experiment(self) -> None:
        """The store has no experiment 0: keep the one MLflow's server made."""
        self.conn.exec_driver_sql(
            f"INSERT INTO experiments SELECT * FROM {quote(self.database)}.experiments s "
            "WHERE s.experiment_id = 0 AND NOT EXISTS "
            "(SELECT 1 FROM experiments e WHERE e.experiment_id = 0)")
        self.conn.commit()

    def abort(self) -> None:
        for closing in (self.conn,):
            try:
                if closing is not None:
                    closing.close()
            except Exception:
                pass
        self.conn = None
        try:
            if self.admin is not None:
                if self._locked:  # never another run's stage: it may be building it now
                    self._drop_stage(self.admin)
                if self._locked:
                    self.admin.exec_driver_sql("SELECT RELEASE_LOCK(%s)",
                                               (f"fs2sql:{self.database}",))
                self.admin.close()
        except Exception:
            pass
        for engine in (self._engine, self._admin_engine):
            try:
                if engine is not None:
                    engine.dispose()
            except Exception:
                pass
        self.admin = self._engine = self._admin_engine = None
        self._locked = False


def _multi_row_inserts(prefix: str, rows: List[tuple], limit: int) -> Iterator[str]:
    """``INSERT ... VALUES (...), (...)`` statements of about ``limit`` characters, values
    written as literals exactly as PyMySQL writes them (its own string escaping; floats as
    ``repr`` with an exponent, so the server reads a DOUBLE and not a DECIMAL; bools as 0/1),
    without its per-value dispatch, which costs more than the server's work. A type other than
    str/int/float/bool/None raises TypeError (the caller lets the driver write that batch)."""
    from pymysql.converters import escape_string

    def literal(value) -> str:
        kind = type(value)
        if kind is str:
            return "'" + escape_string(value) + "'"
        if kind is int:
            return str(value)
        if kind is float:
            text = repr(value)
            if "e" not in text:
                if text in ("inf", "-inf", "nan"):
                    raise TypeError(text)  # the driver refuses it with its own message
                text += "e0"
            return text
        if value is None:
            return "NULL"
        if kind is bool:
            return "1" if value else "0"
        raise TypeError(kind.__name__)

    parts: List[str] = []
    size = 0
    for row in rows:
        text = "(" + ",".join(map(literal, row)) + ")"
        if parts and size + len(text) > limit:
            yield prefix + ",".join(parts)
            parts, size = [], 0
        parts.append(text)
        size += len(text) + 1
    if parts:
        yield prefix + ",".join(parts)
