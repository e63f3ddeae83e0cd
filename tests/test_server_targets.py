"""PostgreSQL and MySQL/MariaDB targets on real servers.

Addresses come from FS2SQL_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
and FS2SQL_TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306/mysql): a user that may create
and drop databases. Each test creates its own database and drops it afterwards. Where no server
answers, the tests skip with one line naming the variables -- except with CI=true, where they
fail instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import (
    experiment_meta,
    fixture_store,
    installed_head,
    metric_heavy_store,
    require_schema,
    run_meta,
    write_files,
)
from servers import MYSQL_ADMIN, PG_ADMIN, _driver_url, _engine, _with_database

from mlflow_fs2sql.errors import SchemaError, TargetError
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

BIG = 200319820225698328  # an 18-digit FileStore ID


def small_id_store(root: Path) -> Path:
    """An old-style store (IDs 0 and 1) with a run in each experiment."""
    a, b = "a" * 32, "b" * 32
    return write_files(root / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        "1/meta.yaml": experiment_meta("1", "second"),
        f"0/{a}/meta.yaml": run_meta(a, "0"),
        f"0/{a}/params/lr": "0.1",
        f"0/{a}/metrics/loss": "1718000000100 0.5 0\n1718000000200 NaN 1\n",
        f"1/{b}/meta.yaml": run_meta(b, "1"),
        f"1/{b}/tags/note": "ünïcödé\r\nline",
    })


def big_id_store(root: Path) -> Path:
    """Experiment 0, two 18-digit experiments (created in the opposite order of their IDs) and
    a prompt that names both."""
    a, b = "c" * 32, "d" * 32
    late, early = 900000000000000001, BIG
    return write_files(root / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        f"{late}/meta.yaml": experiment_meta(str(late), "made first", creation_time=1000),
        f"{early}/meta.yaml": experiment_meta(str(early), "made second", creation_time=2000),
        f"{late}/{a}/meta.yaml": run_meta(a, str(late)),
        f"{late}/{a}/params/p": "1",
        f"{early}/{b}/meta.yaml": run_meta(b, str(early)),
        "models/p1/meta.yaml": "name: p1\ncreation_timestamp: 1718000000000\n"
                               "last_updated_timestamp: 1718000000000\n",
        "models/p1/tags/mlflow.prompt.is_prompt": "true",
        "models/p1/tags/_mlflow_experiment_ids": f",{late},{early},",
    })


def run_cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "mlflow_fs2sql", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, **kw)


# -- URLs, drivers, secrets (no server needed) --------------------------------------------------
def test_urls_pick_the_installed_driver_and_mask_the_password():
    from mlflow_fs2sql.targets.server import parse_server_url

    p = parse_server_url("postgresql://alice:s3cr%40t@db.example:5432/mlflow")
    assert (p.dialect, p.driver) == ("postgresql", "psycopg")
    assert "s3cr" not in p.display and "***" in p.display
    assert p.url.password == "s3cr@t"
    assert parse_server_url("postgres://u@h/db").driver == "psycopg"
    assert parse_server_url("postgresql+psycopg2://u@h/db").driver == "psycopg2"
    m = parse_server_url("mysql://bob:pw@h:3306/mlflow")
    assert (m.dialect, m.driver, m.display) == ("mysql", "pymysql", "mysql://bob:***@h:3306/mlflow")
    assert parse_server_url("mariadb+pymysql://u@h/db").dialect == "mysql"
    assert "pw" not in parse_server_url("mysql://u@h/db?password=hunter2").display.replace(
        "password", "")


def test_mssql_and_unknown_schemes_are_refused():
    from mlflow_fs2sql.targets import open_target

    with pytest.raises(TargetError, match="SQL Server"):
        open_target("mssql+pyodbc://u:p@h/db")
    with pytest.raises(TargetError, match="cannot write to 'oracle'"):
        open_target("oracle://u:p@h/db")
    with pytest.raises(TargetError, match="names no database"):
        open_target("postgresql://u:topsecret@h")


def test_missing_driver_is_one_paragraph_naming_the_command(monkeypatch):
    import importlib.util

    from mlflow_fs2sql.targets import open_target

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg", "pymysql") else real(name, *a))
    with pytest.raises(TargetError) as exc:
        open_target("postgresql://u:pw@h/db")
    assert "pipx inject fs2sql 'psycopg[binary]'" in str(exc.value)
    assert "fs2sql[postgres]" in str(exc.value)
    with pytest.raises(TargetError, match="pipx inject fs2sql pymysql"):
        open_target("mysql://u@h/db")


def test_keep_refuses_large_ids_before_anything_and_widen_is_refused_where_it_must(tmp_path):
    from mlflow_fs2sql import ids

    store = big_id_store(tmp_path)

    class Server32:
        display, experiment_id_limit, can_widen, widen = "x", 2**31 - 1, False, False

    with pytest.raises(SchemaError) as exc:
        ids.plan(str(store), "keep", Server32())
    text = str(exc.value)
    assert str(BIG) in text and "made second" in text and "--experiment-ids renumber" in text
    with pytest.raises(TargetError, match="errno 150"):
        ids.plan(str(store), "widen", Server32())

    class Sqlite:
        display, experiment_id_limit, can_widen, widen = "x", None, False, False

    assert ids.plan(str(store), "keep", Sqlite()).mapping == {}
    with pytest.raises(TargetError, match="SQLite already stores"):
        ids.plan(str(store), "widen", Sqlite())


def test_renumber_is_deterministic_in_creation_order(tmp_path):
    from mlflow_fs2sql import ids

    store = big_id_store(tmp_path)

    class Server32:
        display, experiment_id_limit, can_widen, widen = "x", 2**31 - 1, False, False

    plan = ids.plan(str(store), "renumber", Server32())
    assert plan.mapping == {900000000000000001: 1, BIG: 2}  # created first -> first new ID
    assert ids.plan(str(store), "renumber", Server32()).mapping == plan.mapping


# -- connection problems --------------------------------------------------------------------------
def test_server_down_and_missing_database_are_one_paragraph_exit_1(pg, tmp_path):
    store = small_id_store(tmp_path)
    down = run_cli("migrate", str(store), "postgresql://someone:hunter2@127.0.0.1:1/db")
    assert down.returncode == 1
    assert "no PostgreSQL server answers at 127.0.0.1:1" in down.stderr
    assert "hunter2" not in down.stderr + down.stdout
    missing = run_cli("migrate", str(store), _with_database(PG_ADMIN, "fs2sql_no_such_db"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert "createdb" in missing.stderr
    role = run_cli("migrate", str(store), "postgresql://no_such_role:hunter2@127.0.0.1/postgres")
    assert role.returncode == 1 and "refused the login" in role.stderr
    assert "hunter2" not in role.stderr


def test_mysql_login_refused_and_missing_database(my, tmp_path):
    store = small_id_store(tmp_path)
    host = MYSQL_ADMIN.split("@", 1)[1].rsplit("/", 1)[0]
    bad = run_cli("migrate", str(store), f"mysql://no_such_user:hunter2@{host}/x")
    assert bad.returncode == 1 and "refused the login" in bad.stderr
    assert "hunter2" not in bad.stderr
    missing = run_cli("migrate", str(store), _with_database(MYSQL_ADMIN, "fs2sql_no_such_db"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_a_password_user_migrates_and_the_password_is_shown_nowhere(my, tmp_path):
    """A MariaDB user with a password full of URL syntax: the migration and verify work, and
    neither the password nor its URL-encoded form appears in output, --json or the start
    command (MySQL checks passwords here; the PostgreSQL test server trusts every login)."""
    import json
    from urllib.parse import quote

    url = my.new_db()
    name = url.rsplit("/", 1)[1]
    user, password = f"fs2sql_pw_{uuid.uuid4().hex[:6]}", "s3cr@t:/pw?#%"
    admin = _engine(MYSQL_ADMIN)
    with admin.connect() as conn:
        for host in ("%", "localhost"):
            conn.exec_driver_sql("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
            for db in (name, f"fs2sql_stage_{name}", f"fs2sql_old_{name}"):
                conn.exec_driver_sql(f"GRANT ALL ON `{db}`.* TO %s@%s", (user, host))
    try:
        user_url = url.replace("root@", f"{user}:{quote(password, safe='')}@", 1)
        out = tmp_path / "report.json"
        result = run_cli("migrate", str(small_id_store(tmp_path)), user_url, "--verify",
                         "--json", str(out))
        assert result.returncode == 0, result.stderr
        shown = result.stdout + result.stderr + out.read_text()
        report = json.loads(out.read_text())
        assert report["ok"] and report["exit_code"] == 0
        assert all(k["verified"] == k["written"] for k in report["kinds"])
        assert f"{user}:***@" in report["target"]
        assert f"{user}:${{MLFLOW_DB_PASSWORD}}@" in report["start_command"]  # pastes as is
        for secret in (password, quote(password, safe=""), quote(password)):
            assert secret not in shown
        wrong = run_cli("verify", str(small_id_store(tmp_path / "again")),
                        user_url.replace(quote(password, safe=""), "nope"))
        assert wrong.returncode == 1 and "refused the login" in wrong.stderr
    finally:
        with admin.connect() as conn:
            for host in ("%", "localhost"):
                conn.exec_driver_sql("DROP USER IF EXISTS %s@%s", (user, host))
        admin.dispose()


def test_postgres_user_without_create_privilege(pg, tmp_path):
    url = pg.new_db()
    role = f"fs2sql_ro_{uuid.uuid4().hex[:6]}"
    engine = _engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    engine.dispose()
    try:
        user_url = url.replace("postgres@", f"{role}:pw@", 1)
        result = run_cli("migrate", str(small_id_store(tmp_path)), user_url)
        assert result.returncode == 1, result.stderr
        assert "may not create tables" in result.stderr and "pw@" not in result.stderr
    finally:
        pg.drop_all()
        pg.made.clear()
        engine = _engine(PG_ADMIN)
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        engine.dispose()


# -- which databases may be written ---------------------------------------------------------------
def test_a_database_with_other_tables_or_mlflow_data_is_refused(server, tmp_path):
    store = small_id_store(tmp_path)
    url = server.new_db()
    engine = _engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id INTEGER)")
    engine.dispose()
    with pytest.raises(TargetError, match="customers"):
        migrate(str(store), url)
    assert server.tables(url) == ["customers"]

    url2 = server.new_db()
    migrate(str(store), url2)
    with pytest.raises(TargetError, match="already holds MLflow data"):
        migrate(str(store), url2)


def test_a_database_mlflow_initialised_is_accepted(server, tmp_path):
    """MLflow's server made the schema and experiment 0; the store's experiment 0 replaces it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = small_id_store(tmp_path)
    url = server.new_db()
    mlflow_store = SqlAlchemyStore(_driver_url(url), str(tmp_path / "artifacts"))
    mlflow_store.engine.dispose()
    assert server.query(url, "SELECT experiment_id, name FROM experiments") == [(0, "Default")]
    report = migrate(str(store), url, MigrateOptions(verify=True))
    assert report.ok
    assert verify(str(store), url).ok


# -- migrate + verify -----------------------------------------------------------------------------
def test_small_ids_keep_exactly_and_mlflow_gets_the_next_id(server, tmp_path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = small_id_store(tmp_path)
    url = server.new_db()
    report = migrate(str(store), url, MigrateOptions(verify=True))
    assert report.ok and "***" not in report.target  # no password in this URL
    assert server.query(url, "SELECT experiment_id FROM experiments ORDER BY 1") == [(0,), (1,)]
    assert verify(str(store), url).ok
    mlflow_store = SqlAlchemyStore(_driver_url(url), str(tmp_path / "artifacts"))
    try:
        assert mlflow_store.create_experiment("made by MLflow after the migration") == "2"
    finally:
        mlflow_store.engine.dispose()


def test_next_experiment_id_on_sqlite_does_not_collide(tmp_path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = big_id_store(tmp_path)
    db = tmp_path / "out.db"
    migrate(str(store), str(db))
    mlflow_store = SqlAlchemyStore(f"sqlite:///{db}", str(tmp_path / "artifacts"))
    try:
        new = int(mlflow_store.create_experiment("next"))
    finally:
        mlflow_store.engine.dispose()
    assert new == 900000000000000001 + 1  # SQLite's rowid: max + 1


@pytest.mark.parametrize("version", ["2.22.5", "3.17.2"])
def test_full_fixtures_renumber_and_verify(server, version, tmp_path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_fs2sql.ids import SOURCE_ID_TAG

    if version == "3.17.2":
        require_schema("assessments")
    store = fixture_store(version, "full")
    url = server.new_db()
    with pytest.raises(SchemaError, match="do not fit"):
        migrate(str(store), url)
    assert server.tables(url) == []  # keep refused before anything was written
    report = migrate(str(store), url, MigrateOptions(verify=True, experiment_ids="renumber"))
    assert report.ok, report.mismatches[:5]
    assert any("got new IDs" in n for n in report.notes)
    mapping = {int(v): e for e, v in server.query(
        url, f"SELECT experiment_id, value FROM experiment_tags WHERE "
        f"{'`key`' if server.kind == 'mysql' else 'key'} = '{SOURCE_ID_TAG}'")}
    assert mapping and all(new < 2**31 for new in mapping.values())
    assert sorted(mapping.values()) == list(range(1, len(mapping) + 1))
    # the same mapping, as data, in the report (and so in --json)
    assert report.experiment_ids["policy"] == "renumber"
    assert {int(k): v for k, v in report.experiment_ids["renumbered"].items()} == mapping
    assert report.to_dict()["experiment_ids"] == report.experiment_ids
    again = verify(str(store), url)
    assert again.ok and again.verified["runs"] == report.written["runs"]
    # runs follow their experiment
    runs = server.query(url, "SELECT DISTINCT experiment_id FROM runs")
    assert {r[0] for r in runs} <= set(mapping.values()) | {0}
    mlflow_store = SqlAlchemyStore(_driver_url(url), str(tmp_path / "artifacts"))
    try:
        assert int(mlflow_store.create_experiment("next")) == max(mapping.values()) + 1
    finally:
        mlflow_store.engine.dispose()


def test_verify_finds_a_changed_value(server, tmp_path):
    store = small_id_store(tmp_path)
    url = server.new_db()
    migrate(str(store), url)
    engine = _engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("UPDATE params SET value = '0.2'")
    engine.dispose()
    result = run_cli("verify", str(store), url)
    assert result.returncode == 3
    assert "param 'lr', field 'value': source='0.1', target='0.2'" in result.stdout


def test_verify_on_a_server_finds_every_damage_in_any_batch(server, tmp_path, monkeypatch):
    """The batched read-back on a server (PostgreSQL: one ``= ANY(array)`` statement, integer
    or text owners; MySQL: ``IN (...)`` of the batch's size) finds each damaged row of each
    per-entity table, the same whatever the batch size."""
    from mlflow_fs2sql import verify as verify_module
    from mlflow_fs2sql.rows import SPECS

    store = fixture_store("3.17.2", "full")
    url = server.new_db()
    assert migrate(str(store), url, MigrateOptions(experiment_ids="renumber")).ok
    key = "`key`" if server.kind == "mysql" else "key"
    damaged = {}  # table -> its label in messages (one row removed, of its first owner)
    engine = _engine(url)
    with engine.begin() as conn:
        for table, (label, _) in verify_module.ROW_LABEL.items():
            owner = SPECS[table].owner[0]
            # not the tag that pairs a renumbered experiment with its source ID
            keep = f" AND {key} <> 'fs2sql.source_experiment_id'" \
                if table == "experiment_tags" else ""
            first = conn.exec_driver_sql(f"SELECT MIN({owner}) FROM {table} WHERE 1=1{keep}"
                                         ).scalar()
            if first is None:
                continue
            one = f"{owner} = %(o)s{keep}"
            if server.kind == "mysql":
                sql = f"DELETE FROM {table} WHERE {one} LIMIT 1"
            else:
                sql = (f"DELETE FROM {table} WHERE ctid = "
                       f"(SELECT ctid FROM {table} WHERE {one} LIMIT 1)")
            assert conn.exec_driver_sql(sql, {"o": first}).rowcount == 1
            damaged[table] = label
        run = conn.exec_driver_sql("SELECT MAX(run_uuid) FROM params").scalar()
        conn.exec_driver_sql("UPDATE params SET value = 'changed' WHERE run_uuid = %(r)s",
                             {"r": run})
        changed = conn.exec_driver_sql("SELECT COUNT(*) FROM params WHERE run_uuid = %(r)s",
                                       {"r": run}).scalar()
        conn.exec_driver_sql(f"INSERT INTO params ({key}, value, run_uuid) "
                             "VALUES ('extra', 'x', %(r)s)", {"r": run})
    engine.dispose()
    # an experiment-owned table (integer owner) and a trace-owned one (text) are among them
    assert {"experiment_tags", "params", "metrics", "trace_tags"} <= set(damaged), damaged
    found = {}
    for batch in (1, 3, verify_module.BATCH_ENTITIES):
        monkeypatch.setattr(verify_module, "BATCH_ENTITIES", batch)
        report = verify(str(store), url)
        found[batch] = (report.mismatch_count, report.mismatches)
        missing = [m for m in report.mismatches if m.endswith(": missing in target")]
        for table, label in damaged.items():
            assert any(f" — {label} " in m for m in missing), (table, missing)
        assert sum("field 'value': source=" in m and "target='changed'" in m
                   for m in report.mismatches) == changed
        assert any("param 'extra': in target but not in source" in m
                   for m in report.mismatches), report.mismatches
        assert len(missing) == len(damaged), missing
        assert report.mismatch_count == len(damaged) + changed + 1
    assert all(v == found[1] for v in found.values())


def test_renumbered_prompt_tag_follows(server, tmp_path):
    store = big_id_store(tmp_path)
    url = server.new_db()
    report = migrate(str(store), url, MigrateOptions(verify=True, experiment_ids="renumber"))
    assert report.ok, report.mismatches
    key = "`key`" if server.kind == "mysql" else "key"
    assert server.query(url, f"SELECT value FROM registered_model_tags WHERE {key} = "
                        "'_mlflow_experiment_ids'") == [(",1,2,",)]
    assert server.query(url, "SELECT run_uuid, experiment_id FROM runs ORDER BY 1") == [
        ("c" * 32, 1), ("d" * 32, 2)]


def test_widen_on_mysql_is_refused(my, tmp_path):
    url = my.new_db()
    result = run_cli("migrate", str(big_id_store(tmp_path)), url, "--experiment-ids", "widen")
    assert result.returncode == 1 and "errno 150" in result.stderr
    assert my.tables(url) == []


def test_widen_then_upgrade_schema_then_newer_mlflow_logs_in_large_id_experiment(pg, tmp_path):
    """A widened DB for MLflow 3.2, upgraded by fs2sql upgrade-schema to the installed
    mlflow-skinny's head; that MLflow then creates a logged model and logs feedback on a trace in
    an 18-digit experiment."""
    import mlflow
    from mlflow import MlflowClient

    require_schema("assessments")
    store = fixture_store("3.17.2", "full")
    url = pg.new_db()
    result = run_cli("migrate", str(store), url, "--experiment-ids", "widen", "--mlflow-version",
                     "3.2", "--verify")
    assert result.returncode == 0, result.stderr
    assert "fs2sql upgrade-schema" in result.stdout
    plain = run_cli("upgrade-schema", url)
    assert plain.returncode == 0, plain.stderr
    kinds = pg.query(url, "SELECT DISTINCT data_type FROM information_schema.columns WHERE "
                     "table_schema = 'public' AND column_name = 'experiment_id'")
    assert kinds == [("bigint",)]
    assert pg.query(url, "SELECT version_num FROM alembic_version")[0][0] == installed_head()
    big_id, trace_id = pg.query(
        url, "SELECT experiment_id, request_id FROM trace_info WHERE experiment_id > 2147483647 "
        "ORDER BY 1 LIMIT 1")[0]
    # psycopg 3 (SQLAlchemy 2.1's default driver) binds IDs as '%s::INTEGER', which fails for
    # large IDs whatever the column type: MLflow must reach a widened DB through psycopg2.
    mlflow.set_tracking_uri(_driver_url(url).replace("+psycopg:", "+psycopg2:"))
    try:
        client = MlflowClient()
        model = client.create_logged_model(experiment_id=str(big_id), name="after-upgrade")
        assert model.experiment_id == str(big_id)
        feedback = mlflow.log_feedback(trace_id=trace_id, name="ok", value=True)
        assert feedback.trace_id == trace_id
        assert int(client.create_experiment("next after widen")) > big_id
    finally:
        mlflow.set_tracking_uri(None)
        from mlflow.tracking._tracking_service.utils import _get_store

        _get_store.cache_clear() if hasattr(_get_store, "cache_clear") else None
    # a schema fs2sql did not widen is refused
    other = pg.new_db()
    migrate(str(small_id_store(tmp_path)), other)
    refused = run_cli("upgrade-schema", other)
    assert refused.returncode == 1 and "was not widened by fs2sql" in refused.stderr


# -- atomicity -------------------------------------------------------------------------------------
def _kill_during(args, wait_for, timeout=120, env=None):
    """Start ``fs2sql migrate``; kill -9 it once ``wait_for()`` is true; return its exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_fs2sql", "migrate", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})})
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if wait_for():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def _pg_activity(pg, url, like):
    rows = pg.query(PG_ADMIN, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    f"'fs2sql' AND datname = '{url.rsplit('/', 1)[1]}' AND query ILIKE '{like}'")
    return rows[0][0] > 0


@pytest.mark.parametrize("moment", ["schema", "copy", "verify"])
def test_kill_9_during_a_postgres_migration_leaves_an_empty_database(pg, moment, tmp_path):
    require_schema("assessments")
    # Each moment must last long enough for a poll to see it: the load and verify of a fixture
    # store are over in a blink, so those moments get a store heavy in metrics; a replayed
    # schema takes 0.3 s, so the schema moment runs MLflow's migrations themselves.
    store = (fixture_store("3.17.2", "full") if moment == "schema"
             else metric_heavy_store(tmp_path / "mlruns", points=5000))
    env = {"FS2SQL_NO_SCHEMA_CACHE": "1"} if moment == "schema" else {}
    url = pg.new_db()
    like = {"schema": "%%alembic%%", "copy": "COPY %%", "verify": "SELECT %%run_uuid%%"}[moment]
    code = _kill_during([str(store), url, "--experiment-ids", "renumber", "--verify"],
                        lambda: _pg_activity(pg, url, like), env=env)
    assert code == -signal.SIGKILL, f"fs2sql finished before reaching {moment}"
    time.sleep(0.5)  # the server notices the dead client and rolls back
    assert pg.tables(url) == []
    report = migrate(str(store), url, MigrateOptions(experiment_ids="renumber"))
    assert report.ok and verify(str(store), url).ok


def test_kill_9_during_a_mysql_migration_leaves_no_tables_and_a_rerun_works(my, tmp_path):
    # A load long enough for a poll to land in it (a fixture store's is over in a blink).
    store = metric_heavy_store(tmp_path / "mlruns", points=5000)
    url = my.new_db()
    name = url.rsplit("/", 1)[1]

    def loading():
        rows = my.query(MYSQL_ADMIN, "SELECT COUNT(*) FROM information_schema.TABLES WHERE "
                        f"TABLE_SCHEMA = 'fs2sql_stage_{name}' AND TABLE_NAME = 'runs'")
        return rows[0][0] > 0

    code = _kill_during([str(store), url, "--experiment-ids", "renumber", "--verify"], loading)
    assert code == -signal.SIGKILL
    assert my.tables(url) == []
    report = migrate(str(store), url, MigrateOptions(experiment_ids="renumber", verify=True))
    assert report.ok
    stages = my.query(MYSQL_ADMIN, f"SHOW DATABASES LIKE 'fs2sql_stage_{name}'")
    assert stages == []


def test_a_failure_during_the_load_leaves_the_database_as_it_was(server, tmp_path, monkeypatch):
    from mlflow_fs2sql.targets.mysql import MysqlTarget
    from mlflow_fs2sql.targets.postgresql import PostgresTarget

    cls = PostgresTarget if server.kind == "postgresql" else MysqlTarget
    real = cls.insert_many

    def failing(self, table, columns, rows):
        if table == "metrics":
            raise RuntimeError("disk on fire")
        return real(self, table, columns, rows)

    monkeypatch.setattr(cls, "insert_many", failing)
    url = server.new_db()
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate(str(small_id_store(tmp_path)), url)
    assert server.tables(url) == []
