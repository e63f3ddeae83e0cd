"""Regressions found by the sync oracle tests (``test_sync_oracle.py``), each on a tiny literal
store so that it runs in a second: the oracle found it with real MLflow writers; these pin the
rule."""

from __future__ import annotations

import os
import shutil
import time

from conftest import experiment_meta, query, run_meta, write_files

from mlflow_fs2sql.sync import SyncOptions, sync

RUN = "b" * 32


def test_gc_of_an_experiment_deleted_by_mlflow_1x_removes_its_runs(tmp_path):
    """MLflow <= 2.2 moved a deleted experiment to .trash without marking it or its runs
    deleted in their meta.yaml; ``mlflow gc`` then removes the folder, runs included. The next
    sync must remove them from the database too, as it does for runs marked deleted."""
    store = write_files(tmp_path / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        ".trash/1/meta.yaml": experiment_meta("1", "gone"),  # lifecycle_stage: active
        f".trash/1/{RUN}/meta.yaml": run_meta(RUN, "1"),  # active too
        f".trash/1/{RUN}/params/p": "x",
    })
    db = tmp_path / "team.db"
    sync([str(store)], str(db))
    assert query(db, "SELECT lifecycle_stage FROM experiments WHERE experiment_id = 1") == \
        [("deleted",)]
    assert query(db, "SELECT lifecycle_stage FROM runs") == [("active",)]
    shutil.rmtree(store / ".trash" / "1")  # what mlflow gc does
    report = sync([str(store)], str(db), SyncOptions())
    assert query(db, "SELECT run_uuid FROM runs") == []
    assert query(db, "SELECT experiment_id FROM experiments") == [(0,)]
    assert report.changes["runs"]["deleted"] == 1
    assert not any("never deleted in MLflow" in n for n in report.notes)


def _raw(db) -> dict:
    tables = [t for (t,) in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: sorted(map(repr, query(db, f'SELECT * FROM "{t}"'))) for t in tables}


def test_a_sync_with_nothing_new_leaves_the_database_and_its_state_as_they_were(tmp_path):
    store = write_files(tmp_path / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        f"0/{RUN}/meta.yaml": run_meta(RUN, "0"),
        f"0/{RUN}/metrics/loss": "1718000000100 0.5 0\n",
    })
    old = time.time() - 3600  # not "racily clean": the first sync trusts the signatures
    for path in store.rglob("*"):
        os.utime(path, (old, old))
    db = tmp_path / "team.db"
    sync([str(store)], str(db))
    before, mtime = _raw(db), os.stat(db).st_mtime_ns
    report = sync([str(store)], str(db))
    assert report.changed == 0 and report.sources[0]["units_changed"] == 0
    assert _raw(db) == before  # fs2sql_sources included (last sync, generation)
    assert os.stat(db).st_mtime_ns == mtime
    with open(store / "0" / RUN / "metrics" / "loss", "a") as f:  # and the next change syncs
        f.write("1718000000200 0.25 1\n")
    os.utime(store / "0" / RUN / "metrics" / "loss", (old + 1, old + 1))
    report = sync([str(store)], str(db))
    assert report.changes["metrics"]["inserted"] == 1
    assert query(db, "SELECT syncs, generation FROM fs2sql_sources") == [(2, 2)]
