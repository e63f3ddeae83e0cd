"""Oracle tests of ``fs2sql sync`` with real MLflow writers and real database servers.

A store written by MLflow (``fixtures_gen/write_store.py``) is synced into SQLite, PostgreSQL or
MariaDB. Then MLflow keeps writing to the store (``fixtures_gen/edit_store.py``: new runs and
points, tags, a RUNNING run terminated, deletes and restores, renames, registry versions and
aliases, traces and assessments, logged models, ``mlflow gc``) while MLflow's SqlAlchemyStore
writes to the database as its server would (``fixtures_gen/server_writes.py``). After every
sync, MLflow's own SqlAlchemyStore must show in the database exactly the three-way merge
(``fixtures_gen/views.merge3``) of what MLflow's FileStore showed in the store at the last sync,
what the database showed before this sync (the server's writes), and what the FileStore shows
now: per field, a side that did not change it yields to the other; where both changed it, the
database's value stays and fs2sql reports the conflict. ``fs2sql verify`` passes after every
sync, and a sync with nothing new writes nothing (every row, the sync state included).

Also: a 1.x, a 2.x and a 3.x store merged into one database (each store's content seen once,
same-name experiments joined, colliding experiment IDs renumbered), ``mlflow server`` listing
the merged runs, and kill -9 of a sync at several moments leaving the database as it was.

The only normalisations are ``views.normalise`` (differences MLflow's two stores make
themselves, each cited there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import servers
from conftest import query

from fixtures_gen import living, views
from fixtures_gen.build import ensure_store
from fixtures_gen.compare import diff_dumps
from fixtures_gen.versions import LATEST_1X, LATEST_2X, LATEST_3X
from mlflow_fs2sql.migrate import verify
from mlflow_fs2sql.sync import SyncOptions
from mlflow_fs2sql.sync import sync as _sync

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

# The MLflow that writes the stores, writes as the server does and reads both sides: the newest
# full MLflow that installs (its server and SqlAlchemyStore open only its own schema revision,
# so every first sync here makes that release's schema, whatever mlflow-skinny fs2sql has).
READER = LATEST_3X


def sync(paths, target, options=None, *args, **kwargs):
    """``sync`` with READER's schema on a first sync (later syncs keep the database's)."""
    options = options or SyncOptions()
    return _sync(paths, target, replace(options, mlflow_version=options.mlflow_version or READER),
                 *args, **kwargs)


@pytest.fixture(scope="module")
def reader():
    with living.Reader(READER) as r:
        yield r


@pytest.fixture
def target(request, tmp_path):
    """An SQLite path, or a new PostgreSQL / MariaDB database (dropped afterwards)."""
    kind = request.param
    if kind == "sqlite":
        yield str(tmp_path / "team.db")
        return
    admin = servers.PG_ADMIN if kind == "postgresql" else servers.MYSQL_ADMIN
    servers._require(kind, admin)
    server = servers.Server(kind, admin)
    try:
        yield server.new_db()
    finally:
        server.drop_all()


def _is_server(target: str) -> bool:
    return "://" in target


def assert_same(got: dict, want: dict, what: str) -> None:
    diffs = diff_dumps(got, want)
    assert not diffs, f"{what}: {_show(diffs)}"


def _show(diffs) -> str:
    return f"{len(diffs)} differences\n" + "\n".join(
        f"  {p}\n    database: {json.dumps(a, ensure_ascii=False)[:300]}"
        f"\n    expected: {json.dumps(b, ensure_ascii=False)[:300]}" for p, a, b in diffs[:20])


def raw_dump(target: str) -> dict:
    """Every row of every table (the sync state's too), as text, sorted."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    engine = create_engine(living.mlflow_uri(target), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {t: sorted(repr(tuple(r)) for r in conn.exec_driver_sql(
                f'SELECT * FROM {_quote(conn, t)}')) for t in inspect(conn).get_table_names()}
    finally:
        engine.dispose()


def _quote(conn, name: str) -> str:
    return f"`{name}`" if conn.dialect.name in ("mysql", "mariadb") else f'"{name}"'


# -- one store, kept in sync while MLflow and a server write ---------------------------------------
class Flow:
    """A living store, its database, and MLflow's views of both."""

    def __init__(self, reader, version: str, folder: Path, target: str):
        self.reader, self.version, self.folder, self.target = reader, version, folder, target
        self.mlruns = living.living_store(version, folder)
        self.options = SyncOptions(experiment_ids="renumber" if _is_server(target) else None)
        self.five: dict = {}
        self.ids: dict = {}  # store experiment ID -> database ID (renumbered ones)

    def sync(self, dry_run_first: bool = True):
        if dry_run_first:  # --dry-run says what the sync will change, and writes nothing
            before = raw_dump(self.target)
            dry = sync([str(self.mlruns)], self.target,
                       replace(self.options, dry_run=True))
            assert raw_dump(self.target) == before
        report = sync([str(self.mlruns)], self.target, self.options)
        assert report.exit_code == 0, (report.mismatches[:3], report.skipped[:3])
        if dry_run_first:
            assert dry.changes == report.changes and dry.conflicts == report.conflicts
        checked = verify(str(self.mlruns), self.target)
        assert checked.ok, checked.mismatches[:5]
        return report

    def store_view(self) -> dict:
        self.five.update(views.five_field_points(self.mlruns))
        return views.normalise(self.reader.store(self.mlruns), self.five,
                               views.trashed(self.mlruns))

    def db_view(self) -> dict:
        dump = self.reader.db(self.target)
        assert dump["unsupported"] == {}, dump["unsupported"]
        self.ids.update(views.renumbered(dump))
        return views.normalise(views.map_ids(dump, {}), self.five)

    def as_db(self, view: dict) -> dict:
        return views.map_ids(view, self.ids)

    def edit(self, phase: int) -> dict:
        done = living.edit_store(self.version, self.folder, phase)
        if self.version == LATEST_3X:
            assert done["skipped"] == {}, done["skipped"]  # every edit on the newest MLflow
        return done

    def round(self, base: dict, theirs: dict, phase: int):
        """Edit the store, sync, and compare: (report, conflicts, database view, store view)."""
        self.edit(phase)
        report = self.sync()
        got = self.db_view()
        mine = self.store_view()
        want, conflicts = views.merge3(self.as_db(base), theirs, self.as_db(mine))
        assert_same(got, want, f"after sync {phase + 1} ({self.version})")
        return report, conflicts, got, mine


def assert_server_wrote(view: dict, wrote: dict) -> None:
    """What server_writes.py says it wrote is what MLflow shows in the database."""
    runs = {r["info"]["run_id"]: r for r in view["runs"]}
    experiments = {e["experiment_id"]: e for e in view["experiments"]}
    assert set(wrote["experiments"]) <= set(experiments)
    assert set(wrote["runs"]) <= set(runs)
    for rid, tags in wrote["run_tags"].items():
        assert {k: runs[rid]["tags"].get(k) for k in tags} == tags
    for rid, keys in wrote["deleted_run_tags"].items():
        assert not set(keys) & set(runs[rid]["tags"])
    for rid, keys in wrote["metrics"].items():
        assert set(keys) <= set(runs[rid]["latest_metrics"])
    for rid, name in wrote["run_names"].items():
        assert runs[rid]["info"]["run_name"] == name
    for eid, tags in wrote["experiment_tags"].items():
        assert {k: experiments[eid]["tags"].get(k) for k in tags} == tags
    models = {m["name"]: m for m in view["registered_models"]}
    assert set(wrote["registered_models"]) <= set(models)
    for name, aliases in wrote["aliases"].items():
        assert {a: models[name]["aliases"].get(a) for a in aliases} == aliases


def _new_points(old: dict, new: dict) -> int:
    """Metric points the store has now and had not before (MLflow's view, one per value)."""
    was = {r["info"]["run_id"]: r["metric_history"] for r in old["runs"]}
    return sum(len({tuple(p) for p in points} - {tuple(p) for p in was.get(rid, {}).get(k, ())})
               for rid, history in ((r["info"]["run_id"], r["metric_history"])
                                    for r in new["runs"])
               for k, points in history.items())


CASES = [(LATEST_3X, "sqlite"), (LATEST_3X, "postgresql"), (LATEST_3X, "mysql"),
         (LATEST_2X, "sqlite"), (LATEST_1X, "sqlite"), (LATEST_1X, "postgresql")]


@pytest.mark.parametrize("version,target", CASES, indirect=["target"])
def test_the_database_shows_the_store_plus_what_the_server_wrote(version, target, reader,
                                                                 tmp_path):
    flow = Flow(reader, version, tmp_path / "node", target)
    first = flow.sync(dry_run_first=False)
    assert first.sources[0]["first_sync"]
    base, got = flow.store_view(), flow.db_view()
    assert len(base["runs"]) >= 10 and len(base["experiments"]) >= 5
    assert_same(got, flow.as_db(base), "after the first sync")

    # 1: the server writes, MLflow keeps writing to the store, sync
    wrote = living.server_writes(READER, target, 1)
    theirs = flow.db_view()
    assert_server_wrote(theirs, wrote)
    assert not verify(str(flow.mlruns), target, strict=True).ok  # the server changed synced runs
    before = base
    report, conflicts, got, base = flow.round(base, theirs, 1)
    assert_server_wrote(got, wrote)
    # The one field both sides changed: a run renamed in the store and on the server. The
    # database keeps the server's name (run_name and its mlflow.runName tag) and says so.
    renamed = next(rid for rid, name in wrote["run_names"].items() if name.startswith("conflict"))
    assert sorted(conflicts) == [f".runs[run_id={renamed}].info.run_name",
                                 f".runs[run_id={renamed}].tags.mlflow.runName"]
    assert [c for c in report.conflicts if renamed in c] and \
        all(renamed in c for c in report.conflicts)
    assert report.changes["runs"]["inserted"] == 2  # the new run and the new deleted one's
    assert report.changes["metrics"]["inserted"] == _new_points(before, base) >= 60

    # 2: again (deletes, restores, a registered model and a trace removed ...)
    wrote2 = living.server_writes(READER, target, 2)
    theirs = flow.db_view()
    assert_server_wrote(theirs, wrote2)
    report, conflicts, got, base = flow.round(base, theirs, 2)
    assert conflicts == []
    assert_server_wrote(got, wrote2)

    # 3: mlflow gc removes the run deleted in 2 (and the experiment deleted in 1, with its run)
    report, conflicts, got, base = flow.round(base, got, 3)
    assert conflicts == [] and report.changes["runs"]["deleted"] >= 1

    # nothing new: nothing written, not even the sync state
    before = raw_dump(target)
    idle = flow.sync()
    assert idle.changed == 0 and idle.conflicts == []
    assert raw_dump(target) == before


# -- several stores into one database ------------------------------------------------------------
RENAMED = "{name} (deleted, from {id})"


@pytest.fixture
def node2(tmp_path):
    """A second MLflow 1.x store (IDs 0..5 again), edited so that some of its experiment names
    are its own and two clash with the other stores' in lifecycle (--rename-conflicts)."""
    mlruns = living.living_store(LATEST_1X, tmp_path / "node2")
    living.edit_store(LATEST_1X, tmp_path / "node2", 1)
    return mlruns


def _mapping(view: dict, db: dict, store_id: str) -> dict:
    """{store experiment ID: (database ID, name)}: renumbered ones by their tags; the others by
    name and lifecycle (joined, or kept), or renamed by --rename-conflicts."""
    out = {}
    for e in view["experiments"]:
        x, name, stage = int(e["experiment_id"]), e["name"], e["lifecycle_stage"]
        found = [d for d in db["experiments"]
                 if d["tags"].get(views.SOURCE_ID_TAG) == str(x)
                 and d["tags"].get(views.SOURCE_STORE_TAG) == store_id] or \
            [d for d in db["experiments"] if d["name"] == name and d["lifecycle_stage"] == stage
             and views.SOURCE_ID_TAG not in d["tags"]] or \
            [d for d in db["experiments"] if d["lifecycle_stage"] == stage == "deleted"
             and d["name"].startswith(RENAMED.format(name=name, id="").rstrip(")"))]
        assert len(found) == 1, (store_id, x, name, found)
        out[x] = (int(found[0]["experiment_id"]), found[0]["name"])
    return out


def _merged(reader, stores, dump: dict, store_ids: dict):
    """(what the merged database must show, {database experiment ID: (store, store's ID)} of
    the first store holding each, MLflow's view of the database): every store's view in the
    database's experiment IDs and names, folded in the order synced -- the first store's values
    win where two disagree (shared names: experiments, registered models)."""
    db = views.normalise(dump)
    want, owners, five = views.MISSING, {}, {}
    for store in stores:
        five.update(views.five_field_points(store))
        view = views.normalise(reader.store(store), five, views.trashed(store))
        mapping = _mapping(view, db, store_ids[str(store)])
        view = views.map_ids(view, {x: eid for x, (eid, _) in mapping.items()})
        names = {eid: name for eid, name in mapping.values()}
        for e in view["experiments"]:
            e["name"] = names[int(e["experiment_id"])]
        for x, (eid, _) in mapping.items():
            owners.setdefault(eid, (str(store), x))
        want, _ = views.merge3(views.MISSING, want, view)
    return want, owners, views.normalise(views.map_ids(dump, {}), five)


@pytest.mark.parametrize("target", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_merge_of_a_1x_a_2x_and_a_3x_store(target, reader, node2, tmp_path):
    stores = [ensure_store(LATEST_1X, "small"), ensure_store(LATEST_2X, "small"),
              ensure_store(LATEST_3X, "small"), node2]
    paths = [str(s) for s in stores]
    options = SyncOptions(rename_conflicts=True,
                          experiment_ids="renumber" if _is_server(target) else None)
    report = sync(paths, target, options)
    assert report.exit_code == 0 and not report.skipped
    cli = subprocess.run([sys.executable, "-m", "mlflow_fs2sql", "verify", "-q", *paths, target],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr

    dump = reader.db(target)
    store_ids = {s["path"]: s["source_id"] for s in report.sources}
    want, owners, got = _merged(reader, stores, dump, store_ids)
    # Joined: one Default, and every name the stores share is one experiment.
    assert [e["experiment_id"] for e in got["experiments"] if e["name"] == "Default"] == ["0"]
    assert len({e["name"] for e in got["experiments"]}) == len(got["experiments"])
    # Renumbered: exactly the experiments whose store's ID was taken, each tagged with the ID
    # and the store it comes from.
    tagged = {(int(e["experiment_id"]), int(e["tags"][views.SOURCE_ID_TAG]),
               e["tags"][views.SOURCE_STORE_TAG])
              for e in dump["experiments"] if views.SOURCE_ID_TAG in e["tags"]}
    moved = {(eid, x, store_ids[store]) for eid, (store, x) in owners.items() if eid != x}
    assert tagged == moved and len(moved) == 4  # node2's own experiments 2, 3, 4, 5
    # Each store's runs exactly once, with everything MLflow shows of them.
    run_ids = [r["info"]["run_id"] for r in got["runs"]]
    assert len(run_ids) == len(set(run_ids)) == len(want["runs"]) >= 40
    rest = diff_dumps(got, want)  # a dataset two stores hold too: one row, every input sees it
    assert not rest, _show(rest)
    if not _is_server(target) or target.startswith("postgresql"):
        _server_lists(target, report, want, tmp_path)

    # node2 keeps being written (its renamed and renumbered experiments restored, renamed
    # again); the next sync of all four brings exactly that.
    living.edit_store(LATEST_1X, node2.parent, 2)
    again = sync(paths, target, options)
    assert again.exit_code == 0 and verify(paths, target).ok
    dump = reader.db(target)
    mine, _, now = _merged(reader, stores, dump, store_ids)
    expected, conflicts = views.merge3(want, got, mine)
    assert conflicts == []
    rest = diff_dumps(now, expected)
    assert not rest, _show(rest)


def _server_lists(target: str, report, want: dict, tmp_path) -> None:
    """``mlflow server`` (full MLflow) lists every merged experiment and run over REST."""
    from test_server import _start_uri, assert_server_lists_runs

    db = Path(target) if not _is_server(target) else _start_uri(report, target)
    assert_server_lists_runs(READER, db, want, tmp_path)


# -- kill -9 ----------------------------------------------------------------------------------------
# A sync in a subprocess pauses at a moment (a hook prints MOMENT and sleeps), then is killed.
# With FS2SQL_TEST_GO set, it goes on once that file exists.
_PAUSING = r"""
import os, sys, time
moment, args = sys.argv[1], sys.argv[2:]

def pause():
    print("MOMENT", flush=True)
    go, deadline = os.environ.get("FS2SQL_TEST_GO"), time.time() + 600
    while time.time() < deadline and not (go and os.path.exists(go)):
        time.sleep(0.05)

def after(owner, name, calls=1):
    original, seen = getattr(owner, name), []
    def hooked(*a, **k):
        result = original(*a, **k)
        seen.append(1)
        if len(seen) == calls:
            pause()
        return result
    setattr(owner, name, hooked)

def before(owner, name):
    original = getattr(owner, name)
    def hooked(*a, **k):
        pause()
        return original(*a, **k)
    setattr(owner, name, hooked)

from mlflow_fs2sql.sync import commit, first, plan
from mlflow_fs2sql.targets import live, live_sqlite
if moment == "reading":  # phase 1: the store is read, no lock, nothing written
    after(plan, "_take", calls=3)
elif moment == "locked":  # the sync lock is held, the write transaction not begun
    after(live.LiveTarget, "lock")
elif moment == "writing":  # inside the write transaction, after two batches went in
    commit.BATCH_UNITS = 4
    after(commit, "apply", calls=2)
elif moment == "committing":  # everything written, the state too, just before COMMIT
    before(live_sqlite.LiveSqlite, "commit")
    before(live.LiveTarget, "commit")
elif moment == "first":  # the first sync (a migration), its state recorded, not published
    after(first.Recorder, "finish")
from mlflow_fs2sql.cli import main
sys.argv = ["fs2sql", "sync", "-q", "--mlflow-version", "READER_VERSION", *args]
main()
""".replace("READER_VERSION", READER)


def _paused_at(moment: str, args, go=None) -> subprocess.Popen:
    env = dict(os.environ, **({"FS2SQL_TEST_GO": str(go)} if go else {}))
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING, moment, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    line = proc.stdout.readline()
    if line.strip() != "MOMENT":
        proc.wait(timeout=60)
        pytest.fail(f"the sync ended before {moment}: {proc.stderr.read()[-2000:]}")
    return proc


def _kill_at(moment: str, args) -> None:
    proc = _paused_at(moment, args)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _gone(target: str) -> None:
    """Wait until the server has dropped the killed sync's connections (and rolled back)."""
    if not target.startswith("postgresql"):
        return
    name = target.rsplit("/", 1)[1]
    deadline = time.monotonic() + 30
    while servers.Server("postgresql", servers.PG_ADMIN).query(
            servers.PG_ADMIN, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
            f"'{name}' AND application_name LIKE 'fs2sql%%'")[0][0]:
        assert time.monotonic() < deadline, "the killed sync's connection is still open"
        time.sleep(0.2)


def _mlflow_tables(dump: dict) -> dict:
    return {t: rows for t, rows in dump.items() if not t.startswith("fs2sql_")}


class Killing:
    """A living 3.x store synced once (an SQLite file, and a PostgreSQL database if a server
    answers), then edited by MLflow: every kill test's second sync has the same work to do."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.mlruns = living.living_store(LATEST_3X, folder / "node")
        self.template = folder / "template.db"
        assert sync([str(self.mlruns)], str(self.template)).exit_code == 0
        self.pg = None
        try:
            servers._require("postgresql", servers.PG_ADMIN)
        except pytest.skip.Exception:
            pass
        else:
            self.pg = servers.Server("postgresql", servers.PG_ADMIN)
            self.pg_template = self.pg.new_db()
            assert sync([str(self.mlruns)], self.pg_template,
                        SyncOptions(experiment_ids="renumber")).exit_code == 0
        living.edit_store(LATEST_3X, folder / "node", 1)
        self.references = {}

    def database(self, kind: str, tmp_path: Path) -> str:
        """A copy of the template: the database as the first sync left it."""
        if kind == "sqlite":
            db = tmp_path / "team.db"
            shutil.copyfile(self.template, db)
            return str(db)
        if self.pg is None:
            servers._require("postgresql", servers.PG_ADMIN)  # skips (or fails with CI=true)
        url = self.pg.new_db()
        name, template = url.rsplit("/", 1)[1], self.pg_template.rsplit("/", 1)[1]
        engine = servers._engine(servers.PG_ADMIN)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE {name}")
                conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
        finally:
            engine.dispose()
        return url

    def reference(self, kind: str, tmp_path: Path, reader) -> dict:
        """The database after an uninterrupted second sync: MLflow's tables, and on PostgreSQL
        MLflow's view with the store's experiment IDs."""
        if kind not in self.references:
            db = self.database(kind, tmp_path / "reference")
            assert sync([str(self.mlruns)], db).exit_code == 0
            self.references[kind] = self.seen(db, kind, reader)
        return self.references[kind]

    @staticmethod
    def seen(db: str, kind: str, reader):
        if kind == "sqlite":
            return _mlflow_tables(raw_dump(db))
        # A killed sync's nextval() stays consumed (sequences are not transactional, for the
        # server's own inserts too): the rerun may give a new experiment the next ID instead.
        dump = reader.db(db)
        return views.map_ids(dump, {v: k for k, v in views.renumbered(dump).items()})

    def close(self) -> None:
        if self.pg is not None:
            self.pg.drop_all()


@pytest.fixture(scope="module")
def killing(tmp_path_factory):
    state = Killing(tmp_path_factory.mktemp("kill"))
    yield state
    state.close()


@pytest.mark.parametrize("moment", ["reading", "locked", "writing", "committing"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_kill_9_during_a_sync_leaves_the_database_as_it_was(kind, moment, killing, reader,
                                                            tmp_path):
    (tmp_path / "reference").mkdir()
    db = killing.database(kind, tmp_path)
    before = raw_dump(db)
    _kill_at(moment, [str(killing.mlruns), db])
    _gone(db)
    assert raw_dump(db) == before  # every row, the sync state's too
    if kind == "sqlite":
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
    # the lock died with the sync: the next one runs, and ends where an uninterrupted one does
    report = sync([str(killing.mlruns)], db, SyncOptions(lock_timeout=5))
    assert report.exit_code == 0 and report.changed > 0
    assert_same(killing.seen(db, kind, reader), killing.reference(kind, tmp_path, reader),
                f"rerun after kill -9 at {moment}")
    assert verify(str(killing.mlruns), db).ok


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_kill_9_during_a_first_sync_leaves_no_database(kind, killing, tmp_path):
    if kind == "sqlite":
        db = str(tmp_path / "new.db")
    else:
        if killing.pg is None:
            servers._require("postgresql", servers.PG_ADMIN)
        db = killing.pg.new_db()
    args = [str(killing.mlruns), db] + (["--experiment-ids", "renumber"] if kind != "sqlite"
                                        else [])
    _kill_at("first", args)
    _gone(db)
    if kind == "sqlite":
        assert not os.path.exists(db)
    else:
        assert raw_dump(db) == {}
    report = sync([str(killing.mlruns)], db, SyncOptions(
        experiment_ids="renumber" if kind != "sqlite" else None, lock_timeout=5))
    assert report.exit_code == 0 and report.sources[0]["first_sync"]
    assert verify(str(killing.mlruns), db).ok


def test_the_server_keeps_writing_while_a_sync_writes(killing, reader, tmp_path):
    """PostgreSQL: while a sync's transaction is open (paused after two batches), MLflow's
    store sets a tag and logs a metric on a run the sync is updating and creates an experiment
    -- at once, not after the sync; the sync then commits, keeping what the server wrote."""
    (tmp_path / "reference").mkdir()
    db = killing.database("postgresql", tmp_path)
    go = tmp_path / "go"
    proc = _paused_at("writing", [str(killing.mlruns), db], go)
    try:
        wrote = living.server_writes(READER, db, 3, timeout=60)  # blocked: fails at 60 s
    finally:
        go.touch()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
        proc.stdout.close()
        proc.stderr.close()
    assert max(wrote["seconds"].values()) < 5, wrote["seconds"]  # not blocked by the sync
    assert verify(str(killing.mlruns), db).ok
    got = killing.seen(db, "postgresql", reader)
    assert_server_wrote(got, wrote)
    (rid,) = wrote["run_tags"]
    # Apart from what the server wrote, the database is what an undisturbed sync makes.
    got["experiments"] = [e for e in got["experiments"] if e["name"] != "during-sync"]
    run = next(r for r in got["runs"] if r["info"]["run_id"] == rid)
    del run["tags"]["during.sync"], run["latest_metrics"]["during_sync"]
    del run["metric_history"]["during_sync"]
    assert_same(got, killing.reference("postgresql", tmp_path, reader), "after the sync")
