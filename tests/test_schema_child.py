"""The empty SQLite schema is built by MLflow's migrations in a child process, so that fs2sql's
own process never imports MLflow's ORM and Alembic (about 90 MB it would keep for the whole
migration); a failure there is still one clear paragraph, with the child's traceback as its
cause for --verbose."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from mlflow_fs2sql import schema
from mlflow_fs2sql.errors import SchemaError


def test_the_schema_is_built_without_importing_mlflow_here(tmp_path):
    code = (
        "import json, sys\n"
        "from mlflow_fs2sql.schema import empty_sqlite_schema\n"
        "path, info = empty_sqlite_schema()\n"
        "print(json.dumps([path, info.revision,"
        " sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'alembic'))]))\n")
    env = dict(os.environ, FS2SQL_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    path, revision, imported = json.loads(out.splitlines()[-1])
    assert imported == []
    assert path.startswith(str(tmp_path / "cache"))
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == revision
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert {"experiments", "runs", "metrics", "latest_metrics", "params", "tags"} <= tables


def test_a_failed_build_is_one_paragraph_with_the_childs_traceback_as_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("FS2SQL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SchemaError) as info:
        schema.empty_sqlite_schema("0123456789ab")  # no such Alembic revision
    assert "MLflow's migrations failed" in str(info.value)
    assert "0123456789ab" in str(info.value)
    assert "Traceback" in str(info.value.__cause__)
    assert os.listdir(tmp_path / "cache" / "schemas") == []  # no half-built file is left


def test_a_child_that_dies_is_reported_too(tmp_path, monkeypatch):
    monkeypatch.setenv("FS2SQL_CACHE_DIR", str(tmp_path / "cache"))
    real_run = subprocess.run

    def dying(cmd, **kwargs):
        return real_run([sys.executable, "-c", "import sys; sys.exit('killed')"], **kwargs)

    monkeypatch.setattr(subprocess, "run", dying)
    with pytest.raises(SchemaError, match="ended without a schema .killed."):
        schema.empty_sqlite_schema("0123456789ab")


def test_a_folder_named_mlflow_where_fs2sql_runs_is_not_imported(tmp_path, monkeypatch):
    # ``python -m`` puts the working folder first on sys.path: a clone of MLflow's repository
    # (a folder ``mlflow``) there must not replace the installed MLflow in the child.
    work = tmp_path / "work"
    (work / "mlflow").mkdir(parents=True)
    (work / "mlflow" / "__init__.py").write_text("raise ImportError('the wrong mlflow')\n")
    monkeypatch.chdir(work)
    monkeypatch.setenv("FS2SQL_CACHE_DIR", "cache")  # relative: the child shares the folder
    path, info = schema.empty_sqlite_schema()
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == \
            info.revision
    finally:
        con.close()
