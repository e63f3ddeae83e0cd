"""Every command against every wrong target, and what a script or a copy-paste gets back.

Wrong targets: an empty database, one holding other tables, half an MLflow schema, an unknown
Alembic revision, and a database fs2sql did not make (MLflow only initialised it) -- as SQLite
files and on PostgreSQL and MariaDB. Each is one paragraph saying what the target holds and the
command that makes an MLflow database, exit 1 (never "failed unexpectedly"). Also: ``--json``
on failures, one stderr line under ``-q``, SOURCE pointing inside a store, the start command's
password placeholder, MariaDB privileges, and output that never breaks a path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import experiment_meta, run_meta, write_files
from servers import MYSQL_ADMIN, _engine

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "mlflow_fs2sql" / "data" / "example-mlruns"


def fs2sql(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mlflow_fs2sql", *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, **kwargs)


def _store(tmp_path: Path) -> Path:
    rid = "a" * 32
    return write_files(tmp_path / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        f"0/{rid}/meta.yaml": run_meta(rid, "0"),
        f"0/{rid}/params/lr": "0.1",
    })


def _assert_one_paragraph(result, *must):
    assert result.returncode == 1, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("Error: ") and err.count("\n") == 0, err
    assert "unexpectedly" not in err and "Traceback" not in err
    for text in must:
        assert text in err, (text, err)
    return err


def _sqlite(path: Path, *statements) -> Path:
    con = sqlite3.connect(path)
    for sql in statements:
        con.execute(sql)
    con.commit()
    con.close()
    return path


# -- SQLite ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("statements, holds", [
    (("CREATE TABLE t (x)", "DROP TABLE t"), "holds no tables: it is an empty database"),
    (("CREATE TABLE customers (x)",), "holds 1 table but no MLflow schema (customers)"),
    (("CREATE TABLE alembic_version (version_num TEXT)", "CREATE TABLE experiments (x)"),
     "the tables runs are missing"),
])
def test_verify_on_sqlite_that_is_no_mlflow_database(tmp_path, statements, holds):
    db = _sqlite(tmp_path / "x.db", *statements)
    store = _store(tmp_path)
    result = fs2sql("verify", str(store), str(db))
    _assert_one_paragraph(result, str(db), holds, f"fs2sql migrate {store} {db}")


def test_verify_on_an_empty_alembic_version(tmp_path):
    store = _store(tmp_path)
    db = tmp_path / "o.db"
    assert fs2sql("migrate", str(store), str(db), "-q").returncode == 0
    _sqlite(db, "DELETE FROM alembic_version")
    _assert_one_paragraph(fs2sql("verify", str(store), str(db)), "no Alembic revision")


def test_verify_on_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("hello")
    _assert_one_paragraph(fs2sql("verify", str(_store(tmp_path)), str(bad)),
                          "not an SQLite database", "fs2sql migrate")


def test_verify_warns_about_an_unknown_revision_but_compares(tmp_path):
    store = _store(tmp_path)
    db = tmp_path / "o.db"
    assert fs2sql("migrate", str(store), str(db), "-q").returncode == 0
    _sqlite(db, "UPDATE alembic_version SET version_num = 'abcdef123456'")
    result = fs2sql("verify", str(store), str(db))
    assert result.returncode == 0, result.stderr
    assert "Warning: the database's Alembic revision abcdef123456 is unknown" in result.stdout


def test_verify_on_a_database_mlflow_only_initialised(tmp_path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = _store(tmp_path)
    db = tmp_path / "init.db"
    SqlAlchemyStore(f"sqlite:///{db}", str(tmp_path / "art")).engine.dispose()
    result = fs2sql("verify", str(store), str(db))
    assert result.returncode == 3
    assert "holds no runs and at most MLflow's Default experiment" in result.stdout
    assert f"fs2sql migrate {store} {db}" in result.stdout
    quiet = fs2sql("verify", str(store), str(db), "-q")  # -q still says why it failed
    assert quiet.returncode == 3 and quiet.stdout == ""
    line = quiet.stderr.strip()
    assert line.startswith("Verification FAILED: ") and "\n" not in line
    assert "differences between the store and the database (exit 3)" in line


def test_quiet_verify_of_an_equal_database_prints_nothing(tmp_path):
    store = _store(tmp_path)
    db = tmp_path / "o.db"
    assert fs2sql("migrate", str(store), str(db), "-q").returncode == 0
    result = fs2sql("verify", str(store), str(db), "-q")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# -- --json on failures ---------------------------------------------------------------------------
def test_json_report_of_a_failure(tmp_path):
    db = _sqlite(tmp_path / "x.db", "CREATE TABLE customers (x)")
    out = tmp_path / "r.json"
    result = fs2sql("verify", str(_store(tmp_path)), str(db), "--json", str(out))
    err = _assert_one_paragraph(result)
    report = json.loads(out.read_text())
    assert report["fs2sql_report"] == 1 and report["command"] == "verify"
    assert report["ok"] is False and report["exit_code"] == 1 and report["kinds"] == []
    assert report["error"]["type"] == "TargetError"
    assert err == "Error: " + report["error"]["message"]
    assert report["error"]["hint"].startswith("Make one from the store with: fs2sql migrate")
    assert report["error"]["path"] == str(db)
    to_stdout = fs2sql("verify", str(_store(tmp_path / "b")), str(db), "--json", "-")
    assert to_stdout.returncode == 1 and json.loads(to_stdout.stdout)["exit_code"] == 1


def test_json_report_of_a_failure_never_shows_the_password(tmp_path):
    out = tmp_path / "r.json"
    result = fs2sql("migrate", str(_store(tmp_path)), "postgresql://u:hunter2@127.0.0.1:1/db",
                    "--json", str(out))
    assert result.returncode == 1
    report = json.loads(out.read_text())
    assert report["target"] == "postgresql://u:***@127.0.0.1:1/db"
    assert "no PostgreSQL server answers" in report["error"]["message"]
    assert "hunter2" not in out.read_text() + result.stderr


def test_json_of_a_successful_run_has_no_error(tmp_path):
    out = tmp_path / "r.json"
    assert fs2sql("migrate", str(_store(tmp_path)), str(tmp_path / "o.db"), "--json", str(out),
                  "-q").returncode == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["error"] is None and report["kinds"]


# -- SOURCE inside a store ------------------------------------------------------------------------
@pytest.mark.parametrize("inside, what", [
    ("955436576289587369", "an experiment folder (experiment 955436576289587369, 'demo-churn')"),
    ("955436576289587369/53a48a3e84f345e4b9b7342b0bbfde66",
     "a run folder (run 53a48a3e84f345e4b9b7342b0bbfde66)"),
    ("models/churn-classifier", "a registered model folder ('churn-classifier')"),
    ("models/churn-classifier/version-1", "a model version folder ('churn-classifier' 1)"),
])
def test_a_folder_inside_a_store_names_the_store(tmp_path, inside, what):
    result = fs2sql("migrate", "--dry-run", str(EXAMPLE / inside), str(tmp_path / "o.db"))
    _assert_one_paragraph(result, f"is {what} inside an MLflow FileStore",
                          f"Give the store that contains it ({EXAMPLE})")
    assert "is not a number" not in result.stderr


# -- output a user copies -------------------------------------------------------------------------
def test_piped_output_never_breaks_a_path_or_the_title(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "and-another-one"
    store = _store(deep)
    db = deep / "out.db"
    dry = fs2sql("migrate", "--dry-run", str(store), str(db))  # piped: Rich assumes 80 columns
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "fs2sql migrate (dry run: nothing written)"
    assert f"Source: {store}" in lines and len(str(store)) > 80
    real = fs2sql("migrate", str(store), str(db))
    assert f"Target: {db}" in real.stdout.splitlines()
    assert real.stdout.splitlines()[-1] == (
        f"Start MLflow on it: mlflow server --backend-store-uri sqlite:///{db}")


def test_the_overwrite_prompt_counts_with_separators(tmp_path):
    from mlflow_fs2sql.targets.sqlite import describe_sqlite_file

    db = _sqlite(tmp_path / "x.db", "CREATE TABLE experiments (id)", "CREATE TABLE runs (id)",
                 "INSERT INTO experiments VALUES (0)",
                 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)"
                 " INSERT INTO runs SELECT i FROM n")
    assert describe_sqlite_file(str(db)) == "an MLflow database with 1 experiment and 1,000 runs"


def test_the_bar_names_the_phase_after_the_last_run():
    import io

    from rich.console import Console

    from mlflow_fs2sql.report import RichProgress

    progress = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=100))
    progress.start("Migrating runs", 3)
    progress.advance(3)
    progress.start("Building indexes and checking keys", None)
    (task,) = progress._progress.tasks
    assert task.description == "Building indexes and checking keys" and task.total is None
    progress.start("Verifying runs", 3)
    (task,) = progress._progress.tasks
    assert (task.description, task.total, task.completed) == ("Verifying runs", 3, 0)
    progress.stop()


def test_the_start_command_with_a_password_works_when_pasted():
    """The password is never shown: the command names $MLFLOW_DB_PASSWORD, and a shell that has
    it set expands the command to the real URL."""
    from mlflow_fs2sql.targets import open_target

    url = "postgresql://alice:p%40ss%3Aword@db.example:5432/mlflow"
    command = open_target(url).start_command()
    assert "p%40ss" not in command and "${MLFLOW_DB_PASSWORD}" in command
    assert command.startswith("mlflow server --backend-store-uri \"postgresql+psycopg2://")
    shown = subprocess.run(["sh", "-c", "printf %s " + command.split(" ", 3)[3]],
                           env={"MLFLOW_DB_PASSWORD": "p%40ss%3Aword", "PATH": os.defpath},
                           capture_output=True, text=True, check=True).stdout
    assert shown == "postgresql+psycopg2://alice:p%40ss%3Aword@db.example:5432/mlflow"
    plain = open_target("postgresql://alice@db.example/mlflow").start_command()
    assert plain == "mlflow server --backend-store-uri 'postgresql+psycopg2://alice@db.example/mlflow'"


# -- servers --------------------------------------------------------------------------------------
def _plain(url: str, *statements) -> str:
    engine = _engine(url)
    with engine.connect() as conn:
        for sql in statements:
            conn.exec_driver_sql(sql)
    engine.dispose()
    return url


@pytest.mark.slow
def test_every_command_on_wrong_server_databases(server, tmp_path):
    store = _store(tmp_path)
    empty = server.new_db()
    foreign = _plain(server.new_db(), "CREATE TABLE customers (x INT)")
    for url, holds in ((empty, "holds no tables"), (foreign, "holds 1 table but no MLflow")):
        _assert_one_paragraph(fs2sql("verify", str(store), url), holds,
                              f"fs2sql migrate {store} {url}")
        if server.kind == "postgresql":
            _assert_one_paragraph(fs2sql("upgrade-schema", url), "holds no MLflow schema",
                                  "fs2sql migrate ./mlruns URL --experiment-ids widen")
    _assert_one_paragraph(fs2sql("migrate", str(store), foreign),
                          "1 table that is not an MLflow schema (customers)")
    unknown = server.new_db()
    assert fs2sql("migrate", str(store), unknown, "-q").returncode == 0
    _plain(unknown, "UPDATE alembic_version SET version_num = 'abcdef123456'")
    checked = fs2sql("verify", str(store), unknown)
    assert checked.returncode == 0 and "abcdef123456 is unknown to fs2sql" in checked.stdout
    again = server.new_db()
    assert fs2sql("migrate", str(store), again, "-q").returncode == 0
    _plain(again, "UPDATE alembic_version SET version_num = 'abcdef123456'")
    _assert_one_paragraph(fs2sql("migrate", str(store), again), "'abcdef123456'",
                          "pipx inject --force fs2sql 'mlflow-skinny==X.Y.Z'")


def test_a_privilege_error_is_not_called_a_login_failure():
    from pymysql.err import OperationalError

    from mlflow_fs2sql.targets.server import connection_error, parse_server_url

    parsed = parse_server_url("mysql://bob:pw@db.example/mlflow")
    denied = OperationalError(1044, "Access denied for user 'bob'@'%' to database "
                                    "'fs2sql_old_mlflow'")
    error = connection_error(denied, parsed, "read the database").paragraph()
    assert "refused the login" not in error
    assert "lacks a privilege on the database 'fs2sql_old_mlflow'" in error
    for name in ("mlflow", "fs2sql_stage_mlflow", "fs2sql_old_mlflow"):
        assert f"GRANT ALL PRIVILEGES ON `{name}`.* TO 'bob'@'%';" in error
    login = OperationalError(1045, "Access denied for user 'bob'@'%' (using password: YES)")
    assert "refused the login" in connection_error(login, parsed).paragraph()


@pytest.mark.slow
def test_mariadb_user_with_the_documented_grants(my, tmp_path):
    """A user granted ALL on the target and its fs2sql_stage_ database migrates into an empty
    database; into one MLflow initialised it also needs fs2sql_old_ (its own message, with the
    GRANT); with the README's three GRANTs it works."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from mlflow_fs2sql.targets.server import mysql_grants, parse_server_url

    store = _store(tmp_path)
    user = f"fs2sql_gr_{uuid.uuid4().hex[:6]}"
    empty, initialised = my.new_db(), my.new_db()
    SqlAlchemyStore(parse_server_url(initialised).url.render_as_string(hide_password=False),
                    str(tmp_path / "art")).engine.dispose()
    admin = _engine(MYSQL_ADMIN)
    as_user = {u: u.replace("root@", f"{user}:pw@", 1) for u in (empty, initialised)}
    try:
        with admin.connect() as conn:
            for host in ("%", "localhost"):
                conn.exec_driver_sql("CREATE USER %s@%s IDENTIFIED BY 'pw'", (user, host))
                for url in (empty, initialised):
                    name = url.rsplit("/", 1)[1]
                    for db in (name, f"fs2sql_stage_{name}"):
                        conn.exec_driver_sql(f"GRANT ALL ON `{db}`.* TO %s@%s", (user, host))
        ok = fs2sql("migrate", str(store), as_user[empty], "--verify", "-q")
        assert ok.returncode == 0, ok.stderr
        refused = fs2sql("migrate", str(store), as_user[initialised])
        name = initialised.rsplit("/", 1)[1]
        _assert_one_paragraph(refused, f"may not create 'fs2sql_old_{name}'",
                              f"GRANT ALL PRIVILEGES ON `fs2sql_old_{name}`.* TO '{user}'@'%';")
        assert "refused the login" not in refused.stderr
        with admin.connect() as conn:
            for grant in mysql_grants(parse_server_url(as_user[initialised])):
                conn.exec_driver_sql(grant.rstrip(";").replace("%", "%%"))
        works = fs2sql("migrate", str(store), as_user[initialised], "--verify", "-q")
        assert works.returncode == 0, works.stderr
    finally:
        with admin.connect() as conn:
            for host in ("%", "localhost"):
                conn.exec_driver_sql("DROP USER IF EXISTS %s@%s", (user, host))
        admin.dispose()
