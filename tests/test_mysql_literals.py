"""MySQL/MariaDB rows go in as multi-row INSERT statements whose literals fs2sql writes itself:
they must be exactly the literals PyMySQL writes, and the server must read back every value."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pymysql = pytest.importorskip("pymysql")

from mlflow_fs2sql.targets.mysql import _multi_row_inserts  # noqa: E402

values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(["", "'", "\\", "\0", "\x1a", "\r\n", '"', "\\'", "ünïcödé 🎉", "%s", "%%"]),
)


def pymysql_statement(prefix, rows):
    """What PyMySQL's executemany sends for ``rows`` (one statement)."""
    from pymysql.converters import escape_item

    return prefix + ",".join("(" + ",".join(escape_item(v, "utf8mb4") for v in row) + ")"
                             for row in rows)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(values, min_size=1, max_size=6).map(tuple), min_size=1, max_size=20))
def test_literals_are_the_ones_pymysql_writes(rows):
    prefix = "INSERT INTO t (a) VALUES "
    (statement,) = _multi_row_inserts(prefix, rows, limit=10**9)
    assert statement == pymysql_statement(prefix, rows)


def test_statements_are_cut_at_the_limit_and_keep_every_row_once():
    rows = [(i, f"v{i}" * 10) for i in range(1000)]
    statements = list(_multi_row_inserts("I ", rows, limit=2000))
    assert len(statements) > 10 and all(len(s) <= 2000 + 40 for s in statements)
    joined = ",".join(s[2:] for s in statements)
    assert joined == pymysql_statement("", rows)


@pytest.mark.parametrize("bad", [b"bytes", object(), math.inf, math.nan])
def test_a_value_only_the_driver_can_write_is_left_to_it(bad):
    with pytest.raises(TypeError):
        list(_multi_row_inserts("I ", [(1,), (bad,)], limit=10**6))


def test_the_server_reads_back_every_value(my):
    """Round trip through MariaDB/MySQL in the load's strict mode."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from mlflow_fs2sql.targets.mysql import LOAD_SQL_MODE
    from mlflow_fs2sql.targets.server import parse_server_url

    url = my.new_db()
    engine = create_engine(parse_server_url(url).url, poolclass=NullPool,
                           connect_args={"charset": "utf8mb4"})
    rows = [(1, "plain", 0.1, 1718000000123, True),
            (2, "q'uo\"te\\ back\\'slash", -0.0, -(2**63), False),
            (3, "nul\0 sub\x1a cr\r lf\n tab\t", 5e-324, 2**63 - 1, None),
            (4, "ünïcödé 🎉 漢字", 1.7976931348623157e308, 0, True),
            (5, "%s %% {x}", -1.7976931348623157e308, 42, False),
            (6, None, 1e16, 1, True)]
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SET SESSION sql_mode = '{LOAD_SQL_MODE}'")
            conn.exec_driver_sql(
                "CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(100), f DOUBLE, i BIGINT, "
                "b BOOLEAN) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            cursor = conn.connection.driver_connection.cursor()
            for statement in _multi_row_inserts("INSERT INTO t VALUES ", rows, limit=60):
                cursor.execute(statement)
            conn.commit()
            got = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM t ORDER BY id")]
    finally:
        engine.dispose()
    want = [(i, s, f, n, None if b is None else int(b)) for i, s, f, n, b in rows]
    assert got == want
