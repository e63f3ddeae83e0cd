"""What PostgreSQL and MySQL/MariaDB targets share: URLs, drivers, secrets, errors, the
"may this database be written" check, and MLflow's schema created on a given connection.

Credentials come from the URL, the environment or the driver's own files (``PGPASSWORD``,
``~/.pgpass``, ``~/.my.cnf`` through the driver) and are never shown: ``display``, messages and
the start command carry the URL with the password replaced by ``***``, and every driver message
is scrubbed of the password before it is shown.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import TargetError
from .base import Target

INT32_MAX = 2**31 - 1
MASK = "***"

# scheme (lower case, as typed) -> (dialect, driver fs2sql uses when the URL names none)
_DEFAULT_DRIVER = {
    "postgresql": ("postgresql", "psycopg"),
    "postgres": ("postgresql", "psycopg"),  # Heroku-style alias that SQLAlchemy dropped
    "mysql": ("mysql", "pymysql"),
    "mariadb": ("mysql", "pymysql"),
}
# driver -> (Python module, the command that adds it to a pipx-installed fs2sql)
_DRIVER_MODULE = {
    "psycopg": ("psycopg", "pipx inject fs2sql 'psycopg[binary]'"),
    "psycopg2": ("psycopg2", "pipx inject fs2sql psycopg2-binary"),
    "pg8000": ("pg8000", "pipx inject fs2sql pg8000"),
    "pymysql": ("pymysql", "pipx inject fs2sql pymysql"),
    "mysqldb": ("MySQLdb", "pipx inject fs2sql mysqlclient"),
    "mysqlconnector": ("mysql.connector", "pipx inject fs2sql mysql-connector-python"),
    "mariadbconnector": ("mariadb", "pipx inject fs2sql mariadb"),
}
_EXTRA = {"postgresql": "postgres", "mysql": "mysql"}
# The driver MLflow's server should name when the URL names none (MLflow installs no database
# driver; a bare mysql:// means mysqlclient, which needs a compiler and MySQL's client library),
# and the package that provides it in MLflow's environment.
_SERVER_DRIVER = {"postgresql": ("psycopg2", "psycopg2-binary"), "mysql": ("pymysql", "pymysql")}
_DRIVER_PACKAGE = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary",
                   "pg8000": "pg8000", "pymysql": "pymysql", "mysqldb": "mysqlclient",
                   "mysqlconnector": "mysql-connector-python", "mariadbconnector": "mariadb"}
_SECRET_QUERY_KEYS = ("password", "passwd", "sslpassword")


def is_server_url(target: str) -> bool:
    lowered = target.lower()
    return "://" in lowered and not lowered.startswith(("sqlite:", "file:"))


@dataclass(frozen=True)
class ServerUrl:
    """A parsed server URL: the SQLAlchemy URL with an explicit driver, and its safe display."""

    url: object  # sqlalchemy.engine.URL
    dialect: str  # "postgresql" or "mysql"
    driver: str
    display: str  # the URL as typed, password masked
    secrets: Tuple[str, ...]  # strings never to show (the password)

    @property
    def database(self) -> str:
        return self.url.database or ""

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, MASK)
        return text


def parse_server_url(target: str) -> ServerUrl:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    scheme = target.split("://", 1)[0].lower()
    base, _, explicit = scheme.partition("+")
    if base in ("mssql", "sqlserver"):
        raise TargetError(
            "fs2sql does not write to SQL Server: MLflow's schema declares its text columns "
            "VARCHAR there, which can mangle non-ASCII text, and its 32-bit experiment IDs "
            "cannot hold FileStore IDs.",
            hint="Migrate into PostgreSQL, MySQL/MariaDB or SQLite instead.")
    if base not in _DEFAULT_DRIVER:
        raise TargetError(
            f"fs2sql cannot write to '{scheme}' databases.",
            hint="Give a file path (out.db), an sqlite:/// URI, or a postgresql:// or mysql:// "
            "URL.")
    dialect, default_driver = _DEFAULT_DRIVER[base]
    driver = explicit or default_driver
    rest = target.split("://", 1)[1]
    try:
        url = make_url(f"{dialect}+{driver}://{rest}")
    except (ArgumentError, ValueError) as exc:
        raise TargetError(f"'{_mask_raw(target)}' is not a database URL fs2sql understands "
                          f"({exc}).",
                          hint="Write it as postgresql://user@host:5432/dbname or "
                          "mysql://user@host:3306/dbname.") from None
    secrets = [url.password or ""]
    for key in _SECRET_QUERY_KEYS:
        value = url.query.get(key)
        if value:
            secrets.extend([value] if isinstance(value, str) else list(value))
    secrets = tuple(s for s in secrets if s)
    if not url.database:
        raise TargetError(
            f"'{_mask(target, secrets)}' names no database.",
            hint=f"Add the database name at the end, e.g. {scheme}://user@host/mlflow.")
    return ServerUrl(url=url, dialect=dialect, driver=driver, display=_mask(target, secrets),
                     secrets=secrets)


def shell_argument(text: str) -> str:
    """``text`` as one POSIX shell word: single-quoted, or double-quoted with the password
    placeholder left to expand where a masked password (``***``) stood."""
    from ..report import PASSWORD_PLACEHOLDER

    if MASK not in text:
        return "'" + text.replace("'", "'\"'\"'") + "'"
    escaped = "".join("\\" + c if c in '"\\$`' else c for c in text)
    return '"' + escaped.replace(MASK, PASSWORD_PLACEHOLDER) + '"'


def _mask(text: str, secrets: Sequence[str]) -> str:
    from urllib.parse import quote_plus

    for secret in secrets:
        for form in {secret, quote_plus(secret), quote_plus(secret).replace("+", "%20")}:
            text = text.replace(form, MASK)
    return text


def display_target(target: str) -> str:
    """A target as fs2sql shows it: a server URL with its password masked, even one that does
    not parse; a path as given."""
    if not is_server_url(target):
        return target
    try:
        return parse_server_url(target).display
    except Exception:
        return _mask_raw(target)


def _mask_raw(target: str) -> str:
    """Mask ``user:password@`` in a URL that could not be parsed."""
    import re

    return re.sub(r"(://[^:/@]*:)[^@]*@", rf"\1{MASK}@", target)


def require_driver(parsed: ServerUrl) -> None:
    module, command = _DRIVER_MODULE.get(parsed.driver, (parsed.driver, None))
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return
    name = "PostgreSQL" if parsed.dialect == "postgresql" else "MySQL/MariaDB"
    how = (f"Add it with: {command} (or pip install 'fs2sql[{_EXTRA[parsed.dialect]}]' where "
           "fs2sql is installed with pip)" if command else
           f"Install the Python package that provides '{module}' next to fs2sql")
    raise TargetError(
        f"writing to {name} needs the Python driver '{module}', which is not installed in "
        f"fs2sql's environment. {how}, then run the same command again.")


# -- errors ----------------------------------------------------------------------------------
def connection_error(exc: BaseException, parsed: ServerUrl, what: str = "connect") -> TargetError:
    """One paragraph for a failed connection or statement; the password never appears."""
    orig = getattr(exc, "orig", None) or exc
    message = parsed.scrub(" ".join(str(orig).split()))
    low = message.lower()
    url = parsed.url
    port = url.port or (5432 if parsed.dialect == "postgresql" else 3306)
    where = f"{url.host or 'localhost'}:{port}"
    name = "PostgreSQL" if parsed.dialect == "postgresql" else "MySQL/MariaDB"
    if any(s in low for s in ("connection refused", "can't connect", "could not translate",
                              "name or service not known", "timeout expired", "timed out",
                              "no route to host", "(2003", "2002,", "(2005")):
        return TargetError(
            f"no {name} server answers at {where} ({message}).", path=parsed.display,
            hint="Check the host and port, and that the server is running and accepts TCP "
            "connections.")
    if parsed.dialect == "mysql" and any(s in low for s in ("(1044", "(1142", "(1227")):
        return _mysql_privilege_error(message, parsed, what)
    if any(s in low for s in ("password authentication failed", "access denied for user",
                              "no password supplied", "(1045", "authentication failed",
                              "role \"", "pg_hba.conf")):
        return TargetError(
            f"the server at {where} refused the login ({message}).", path=parsed.display,
            hint="Check the user name and password (in the URL, PGPASSWORD/~/.pgpass for "
            "PostgreSQL, or the driver's option files); the password is never shown.")
    if ("does not exist" in low and "database" in low) or "unknown database" in low \
            or "(1049" in low:
        create = (f"createdb -h {url.host or 'localhost'} {parsed.database}"
                  if parsed.dialect == "postgresql" else
                  f"CREATE DATABASE `{parsed.database}` CHARACTER SET utf8mb4")
        return TargetError(
            f"the database '{parsed.database}' does not exist on {where}.", path=parsed.display,
            hint=f"Create it first ({create}), then run fs2sql again; fs2sql fills an empty "
            "database but never creates or drops databases you name.")
    if any(s in low for s in ("permission denied", "command denied", "(1142", "(1044",
                              "must be owner", "(1227")):
        return TargetError(
            f"the user may not {what} on this database ({message}). Nothing was written.",
            path=parsed.display,
            hint="Grant the user the right to create tables in the database (PostgreSQL: "
            "GRANT CREATE ON SCHEMA public; MySQL: GRANT ALL ON db.* and CREATE for the staging "
            "database), or use the database's owner.")
    return TargetError(f"{name} reported an error while trying to {what}: {message}. "
                       "Nothing was written.", path=parsed.display)


def mysql_grants(parsed: ServerUrl) -> List[str]:
    """The GRANTs a MySQL/MariaDB user needs: all on the target database and on the two
    databases fs2sql makes beside it (``targets/mysql.py``: the staging database the new tables
    are built in, and the one an MLflow-initialised target's own tables move to)."""
    from .mysql import stage_name

    user = (parsed.url.username or "<user>").replace("'", "''")
    return [f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%';"
            for name in (parsed.database, stage_name(parsed.database),
                         stage_name(parsed.database, "fs2sql_old_"))]


def _mysql_privilege_error(message: str, parsed: ServerUrl, what: str) -> TargetError:
    """1044 (no access to a database), 1142 (a command denied on a table), 1227: the login
    worked, a privilege is missing."""
    import re

    denied = re.search(r"to database '([^']+)'", message)
    where = f" on the database '{denied.group(1)}'" if denied else ""
    return TargetError(
        f"the server accepted the login, but the user lacks a privilege{where} it needs to "
        f"{what} ({message}). Besides the target, fs2sql creates and drops two databases: "
        f"{', '.join(_staging_names(parsed))}. Nothing was written.", path=parsed.display,
        hint="As an administrator, grant: " + " ".join(mysql_grants(parsed))
        + " Then run the same command again.")


def _staging_names(parsed: ServerUrl) -> List[str]:
    from .mysql import stage_name

    return [stage_name(parsed.database), stage_name(parsed.database, "fs2sql_old_")]


# -- which databases may be written ----------------------------------------------------------
@dataclass
class TargetState:
    """What the target database holds before fs2sql writes anything."""

    tables: List[str]
    revision: Optional[str] = None  # Alembic revision when MLflow initialised it
    default_experiment: bool = False  # MLflow's own experiment 0 is there (and nothing else)

    @property
    def empty(self) -> bool:
        return not self.tables


def inspect_state(conn, parsed: ServerUrl, requested_revision: Optional[str],
                  quote) -> TargetState:
    """Refuse anything but an empty database or one only MLflow's server initialised."""
    from sqlalchemy import inspect

    tables = sorted(inspect(conn).get_table_names())
    if not tables:
        return TargetState(tables=[])
    where = parsed.display
    if "alembic_version" not in tables or "experiments" not in tables:
        raise TargetError(
            f"the database is not empty: it has {len(tables)} "
            f"{'table that is' if len(tables) == 1 else 'tables that are'} not an MLflow "
            f"schema ({_list(tables)}). fs2sql writes only into an empty database or one that "
            "MLflow's server initialised and nothing else wrote. Nothing was written.",
            path=where, hint="Create a new, empty database for MLflow and migrate into it.")
    revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    known = _known_revision(revision)
    if not known:
        raise TargetError(
            f"the database holds an MLflow schema at Alembic revision {revision!r}, which the "
            "MLflow installed with fs2sql does not know (made by a newer MLflow?). Nothing was "
            "written.", path=where,
            hint="Migrate into an empty database, or give fs2sql the mlflow-skinny of the "
            "MLflow that made it: pipx inject --force fs2sql 'mlflow-skinny==X.Y.Z'.")
    if requested_revision and requested_revision not in (revision, "head", "heads"):
        raise TargetError(
            f"the database already holds MLflow's schema at revision {revision}, not the "
            f"requested {requested_revision}. Nothing was written.", path=where,
            hint="Migrate into an empty database to choose the schema version.")
    expected = set(_tables_at(revision))
    extra = [t for t in tables if t not in expected]
    if extra:
        raise TargetError(
            f"the database holds MLflow's tables and also {len(extra)} others "
            f"({_list(extra)}). fs2sql writes only into a database that MLflow's server "
            "initialised and nothing else wrote. Nothing was written.", path=where,
            hint="Migrate into a new, empty database.")
    found = []
    default = False
    for table in tables:
        if table == "alembic_version":
            continue
        n = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {quote(table)}").scalar()
        if table == "workspaces":
            names = [r[0] for r in conn.exec_driver_sql(f"SELECT name FROM {quote(table)}")]
            if names == ["default"]:
                continue
        if table == "experiments" and n == 1:
            row = conn.exec_driver_sql(
                "SELECT experiment_id, name FROM experiments").fetchone()
            if tuple(row) == (0, "Default"):
                default = True
                continue
        if n:
            found.append(f"{table}: {n} row{'' if n == 1 else 's'}")
    if found:
        raise TargetError(
            "the database already holds MLflow data (" + "; ".join(found[:8])
            + ("; …" if len(found) > 8 else "") + "). fs2sql never merges into or replaces "
            "existing MLflow data. Nothing was written.", path=where,
            hint="Migrate into a new, empty database (or one MLflow's server just initialised).")
    return TargetState(tables=tables, revision=revision, default_experiment=default)


def _list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _script_directory():
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config("sqlite://"))


def _known_revision(revision: Optional[str]) -> bool:
    if not revision:
        return False
    try:
        return _script_directory().get_revision(revision) is not None
    except Exception:
        return False


def _tables_at(revision: str) -> List[str]:
    """MLflow's tables at ``revision`` (from the cached empty SQLite schema)."""
    import sqlite3

    from ..schema import empty_sqlite_schema

    path, _ = empty_sqlite_schema(revision)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    finally:
        con.close()


# -- MLflow's schema on a connection, inside the caller's transaction -------------------------
def create_schema_in_transaction(conn, revision: Optional[str] = None, *,
                                 reset: Optional[Callable[[], None]] = None,
                                 database: str = "") -> str:
    """MLflow's own steps (``mlflow.store.db.utils._initialize_tables``: initial tables, then
    ``alembic upgrade``) on ``conn``, without committing.

    MLflow's ``env.py`` opens a second connection from the engine (and commits), so on a
    server it would escape the caller's transaction: here Alembic runs with its own
    ``EnvironmentContext`` on ``conn`` itself. Alembic sees the connection already inside a
    transaction and leaves commit to the caller (PostgreSQL's DDL is transactional: a failure
    or kill leaves nothing).

    The statements the migrations send are recorded once per kind of server and replayed on
    later runs (``schema_replay``): the same schema without importing MLflow's migrations.
    """
    from .schema_replay import create_schema

    def run_migrations() -> str:
        upgrade_in_transaction(conn, revision, initial=True)
        from alembic.migration import MigrationContext

        return MigrationContext.configure(conn).get_current_revision()

    found, _ = create_schema(conn, revision, run_migrations, reset, database)
    return found


def upgrade_in_transaction(conn, revision: Optional[str], *, initial: bool = False) -> None:
    from alembic.runtime.environment import EnvironmentContext
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_alembic_config

    logging.getLogger("alembic").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # MLflow's old migration scripts use APIs SQLAlchemy now deprecates: not ours to fix.
        warnings.simplefilter("ignore")
        if initial:
            from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

            InitialBase.metadata.create_all(conn)
        config = _get_alembic_config(conn.engine.url.render_as_string(hide_password=False))
        script = _script_directory()
        destination = revision or "heads"

        def upgrade(rev, _context):
            return script._upgrade_revs(destination, rev)

        with EnvironmentContext(config, script, fn=upgrade, destination_rev=destination) as env:
            env.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
            with env.begin_transaction():
                env.run_migrations()



class ServerTarget(Target):
    """What PostgreSQL and MySQL targets share: the parsed URL (credentials masked in
    ``display``), the driver check, the requested revision and the inspected state."""

    experiment_id_limit = INT32_MAX

    def __init__(self, target: str, *, revision: Optional[str] = None):
        self.parsed = parse_server_url(target)
        require_driver(self.parsed)
        self.display = self.parsed.display
        self.requested_revision = revision
        self.state: Optional[TargetState] = None
        self._engine = None
        self.conn = None
        self._columns = None

    def _server_driver(self) -> str:
        """The driver MLflow's server should use: the one the user named, else psycopg2 /
        PyMySQL (with a bare scheme SQLAlchemy picks a driver MLflow's environment may lack)."""
        _, _, named = self.display.split("://", 1)[0].partition("+")
        driver = named or _SERVER_DRIVER[self.parsed.dialect][0]
        if self.widen and driver == "psycopg":
            # psycopg 3 binds every experiment ID as '%s::INTEGER' (SQLAlchemy's bind casts),
            # which fails for large IDs whatever the column: MLflow must use psycopg2 here.
            driver = "psycopg2"
        return driver

    def start_command(self) -> str:
        """A command that works when pasted: the password (never shown) is the shell variable
        ``$MLFLOW_DB_PASSWORD`` in double quotes, which the report says how to set."""
        rest = self.display.split("://", 1)[1]
        uri = f"{self.parsed.dialect}+{self._server_driver()}://{rest}"
        return f"mlflow server --backend-store-uri {shell_argument(uri)}"

    def start_requires(self) -> str:
        driver = self._server_driver()
        return f"pip install {_DRIVER_PACKAGE.get(driver, driver)}"
