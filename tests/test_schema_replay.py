"""Server schemas: MLflow's migrations run once per kind of server, recorded, then replayed.

The replayed schema must be exactly the one MLflow's migrations make (tables, columns, types,
defaults, constraints, indexes, triggers), and any recording that does not give that schema
must be thrown away and replaced by MLflow's migrations, silently and correctly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from servers import _driver_url
from test_server_targets import small_id_store

from mlflow_fs2sql.migrate import migrate, verify
from mlflow_fs2sql.targets import server as server_module


def schema_dump(srv, url: str) -> dict:
    """Everything that makes up the schema, as the server itself describes it."""
    if srv.kind == "postgresql":
        return {
            "columns": srv.query(url, """
                SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                       a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text
                FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0
                  AND NOT a.attisdropped ORDER BY 1, 2"""),
            "constraints": srv.query(url, """
                SELECT cl.relname::text, co.conname::text, pg_get_constraintdef(co.oid)
                FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid
                JOIN pg_namespace n ON n.oid = cl.relnamespace
                WHERE n.nspname = 'public' ORDER BY 1, 2"""),
            "indexes": srv.query(url, "SELECT tablename::text, indexname::text, indexdef FROM "
                                      "pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"),
            "triggers": srv.query(url, "SELECT tgrelid::regclass::text, tgname::text, "
                                       "pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT "
                                       "tgisinternal ORDER BY 1, 2"),
            "functions": srv.query(url, "SELECT proname::text, prosrc FROM pg_proc p JOIN "
                                        "pg_namespace n ON n.oid = p.pronamespace WHERE "
                                        "n.nspname = 'public' ORDER BY 1"),
            "version": srv.query(url, "SELECT version_num FROM alembic_version"),
        }
    tables = [r[0] for r in srv.query(url, "SHOW TABLES")]
    return {
        # Line order of KEY clauses follows index creation order, which MLflow's own migrations
        # do not fix (two runs of them differ): compared as a set of lines.
        # AUTO_INCREMENT=n in the table options is the next ID, which data moves.
        "tables": {t: sorted(re.sub(r" AUTO_INCREMENT=\d+", "", line).rstrip(",")
                             for line in srv.query(
                                 url, f"SHOW CREATE TABLE `{t}`")[0][1].splitlines())
                   for t in tables},
        "triggers": srv.query(url, "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT "
                                   "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                                   "DATABASE() ORDER BY 1"),
        "version": srv.query(url, "SELECT version_num FROM alembic_version"),
    }


def _recordings(cache: Path):
    return sorted((cache / "server-schemas").glob("*.json"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FS2SQL_CACHE_DIR", str(folder))
    monkeypatch.delenv("FS2SQL_NO_SCHEMA_CACHE", raising=False)
    return folder


def _no_migrations(monkeypatch):
    """From here on, running MLflow's migrations for a new schema fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("MLflow's migrations ran although a recording exists")

    monkeypatch.setattr(server_module, "upgrade_in_transaction", refuse)


def test_replayed_schema_is_exactly_the_migrated_one(server, cache, tmp_path, monkeypatch):
    store = small_id_store(tmp_path)
    monkeypatch.setenv("FS2SQL_NO_SCHEMA_CACHE", "1")
    plain = server.new_db()
    assert migrate(str(store), plain).ok
    assert _recordings(cache) == []
    monkeypatch.delenv("FS2SQL_NO_SCHEMA_CACHE")

    recorded = server.new_db()
    assert migrate(str(store), recorded).ok
    assert len(_recordings(cache)) == 1

    _no_migrations(monkeypatch)
    replayed = server.new_db()
    assert migrate(str(store), replayed).ok
    assert verify(str(store), replayed).ok
    want = schema_dump(server, plain)
    assert schema_dump(server, recorded) == want
    assert schema_dump(server, replayed) == want


@pytest.mark.parametrize("damage", ["drop a statement", "change a column", "not json"])
def test_a_recording_that_is_wrong_is_replaced_by_mlflows_migrations(
        server, cache, tmp_path, damage):
    store = small_id_store(tmp_path)
    reference = server.new_db()
    assert migrate(str(store), reference).ok
    (path,) = _recordings(cache)
    data = json.loads(path.read_text())
    statements = data["statements"]
    if damage == "drop a statement":
        at = next(i for i, s in enumerate(statements) if s[0].startswith("CREATE INDEX"))
        del statements[at]
        path.write_text(json.dumps(data))
    elif damage == "change a column":
        at = next(i for i, s in enumerate(statements)
                  if s[0].lstrip().startswith("CREATE TABLE") and "VARCHAR(256)" in s[0])
        statements[at][0] = statements[at][0].replace("VARCHAR(256)", "VARCHAR(255)", 1)
        path.write_text(json.dumps(data))
    else:
        path.write_text("{not json")

    again = server.new_db()
    report = migrate(str(store), again)
    assert report.ok and verify(str(store), again).ok
    assert schema_dump(server, again) == schema_dump(server, reference)
    # the bad recording was replaced by a good one
    assert json.loads(path.read_text())["statements"] != statements or damage == "not json"
    if damage == "not json":
        assert json.loads(path.read_text())["format"] == 2


def test_the_published_schema_is_the_one_mlflow_itself_makes(server, cache, tmp_path):
    """After the load (PostgreSQL: keys and indexes of the big tables dropped and re-created
    around it; MySQL: staging database, RENAME, triggers moved) the schema is exactly what
    MLflow's own ``_initialize_tables`` makes on an empty database of the same server."""
    from mlflow.store.db.utils import _initialize_tables
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    store = small_id_store(tmp_path)
    for _ in range(2):  # recorded, then replayed
        ours = server.new_db()
        assert migrate(str(store), ours).ok
    theirs = server.new_db()
    engine = create_engine(_driver_url(theirs), poolclass=NullPool)
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    assert schema_dump(server, ours) == schema_dump(server, theirs)
