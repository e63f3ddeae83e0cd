"""fs2sql sync on small literal stores (SQLite): change detection, the merge rules, removals,
several sources, and idempotence -- a store synced after any edits equals a migration of it.

Oracle tests with real MLflow writers and servers are in test_sync_oracle.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time

import pytest
from conftest import cli_runner, experiment_meta, run_meta, write_files

from mlflow_fs2sql.cli import app
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify
from mlflow_fs2sql.sync import SyncOptions, sync

RID = ["%032x" % (0xA0 + i) for i in range(10)]
runner = cli_runner()


def dump(db) -> dict:
    """Every MLflow table's rows (the fs2sql_* state tables left out), sorted."""
    con = sqlite3.connect(str(db))
    try:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'fs2sql_%' "
            "AND name NOT LIKE 'sqlite_%'")]
        return {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"'))) for t in names}
    finally:
        con.close()


def q(db, sql, *args):
    con = sqlite3.connect(str(db))
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def old(path, seconds=30):
    """Date files back, as a store written a while ago (fresh files are 'racy')."""
    t = time.time() - seconds
    for dirpath, _, files in os.walk(path):
        for f in files:
            os.utime(os.path.join(dirpath, f), (t, t))


def store(root, runs=2, exp="1", name="exp", points=3):
    files = {"0/meta.yaml": experiment_meta("0", "Default"),
             f"{exp}/meta.yaml": experiment_meta(exp, name)}
    for i in range(runs):
        rid = RID[i]
        files[f"{exp}/{rid}/meta.yaml"] = run_meta(rid, exp, run_name=f"r{i}")
        files[f"{exp}/{rid}/params/lr"] = str(i)
        files[f"{exp}/{rid}/tags/t"] = "v"
        files[f"{exp}/{rid}/metrics/loss"] = "".join(f"{1000 + s} {s * 0.5} {s}\n"
                                                     for s in range(points))
    write_files(root, files)
    old(root)
    return root


def run_sync(*sources, target, **kw):
    report = sync([str(s) for s in sources], str(target), SyncOptions(**kw))
    assert report.ok, report.mismatches
    return report


def migrated(src, tmp_path, name="m.db"):
    out = tmp_path / name
    if out.exists():
        out.unlink()
    migrate(str(src), str(out), MigrateOptions())
    return dump(out)


def edit(path, text, append=False):
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write(text)
    old(path, 10)


# -- the first sync and no-change syncs -----------------------------------------------------------
def test_first_sync_is_a_migration_and_records_state(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    report = run_sync(src, target=db)
    assert report.changes["runs"]["inserted"] == 2
    assert dump(db) == migrated(src, tmp_path)
    assert q(db, "SELECT COUNT(*) FROM fs2sql_units")[0][0] == 2 + 2  # 2 experiments, 2 runs
    assert verify(str(src), str(db)).ok


def test_a_sync_with_nothing_new_reads_nothing_and_writes_nothing(tmp_path, monkeypatch):
    from mlflow_fs2sql import walk

    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    before = dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")
    read = []
    real = walk.Walk._read_run
    monkeypatch.setattr(walk.Walk, "_read_run", lambda self, u, e, p, *a, **kw:
                        read.append(p) or real(self, u, e, p, *a, **kw))
    report = run_sync(src, target=db)
    assert read == []  # the quick check declined every run
    assert report.changed == 0 and report.conflicts == []
    assert (dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")) == before
    data = report.to_dict()
    assert all(k["inserted"] == k["updated"] == k["deleted"] == 0 for k in data["kinds"])
    result = runner.invoke(app, ["sync", str(src), str(db)])
    assert result.exit_code == 0
    assert result.stdout.strip().startswith("Up to date: nothing to change in")
    assert len(result.stdout.strip().splitlines()) == 1


def test_files_written_just_now_are_read_again_next_time(tmp_path, monkeypatch):
    """A file changed within the clock tick of the scan cannot be trusted by size and mtime
    (git's 'racily clean'): its unit is read again by the next sync."""
    from mlflow_fs2sql import walk

    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    tag = src / "1" / RID[0] / "tags" / "t"
    tag.write_text("v2")  # now: racy
    run_sync(src, target=db)
    assert q(db, "SELECT value FROM tags WHERE run_uuid=? AND key='t'", RID[0]) == [("v2",)]
    read = []
    real = walk.Walk._read_run
    monkeypatch.setattr(walk.Walk, "_read_run", lambda self, u, e, p, *a, **kw:
                        read.append(p) or real(self, u, e, p, *a, **kw))
    run_sync(src, target=db)
    assert read == [str(src / "1" / RID[0])]


# -- what changes in a store ---------------------------------------------------------------------
def test_appended_points_go_in_without_rewriting_the_history(tmp_path, monkeypatch):
    from mlflow_fs2sql import parse

    src = store(tmp_path / "mlruns", points=1000)
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    rowids = q(db, "SELECT rowid, step FROM metrics WHERE run_uuid=? ORDER BY step", RID[0])
    edit(src / "1" / RID[0] / "metrics" / "loss", "5000 9.5 1000\n5001 0.25 1001\n", append=True)
    parsed = []
    real = parse.parse_metric_lines
    monkeypatch.setattr("mlflow_fs2sql.walk.parse_metric_lines",
                        lambda data, *a: parsed.append(len(data)) or real(data, *a))
    report = run_sync(src, target=db)
    assert report.changes["metrics"]["inserted"] == 2
    assert parsed == [len(b"5000 9.5 1000\n5001 0.25 1001\n")]  # only the new lines
    assert q(db, "SELECT rowid, step FROM metrics WHERE run_uuid=? AND step < 1000 "
             "ORDER BY step", RID[0]) == rowids
    assert q(db, "SELECT step, value FROM latest_metrics WHERE run_uuid=?", RID[0]) == \
        [(1001, 0.25)]
    assert dump(db) == migrated(src, tmp_path)


def test_a_rewritten_metric_file_is_read_again_whole(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    edit(src / "1" / RID[0] / "metrics" / "loss", "1000 7.0 0\n1001 8.0 1\n1002 9.0 2\n3 1 3\n")
    run_sync(src, target=db)
    points = q(db, "SELECT step, value FROM metrics WHERE run_uuid=? ORDER BY step, value",
               RID[0])
    # The new points are in; points no longer in the file stay (the server may have logged
    # them): the history is never deleted by a sync.
    assert (0, 7.0) in points and (3, 1.0) in points and (0, 0.0) in points


def test_run_lifecycle_rename_and_tags_follow_the_store(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    run = src / "1" / RID[0]
    edit(run / "meta.yaml", run_meta(RID[0], "1", run_name="renamed", status=4,
                                     lifecycle_stage="deleted", deleted_time=1718000099000))
    (run / "tags" / "t").unlink()
    edit(run / "tags" / "new", "x")
    store_2 = src / "1" / RID[5]
    write_files(src, {f"1/{RID[5]}/meta.yaml": run_meta(RID[5], "1"),
                      f"1/{RID[5]}/metrics/acc": "1 0.5 0\n"})
    old(store_2)
    report = run_sync(src, target=db)
    assert report.changes["runs"] == {"inserted": 1, "updated": 1, "deleted": 0}
    assert report.changes["tags"] == {"inserted": 1, "updated": 0, "deleted": 1}
    assert dump(db) == migrated(src, tmp_path)
    assert verify(str(src), str(db)).ok


def test_experiment_renamed_deleted_and_restored(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    edit(src / "1" / "meta.yaml", experiment_meta("1", "renamed"))
    (src / ".trash").mkdir()
    shutil.move(str(src / "1"), str(src / ".trash" / "1"))
    run_sync(src, target=db)
    assert q(db, "SELECT name, lifecycle_stage FROM experiments WHERE experiment_id=1") == \
        [("renamed", "deleted")]
    assert dump(db) == migrated(src, tmp_path)
    shutil.move(str(src / ".trash" / "1"), str(src / "1"))
    run_sync(src, target=db)
    assert q(db, "SELECT lifecycle_stage FROM experiments WHERE experiment_id=1") == \
        [("active",)]
    assert dump(db) == migrated(src, tmp_path)


# -- the server writes too ------------------------------------------------------------------------
def server_write(db, *statements):
    con = sqlite3.connect(str(db))
    try:
        for sql, args in statements:
            con.execute(sql, args)
        con.commit()
    finally:
        con.close()


def test_what_the_server_wrote_is_never_deleted_or_overwritten(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    server_write(db, ("INSERT INTO tags (key, value, run_uuid) VALUES ('ui', 'note', ?)", (RID[0],)),
                 ("UPDATE tags SET value='from ui' WHERE run_uuid=? AND key='t'", (RID[1],)),
                 ("INSERT INTO experiments (experiment_id, name, lifecycle_stage, "
                  "artifact_location, creation_time, last_update_time) VALUES "
                  "(7, 'made in the UI', 'active', 'x', 1, 1)", ()))
    edit(src / "1" / RID[0] / "tags" / "t", "store-changed")
    report = run_sync(src, target=db)
    assert report.conflicts == []
    assert q(db, "SELECT key, value FROM tags WHERE run_uuid=? ORDER BY key", RID[0]) == \
        [("mlflow.runName", "r0"), ("t", "store-changed"), ("ui", "note")] or \
        q(db, "SELECT key, value FROM tags WHERE run_uuid=? AND key IN ('t','ui') ORDER BY key",
          RID[0]) == [("t", "store-changed"), ("ui", "note")]
    assert q(db, "SELECT value FROM tags WHERE run_uuid=? AND key='t'", RID[1]) == [("from ui",)]
    assert q(db, "SELECT name FROM experiments WHERE experiment_id=7") == [("made in the UI",)]
    result = verify(str(src), str(db))
    assert result.ok and result.listed
    assert any("written by the server" in k for k in result.listed)
    strict = verify(str(src), str(db), strict=True)
    assert not strict.ok


def test_a_field_changed_on_both_sides_keeps_the_database_value_and_says_so(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    server_write(db, ("UPDATE runs SET name='ui name' WHERE run_uuid=?", (RID[0],)))
    # the store renames it too, and finishes it: status is not a conflict, the name is
    edit(src / "1" / RID[0] / "meta.yaml", run_meta(RID[0], "1", run_name="store name",
                                                    status=4))
    report = run_sync(src, target=db)
    assert q(db, "SELECT name, status FROM runs WHERE run_uuid=?", RID[0]) == \
        [("ui name", "FAILED")]
    assert len(report.conflicts) == 1
    assert "'ui name'" in report.conflicts[0] and "'store name'" in report.conflicts[0]
    again = run_sync(src, target=db)  # reported once, not at every sync
    assert again.conflicts == [] and again.changed == 0


def test_a_tag_the_store_deleted_but_the_server_changed_is_kept(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    server_write(db, ("UPDATE tags SET value='ui' WHERE run_uuid=? AND key='t'", (RID[0],)))
    (src / "1" / RID[0] / "tags" / "t").unlink()
    (src / "1" / RID[1] / "tags" / "t").unlink()
    old(src)
    report = run_sync(src, target=db)
    assert q(db, "SELECT value FROM tags WHERE run_uuid=? AND key='t'", RID[0]) == [("ui",)]
    assert q(db, "SELECT value FROM tags WHERE run_uuid=? AND key='t'", RID[1]) == []
    assert len(report.conflicts) == 1 and "removed from the source" in report.conflicts[0]


# -- removals ------------------------------------------------------------------------------------
def test_gc_removes_deleted_runs_but_a_vanished_active_run_stays(tmp_path):
    src = store(tmp_path / "mlruns", runs=3)
    db = tmp_path / "t.db"
    edit(src / "1" / RID[0] / "meta.yaml", run_meta(RID[0], "1", lifecycle_stage="deleted",
                                                    deleted_time=1718000099000))
    run_sync(src, target=db)
    shutil.rmtree(src / "1" / RID[0])  # mlflow gc
    shutil.rmtree(src / "1" / RID[1])  # a scratch purge: never deleted in MLflow
    report = run_sync(src, target=db)
    assert q(db, "SELECT run_uuid FROM runs ORDER BY run_uuid") == [(RID[1],), (RID[2],)]
    assert q(db, "SELECT COUNT(*) FROM metrics WHERE run_uuid=?", RID[0]) == [(0,)]
    assert any("never deleted in MLflow" in n for n in report.notes)


# -- stores being written right now -----------------------------------------------------------
def test_a_run_caught_mid_rewrite_waits_for_the_next_sync(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    (src / "1" / RID[0] / "meta.yaml").write_text("")  # truncated by MLflow, just now
    report = run_sync(src, target=db)
    assert report.ok and not report.skipped
    assert any("being written" in n for n in report.notes)
    assert q(db, "SELECT COUNT(*) FROM runs")[0][0] == 2  # neither broken nor removed
    edit(src / "1" / RID[0] / "meta.yaml", run_meta(RID[0], "1", run_name="done"))
    run_sync(src, target=db)
    assert q(db, "SELECT name FROM runs WHERE run_uuid=?", RID[0]) == [("done",)]


def test_the_last_metric_line_of_a_running_run_waits_for_its_newline(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    meta = src / "1" / RID[0] / "meta.yaml"
    edit(meta, run_meta(RID[0], "1", status=1, end_time=None))
    run_sync(src, target=db)
    loss = src / "1" / RID[0] / "metrics" / "loss"
    edit(loss, "2000 1.5 3\n2001 2.", append=True)
    run_sync(src, target=db)
    assert q(db, "SELECT MAX(step) FROM metrics WHERE run_uuid=?", RID[0]) == [(3,)]
    edit(loss, "5 4\n", append=True)
    run_sync(src, target=db)
    assert q(db, "SELECT step, value FROM metrics WHERE run_uuid=? AND step=4", RID[0]) == \
        [(4, 2.5)]


# -- several sources -----------------------------------------------------------------------------
def test_two_stores_merge_experiments_by_name_and_renumber_colliding_ids(tmp_path):
    a = store(tmp_path / "a" / "mlruns", runs=2, exp="1", name="shared")
    b = tmp_path / "b" / "mlruns"
    write_files(b, {"0/meta.yaml": experiment_meta("0", "Default"),
                    "1/meta.yaml": experiment_meta("1", "only-b"),
                    "2/meta.yaml": experiment_meta("2", "shared"),
                    f"1/{RID[7]}/meta.yaml": run_meta(RID[7], "1"),
                    f"2/{RID[8]}/meta.yaml": run_meta(RID[8], "2")})
    old(b)
    db = tmp_path / "t.db"
    report = run_sync(a, b, target=db)
    exps = dict(q(db, "SELECT name, experiment_id FROM experiments"))
    assert set(exps) == {"Default", "shared", "only-b"}
    assert exps["only-b"] not in (0, 1)  # 1 was taken by store a's "shared"
    assert q(db, "SELECT experiment_id FROM runs WHERE run_uuid=?", RID[8]) == \
        [(exps["shared"],)]
    assert q(db, "SELECT experiment_id FROM runs WHERE run_uuid=?", RID[7]) == \
        [(exps["only-b"],)]
    tags = dict(q(db, "SELECT key, value FROM experiment_tags WHERE experiment_id=?",
                  exps["only-b"]))
    assert tags["fs2sql.source_experiment_id"] == "1" and "fs2sql.source_store" in tags
    assert any("joined" in n for n in report.notes)
    first = dump(db)
    assert run_sync(a, b, target=db).changed == 0
    assert dump(db) == first
    assert verify([str(a), str(b)], str(db)).ok


def _store_sharing_a_run(a, root, own=(3, 4, 5)):
    """A store of its own (three runs) that also holds a copy of store a's first run."""
    store(root, runs=0)
    for i in own:
        write_files(root, {f"1/{RID[i]}/meta.yaml": run_meta(RID[i], "1")})
    shutil.copytree(a / "1" / RID[0], root / "1" / RID[0])
    old(root)
    return root


def test_one_run_in_two_stores(tmp_path):
    a = store(tmp_path / "a" / "mlruns", runs=2)
    b = _store_sharing_a_run(a, tmp_path / "b" / "mlruns")
    db = tmp_path / "t.db"
    report = run_sync(a, b, target=db)  # identical: one run
    assert len({s["source_id"] for s in report.sources}) == 2
    assert q(db, "SELECT COUNT(*) FROM runs")[0][0] == 5
    c = _store_sharing_a_run(a, tmp_path / "c" / "mlruns", own=(6, 7, 8))
    edit(c / "1" / RID[0] / "params" / "lr", "999")
    result = runner.invoke(app, ["sync", str(c), str(db)])
    assert result.exit_code == 1, result.output
    assert str(c / "1" / RID[0]) in result.stderr and "another source" in result.stderr
    skipped = sync([str(c)], str(db), SyncOptions(skip_invalid=True))
    assert skipped.exit_code == 4 and skipped.skipped
    assert q(db, "SELECT value FROM params WHERE run_uuid=?", RID[0]) == [("0",)]


def test_two_copies_of_one_store_in_one_sync_are_refused(tmp_path):
    a = store(tmp_path / "a" / "mlruns")
    db = tmp_path / "t.db"
    run_sync(a, target=db)
    b = tmp_path / "b" / "mlruns"
    shutil.copytree(a, b)
    result = runner.invoke(app, ["sync", str(a), str(b), str(db)])
    assert result.exit_code == 1 and "same store as another SOURCE" in result.stderr


def test_a_moved_store_is_the_same_source(tmp_path):
    src = store(tmp_path / "here" / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    before = dump(db)
    moved = tmp_path / "there" / "mlruns"
    shutil.copytree(src, moved)  # new inodes and mtimes: read again, nothing added
    report = run_sync(moved, target=db)
    assert report.changed == 0 and dump(db) == before
    assert q(db, "SELECT COUNT(*) FROM fs2sql_sources")[0][0] == 1
    assert any("recognised by its runs" in n for n in report.notes)


def test_rename_conflicts_keeps_a_deleted_experiment_named_like_an_active_one(tmp_path):
    a = store(tmp_path / "a" / "mlruns", name="same")
    b = tmp_path / "b" / "mlruns"
    write_files(b, {"0/meta.yaml": experiment_meta("0", "Default"),
                    ".trash/5/meta.yaml": experiment_meta("5", "same",
                                                          lifecycle_stage="deleted"),
                    f".trash/5/{RID[9]}/meta.yaml": run_meta(RID[9], "5",
                                                             lifecycle_stage="deleted")})
    old(b)
    db = tmp_path / "t.db"
    run_sync(a, target=db)
    refused = runner.invoke(app, ["sync", str(b), str(db)])
    assert refused.exit_code == 1 and "--rename-conflicts" in refused.stderr
    report = run_sync(b, target=db, rename_conflicts=True)
    assert q(db, "SELECT lifecycle_stage FROM experiments WHERE name = 'same (deleted, from 5)'"
             ) == [("deleted",)]
    assert any("--rename-conflicts" in n for n in report.notes)
    assert run_sync(b, target=db, rename_conflicts=True).changed == 0


# -- safety ----------------------------------------------------------------------------------------
def test_dry_run_changes_nothing_and_counts_what_would_change(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    before = dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")
    edit(src / "1" / RID[0] / "tags" / "t", "changed")
    report = run_sync(src, target=db, dry_run=True)
    assert report.changes["tags"]["updated"] == 1
    assert (dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")) == before


def test_a_failing_sync_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    from mlflow_fs2sql.sync import commit

    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    before = dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")
    edit(src / "1" / RID[0] / "tags" / "t", "changed")
    monkeypatch.setattr(commit, "_remove", lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        sync([str(src)], str(db), SyncOptions())
    assert (dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")) == before


def test_sync_refuses_a_database_at_a_revision_it_does_not_know(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    run_sync(src, target=db)
    server_write(db, ("UPDATE alembic_version SET version_num='ffffffffffff'", ()))
    result = runner.invoke(app, ["sync", str(src), str(db)])
    assert result.exit_code == 1
    assert "'ffffffffffff'" in result.stderr and "pipx inject" in result.stderr


def test_json_report_of_a_sync(tmp_path):
    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    result = runner.invoke(app, ["sync", str(src), str(db), "--json", "-"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["command"] == "sync" and data["changed_rows"] > 0
    runs = next(k for k in data["kinds"] if k["table"] == "runs")
    assert runs["inserted"] == 2
    assert data["sources"][0]["first_sync"] is True


# -- idempotence as a property --------------------------------------------------------------------
def _ops():
    from hypothesis import strategies as st

    op = st.sampled_from(["new_run", "append", "set_tag", "delete_tag", "finish", "rename",
                          "delete_run", "restore_run", "gc", "rename_exp", "trash_exp",
                          "restore_exp", "new_exp", "server_tag", "server_run", "sync"])
    return st.lists(st.tuples(op, st.integers(0, 9), st.integers(0, 3)), min_size=1,
                    max_size=14)


class _Store:
    """A FileStore edited the way MLflow edits one (files rewritten in place, appended, moved
    to .trash and back, removed by gc)."""

    def __init__(self, root):
        self.root = root
        self.n = 0
        # Runs a sync saw deleted: only they may be gc'ed. A run removed before any sync saw
        # it deleted stays in the database (a store that lost files; test_gc_removes_...).
        self.synced_deleted = set()
        write_files(root, {"0/meta.yaml": experiment_meta("0", "Default"),
                           "1/meta.yaml": experiment_meta("1", "one")})
        old(root)

    def exp_dir(self, eid):
        for base in (self.root, self.root / ".trash"):
            if (base / eid / "meta.yaml").exists():
                return base / eid
        return None

    def runs(self):
        return sorted(p for base in (self.root, self.root / ".trash") if base.exists()
                      for e in base.iterdir() if e.is_dir() and e.name.isdigit()
                      for p in e.iterdir() if len(p.name) == 32)

    def write(self, path, text, append=False):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a" if append else "w", encoding="utf-8") as f:
            f.write(text)
        t = time.time() - 10
        os.utime(path, (t, t))

    def meta(self, run, **fields):
        import yaml

        data = yaml.safe_load((run / "meta.yaml").read_text())
        data.update(fields)
        self.write(run / "meta.yaml", yaml.safe_dump(data))

    def apply(self, op, i, j, db):
        runs = self.runs()
        run = runs[i % len(runs)] if runs else None
        import yaml

        if op == "new_run" or (run is None and op not in ("new_exp", "rename_exp", "trash_exp",
                                                           "restore_exp", "sync", "server_run")):
            exps = [e for e in ("1", "2", "3") if self.exp_dir(e)]
            eid = exps[j % len(exps)]
            rid = "%032x" % (0xF000 + self.n)
            self.n += 1
            d = self.exp_dir(eid) / rid
            stage = "deleted" if d.parent.parent.name == ".trash" else "active"
            self.write(d / "meta.yaml", run_meta(rid, eid, status=1, end_time=None,
                                                 lifecycle_stage=stage))
            self.write(d / "params" / "p", str(j))
            self.write(d / "metrics" / "m", f"{100 + j} {j * 0.5} 0\n")
        elif op == "append":
            k = (run / "metrics" / "m").read_text().count("\n")
            self.write(run / "metrics" / "m", f"{200 + k} {j * 1.5} {k}\n", append=True)
        elif op == "set_tag":
            self.write(run / "tags" / f"t{j}", f"value {i}\r\n✓")
        elif op == "delete_tag":
            tag = run / "tags" / f"t{j}"
            if tag.exists():
                tag.unlink()
        elif op == "finish":
            self.meta(run, status=3, end_time=1718000060000 + i)
        elif op == "rename":
            self.meta(run, run_name=f"name {i}")
            self.write(run / "tags" / "mlflow.runName", f"name {i}")
        elif op == "delete_run":
            self.meta(run, lifecycle_stage="deleted", deleted_time=1718000070000)
        elif op == "restore_run":
            data = yaml.safe_load((run / "meta.yaml").read_text())
            data.pop("deleted_time", None)
            data["lifecycle_stage"] = "active"
            self.write(run / "meta.yaml", yaml.safe_dump(data))
        elif op == "gc":
            data = yaml.safe_load((run / "meta.yaml").read_text())
            if data["lifecycle_stage"] == "deleted" and run.name in self.synced_deleted:
                shutil.rmtree(run)
        elif op == "rename_exp":
            d = self.exp_dir(str(1 + j % 3))
            if d is not None:
                data = yaml.safe_load((d / "meta.yaml").read_text())
                data["name"] = f"exp {i} {d.name}"
                self.write(d / "meta.yaml", yaml.safe_dump(data))
        elif op == "trash_exp":
            d = self.exp_dir(str(1 + j % 3))
            if d is not None and d.parent == self.root:
                for r in d.iterdir():
                    if len(r.name) == 32:
                        self.meta(r, lifecycle_stage="deleted", deleted_time=1718000080000)
                (self.root / ".trash").mkdir(exist_ok=True)
                shutil.move(str(d), str(self.root / ".trash" / d.name))
        elif op == "restore_exp":
            d = self.exp_dir(str(1 + j % 3))
            if d is not None and d.parent != self.root:
                shutil.move(str(d), str(self.root / d.name))
        elif op == "new_exp":
            eid = str(1 + j % 3)
            if self.exp_dir(eid) is None:
                self.write(self.root / eid / "meta.yaml", experiment_meta(eid, f"exp {eid}"))
        elif op == "server_tag" and db.exists() and run is not None:
            server_write(db, ("INSERT OR REPLACE INTO tags (key, value, run_uuid) SELECT "
                              "'srv', 'x', run_uuid FROM runs WHERE run_uuid = ?", (run.name,)))
        elif op == "server_run" and db.exists():
            server_write(db, ("INSERT OR IGNORE INTO runs (run_uuid, name, source_type, "
                              "status, lifecycle_stage, experiment_id, user_id, start_time) "
                              "VALUES (?, 'server', 'LOCAL', 'RUNNING', 'active', 0, 'u', 1)",
                              ("%032x" % (0xE000 + i),)))
        elif op == "sync":
            run_sync(self.root, target=db)
            self.synced_deleted = {r.name for r in self.runs() if yaml.safe_load(
                (r / "meta.yaml").read_text())["lifecycle_stage"] == "deleted"}


def test_any_edits_and_syncs_end_equal_to_one_migration_plus_what_the_server_wrote(tmp_path):
    from hypothesis import HealthCheck, given, settings

    counter = iter(range(10**6))

    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ops=_ops())
    def check(ops):
        base = tmp_path / f"case{next(counter)}"
        src = _Store(base / "mlruns")
        db = base / "t.db"
        for op, i, j in ops:
            src.apply(op, i, j, db)
        run_sync(src.root, target=db)
        got = dump(db)
        server_runs = {r for r in got["runs"] if "'server'" in r}
        got["runs"] = sorted(set(got["runs"]) - server_runs)
        got["tags"] = sorted(r for r in got["tags"] if not r.startswith("('srv'"))
        assert got == migrated(src.root, base)
        assert verify(str(src.root), str(db)).ok
        assert run_sync(src.root, target=db).changed == 0

    check()


def test_the_same_dataset_from_two_stores_is_one_dataset(tmp_path):
    """Stores of one team log the same data set into an experiment of the same name: one
    dataset row (its derived ID follows the database experiment), and every run's input
    points at it."""
    from test_kind_datasets import dataset_yaml, input_yaml, md5

    dbs = []
    for n, (eid, rid) in enumerate([("1", RID[0]), ("4", RID[1])]):
        root = tmp_path / f"s{n}" / "mlruns"
        write_files(root, {
            "0/meta.yaml": experiment_meta("0", "Default"),
            f"{eid}/meta.yaml": experiment_meta(eid, "sweep"),
            f"{eid}/datasets/d{n}/meta.yaml": dataset_yaml("train", "abc123"),
            f"{eid}/{rid}/meta.yaml": run_meta(rid, eid),
            f"{eid}/{rid}/inputs/{md5('d', rid)}/meta.yaml": input_yaml(f"d{n}")})
        old(root)
        dbs.append(root)
    db = tmp_path / "t.db"
    report = run_sync(*dbs, target=db)
    assert report.conflicts == []
    assert q(db, "SELECT COUNT(*) FROM datasets") == [(1,)]
    (uuid,), = q(db, "SELECT dataset_uuid FROM datasets")
    assert q(db, "SELECT destination_id FROM inputs WHERE source_id = ? ORDER BY 1", uuid) == \
        [(RID[0],), (RID[1],)]
    assert verify([str(d) for d in dbs], str(db)).ok


def test_sync_copies_the_artifacts_of_new_and_changed_runs_and_rewrites_their_uris(tmp_path):
    from test_artifacts import BIG, RUN, artifact_store

    from mlflow_fs2sql.artifacts import ArtifactOptions

    src = artifact_store(tmp_path / "mlruns", n_runs=2)
    old(src)
    dest = tmp_path / "served"
    db = tmp_path / "t.db"
    options = ArtifactOptions(to=str(dest))
    first = sync([str(src)], str(db), SyncOptions(artifacts=options))
    assert first.ok and (dest / BIG / RUN / "artifacts" / "d0" / "f 0.txt").is_file()
    assert q(db, "SELECT artifact_uri FROM runs WHERE run_uuid=?", RUN) == \
        [(f"mlflow-artifacts:/{BIG}/{RUN}/artifacts",)]
    assert "--artifacts-destination" in first.start_command
    # a new run with files, and a changed one: only theirs are copied
    rid = "c" * 32
    write_files(src, {f"{BIG}/{rid}/meta.yaml": run_meta(rid, BIG),
                      f"{BIG}/{rid}/artifacts/model.pkl": b"\x00\x01" * 50})
    old(src / BIG / rid)
    report = sync([str(src)], str(db), SyncOptions(artifacts=options))
    assert report.ok, report.mismatches
    assert (dest / BIG / rid / "artifacts" / "model.pkl").read_bytes() == b"\x00\x01" * 50
    assert report.artifacts["copy"]["copied_files"] == 1
    assert q(db, "SELECT artifact_uri FROM runs WHERE run_uuid=?", rid) == \
        [(f"mlflow-artifacts:/{BIG}/{rid}/artifacts",)]
    # later syncs and verify apply the options the database was synced with, given or not
    assert sync([str(src)], str(db), SyncOptions()).changed == 0
    checked = verify(str(src), str(db))
    assert checked.ok and not checked.listed, (checked.mismatches, checked.listed)
    assert checked.artifacts["check"]["files"] >= 7
    (dest / BIG / rid / "artifacts" / "model.pkl").write_bytes(b"\x00\x02" * 50)
    assert not verify(str(src), str(db)).ok


def test_sync_verify_compares_before_committing_and_rolls_back_a_bad_write(tmp_path, monkeypatch):
    from mlflow_fs2sql.sync import apply as sync_apply

    src = store(tmp_path / "mlruns")
    db = tmp_path / "t.db"
    assert run_sync(src, target=db, verify=True).verified
    edit(src / "1" / RID[0] / "params" / "new", "1")
    edit(src / "1" / RID[1] / "tags" / "t", "changed")
    ok = run_sync(src, target=db, verify=True)
    assert ok.verified["params"] >= 3 and ok.mismatch_count == 0
    before = dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")
    edit(src / "1" / RID[1] / "tags" / "t", "changed again")
    monkeypatch.setattr(sync_apply, "update_rows", lambda *a: None)  # a write that goes missing
    result = runner.invoke(app, ["sync", str(src), str(db), "--verify"])
    assert result.exit_code == 3, result.output
    assert "rolled back" in result.stderr
    assert (dump(db), q(db, "SELECT * FROM fs2sql_units ORDER BY unit")) == before


def test_migrate_rename_conflicts_keeps_a_trashed_experiment_of_a_taken_name(tmp_path):
    src = store(tmp_path / "mlruns", name="same")
    write_files(src, {".trash/5/meta.yaml": experiment_meta("5", "same",
                                                            lifecycle_stage="deleted")})
    refused = runner.invoke(app, ["migrate", str(src), str(tmp_path / "a.db")])
    assert refused.exit_code == 1 and "'same'" in refused.stderr
    ok = runner.invoke(app, ["migrate", str(src), str(tmp_path / "b.db"), "--rename-conflicts"])
    assert ok.exit_code == 0, ok.stderr
    assert q(tmp_path / "b.db", "SELECT name, lifecycle_stage FROM experiments WHERE "
             "experiment_id = 5") == [("same (deleted, from 5)", "deleted")]
    assert "--rename-conflicts" in ok.stdout
