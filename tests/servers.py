"""Real database servers for tests: addresses, a throwaway database per test, queries.

Addresses come from FS2SQL_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
and FS2SQL_TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306/mysql): a user that may create
and drop databases. Where no server answers, tests skip with one line naming the variables --
except with CI=true, where they fail instead. The fixtures ``pg``, ``my`` and ``server`` (both)
are in conftest.py.
"""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN = os.environ.get("FS2SQL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("FS2SQL_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")
SKIP_LINE = ("no database server answers (set FS2SQL_TEST_PG_URL / FS2SQL_TEST_MYSQL_URL to a "
             "user that may create databases)")


# -- server fixtures ----------------------------------------------------------------------------
def _engine(url: str):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from mlflow_fs2sql.targets.server import parse_server_url

    return create_engine(parse_server_url(url).url, poolclass=NullPool,
                         isolation_level="AUTOCOMMIT")


_ALIVE: dict = {}


def _require(kind: str, admin: str) -> None:
    if kind not in _ALIVE:
        try:
            engine = _engine(admin)
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            engine.dispose()
            _ALIVE[kind] = None
        except Exception as exc:  # noqa: BLE001 - any failure means "no server here"
            _ALIVE[kind] = f"{kind}: {type(exc).__name__}"
    if _ALIVE[kind] is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {_ALIVE[kind]}; {SKIP_LINE}")
        pytest.skip(SKIP_LINE)


def _with_database(admin: str, name: str) -> str:
    scheme, rest = admin.split("://", 1)
    return f"{scheme}://{rest.rsplit('/', 1)[0]}/{name}"


class Server:
    def __init__(self, kind: str, admin: str):
        self.kind, self.admin = kind, admin
        self.made = []

    def new_db(self) -> str:
        name = f"fs2sql_t_{uuid.uuid4().hex[:10]}"
        engine = _engine(self.admin)
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        self.made.append(name)
        return _with_database(self.admin, name)

    def drop_all(self) -> None:
        engine = _engine(self.admin)
        with engine.connect() as conn:
            for name in self.made:
                if self.kind == "postgresql":
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS fs2sql_stage_{name}")
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS fs2sql_old_{name}")
        engine.dispose()

    def query(self, url: str, sql: str):
        engine = _engine(url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.exec_driver_sql(sql)]
        finally:
            engine.dispose()

    def tables(self, url: str):
        from sqlalchemy import inspect

        engine = _engine(url)
        try:
            with engine.connect() as conn:
                return sorted(inspect(conn).get_table_names())
        finally:
            engine.dispose()


def _driver_url(url: str) -> str:
    from mlflow_fs2sql.targets.server import parse_server_url

    return parse_server_url(url).url.render_as_string(hide_password=False)
