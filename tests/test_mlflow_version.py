"""--mlflow-version: a database for the user's own MLflow release.

Oracle: a 2.22.5-written store migrated with ``--mlflow-version 2.22.5`` is read by MLflow 2.22.5
itself (its own virtualenv): its SQL store must see what its FileStore sees, and its server must
start on the database. Plus the refusals and the release -> revision choice.
"""

import sqlite3

import pytest
from conftest import experiment_meta, fixture_store, run_meta, write_files
from test_oracle_core import _normalise_fs_run, _normalise_sql_run

from fixtures_gen.compare import diff_dumps
from fixtures_gen.versions import LATEST_2X
from mlflow_fs2sql.errors import SchemaError
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify
from mlflow_fs2sql.releases import revision_for


def test_release_to_revision():
    assert revision_for("2.22.5") == ("0584bdc529eb", "2.22.5")
    assert revision_for("2.22") == ("0584bdc529eb", "2.22.5")  # newest patch of the line
    assert revision_for("3.17.2")[0] == "dc11669786a5"
    assert revision_for("3.18") == ("f4a9b2c7d1e6", "3.18.0")
    with pytest.raises(SchemaError, match="does not know MLflow 9.0"):
        revision_for("9.0")
    with pytest.raises(SchemaError, match="not a version"):
        revision_for("latest")


def test_old_schema_gets_the_old_revision_and_columns(tiny_store, tmp_path):
    out = tmp_path / "o.db"
    report = migrate(str(tiny_store), str(out), MigrateOptions(mlflow_version="2.0.0"))
    assert report.revision == "97727af70f4d"
    assert report.opens_in == "MLflow 1.29.0 to 2.2.2 (10 releases)"
    con = sqlite3.connect(out)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [
        ("97727af70f4d",)]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "datasets" not in tables and "runs" in tables
    con.close()
    assert verify(str(tiny_store), str(out)).ok


def test_data_the_old_schema_cannot_hold_is_refused_with_counts(tmp_path):
    rid = "a" * 32
    store = write_files(tmp_path / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        f"0/{rid}/meta.yaml": run_meta(rid, "0", lifecycle_stage="deleted",
                                       deleted_time=1718000099000),
    })
    # runs.deleted_time came with MLflow 1.28 (0c779009ac13)
    with pytest.raises(SchemaError, match=r"runs.deleted_time: 1 values"):
        migrate(str(store), str(tmp_path / "o.db"), MigrateOptions(mlflow_version="1.27.0"))
    assert not (tmp_path / "o.db").exists()


@pytest.mark.oracle
@pytest.mark.slow
def test_mlflow_2x_reads_its_own_schema_back(tmp_path):
    from fixtures_gen.oracle import dump

    store = fixture_store(LATEST_2X, "full")
    out = tmp_path / "o.db"
    report = migrate(str(store), str(out), MigrateOptions(mlflow_version=LATEST_2X, verify=True))
    assert report.ok and report.revision == "0584bdc529eb"
    fs = dump(LATEST_2X, store.as_uri())
    sql = dump(LATEST_2X, f"sqlite:///{out}")
    assert fs["mlflow_version"] == sql["mlflow_version"] == LATEST_2X
    assert sql["stores"]["tracking"] == "SqlAlchemyStore"
    assert sql["experiments"] == fs["experiments"]
    sql_runs = {r["info"]["run_id"]: r for r in sql["runs"]}
    assert set(sql_runs) == {r["info"]["run_id"] for r in fs["runs"]}
    for fs_run in fs["runs"]:
        want = _normalise_fs_run(fs_run, store)
        got = _normalise_sql_run(sql_runs[fs_run["info"]["run_id"]], want.pop("_five"))
        for field in ("info", "params", "tags", "metric_history", "latest_metrics", "inputs"):
            assert got.get(field) == want.get(field), (fs_run["info"]["run_id"], field)
    for section in ("traces", "registered_models", "prompts"):
        assert section not in sql.get("unsupported", {}), sql["unsupported"]
    assert len(fs["traces"]) >= 1 and len(fs["registered_models"]) >= 1
    sections = ("traces", "registered_models", "prompts")
    diffs = diff_dumps({k: fs[k] for k in sections}, {k: sql[k] for k in sections})
    assert [d for d in diffs if not _known_store_difference(*d)] == []
    # ... and MLflow 2.22.5's own server starts on it without 'mlflow db upgrade'.
    from test_server import assert_server_lists_runs

    assert_server_lists_runs(LATEST_2X, out, fs, tmp_path)


def _known_store_difference(path, fs_value, sql_value) -> bool:
    """Differences between MLflow's two registry stores themselves, not the data:
    the FileStore reads alias targets as the file's text ('1'), the SQL store as the INTEGER
    column (1); the SQL store's version entities from search/latest carry no aliases."""
    if ".aliases." in path and str(fs_value) == str(sql_value):
        return True
    return path.endswith(".aliases") and sql_value == []
