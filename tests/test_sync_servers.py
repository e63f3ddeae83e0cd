"""fs2sql sync on real PostgreSQL and MariaDB: the same rules as on SQLite (test_sync.py), and
what differs there -- 32-bit experiment IDs, the policy a database keeps, a dry run on MySQL
that must not even leave empty state tables, a database made by ``migrate``."""

from __future__ import annotations

import shutil

import pytest
from conftest import cli_runner, experiment_meta, run_meta, write_files
from test_sync import RID, edit, old, store

from mlflow_fs2sql.cli import app
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify
from mlflow_fs2sql.sync import SyncOptions, sync

runner = cli_runner()
BIG = "872227880566216094"


def dump(server, url) -> dict:
    out = {}
    for table in server.tables(url):
        if table.startswith("fs2sql_"):
            continue
        rows = server.query(url, f"SELECT * FROM {table}")
        out[table] = sorted(repr(tuple(int(v) if isinstance(v, bool) else v for v in r))
                            for r in rows)
    return out


def execute(url, sql):
    from servers import _engine

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def big_store(root):
    """A store with an 18-digit experiment ID (MLflow >= 2.0), which 32-bit columns cannot hold."""
    return store(root, exp=BIG, name="big")


def test_incremental_syncs_equal_a_migration_on_servers(server, tmp_path):
    src = store(tmp_path / "mlruns")
    target = server.new_db()
    assert sync([str(src)], target).ok
    edit(src / "1" / RID[0] / "meta.yaml", run_meta(RID[0], "1", run_name="renamed", status=4))
    (src / "1" / RID[1] / "tags" / "t").unlink()
    edit(src / "1" / RID[1] / "metrics" / "loss", "5000 1.5 9\n", append=True)
    write_files(src, {f"1/{RID[6]}/meta.yaml": run_meta(RID[6], "1")})
    old(src / "1" / RID[6])
    report = sync([str(src)], target)
    assert report.ok and report.changes["runs"] == {"inserted": 1, "updated": 1, "deleted": 0}
    fresh = server.new_db()
    migrate(str(src), fresh, MigrateOptions())
    assert dump(server, target) == dump(server, fresh)
    assert verify(str(src), target).ok
    assert sync([str(src)], target).changed == 0


def test_a_renumbering_database_keeps_renumbering_new_large_experiments(server, tmp_path):
    a = big_store(tmp_path / "a" / "mlruns")
    target = server.new_db()
    refused = runner.invoke(app, ["sync", str(a), target])
    assert refused.exit_code == 1 and "--experiment-ids renumber" in refused.stderr
    assert sync([str(a)], target, SyncOptions(experiment_ids="renumber")).ok
    b = tmp_path / "b" / "mlruns"
    write_files(b, {"0/meta.yaml": open(a / "0" / "meta.yaml").read(),
                    "955436576289587369/meta.yaml": open(a / BIG / "meta.yaml").read()
                    .replace(BIG, "955436576289587369").replace("big", "other"),
                    f"955436576289587369/{RID[8]}/meta.yaml": run_meta(RID[8],
                                                                       "955436576289587369")})
    old(b)
    report = sync([str(b)], target)  # no flag: the database's policy
    assert report.ok
    ids = dict(server.query(target, "SELECT name, experiment_id FROM experiments"))
    assert max(ids.values()) < 2**31 and len(set(ids.values())) == 3
    assert server.query(target, f"SELECT experiment_id FROM runs WHERE run_uuid='{RID[8]}'") == \
        [(ids["other"],)]
    assert verify([str(a), str(b)], target).ok


def test_server_created_experiment_ids_never_collide(pg, tmp_path):
    """MLflow's server takes IDs from its sequence; a later sync brings small IDs (1.x)."""
    a = store(tmp_path / "a" / "mlruns")
    target = pg.new_db()
    assert sync([str(a)], target).ok
    for name in ("ui-1", "ui-2"):  # what MLflow's create_experiment does
        pg.query(target, "INSERT INTO experiments (name, lifecycle_stage, artifact_location) "
                 f"VALUES ('{name}', 'active', 'x') RETURNING experiment_id")
    b = store(tmp_path / "b" / "mlruns", exp="3", name="from-b")
    shutil.rmtree(b / "3" / RID[0])
    shutil.rmtree(b / "3" / RID[1])
    write_files(b, {f"3/{RID[9]}/meta.yaml": run_meta(RID[9], "3")})
    old(b)
    assert sync([str(b)], target).ok
    new = pg.query(target, "INSERT INTO experiments (name, lifecycle_stage, artifact_location) "
                   "VALUES ('ui-3', 'active', 'x') RETURNING experiment_id")
    ids = [r[0] for r in pg.query(target, "SELECT experiment_id FROM experiments")]
    assert len(ids) == len(set(ids)) and new[0][0] == max(ids)


def test_dry_run_on_mysql_leaves_no_tables_behind(my, tmp_path):
    src = store(tmp_path / "mlruns")
    target = my.new_db()
    migrate(str(src), target, MigrateOptions())  # a database without any sync state
    before = my.tables(target)
    edit(src / "1" / RID[0] / "tags" / "t", "changed")
    report = sync([str(src)], target, SyncOptions(dry_run=True))
    assert report.ok and report.changes["tags"]["updated"] == 1
    assert my.tables(target) == before
    assert my.query(target, f"SELECT value FROM tags WHERE run_uuid='{RID[0]}' AND `key`='t'") \
        == [("v",)]


def test_a_database_made_by_migrate_is_adopted_then_synced(server, tmp_path):
    src = store(tmp_path / "mlruns")
    target = server.new_db()
    migrate(str(src), target, MigrateOptions())
    edit(src / "1" / RID[0] / "meta.yaml", run_meta(RID[0], "1", status=4, end_time=1718000090000))
    edit(src / "1" / "meta.yaml", experiment_meta("1", "renamed"))
    report = sync([str(src)], target)
    assert report.ok and report.conflicts == []
    assert report.changes["runs"]["updated"] == 1 and report.changes["experiments"]["updated"] == 1
    assert server.query(target, "SELECT COUNT(*) FROM experiments") == [(2,)]
    fresh = server.new_db()
    migrate(str(src), fresh, MigrateOptions())
    assert dump(server, target) == dump(server, fresh)


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_sync_refuses_a_revision_it_does_not_know(kind, tmp_path, request):
    srv = request.getfixturevalue("pg" if kind == "postgresql" else "my")
    src = store(tmp_path / "mlruns")
    target = srv.new_db()
    assert sync([str(src)], target).ok
    execute(target, "UPDATE alembic_version SET version_num = 'ffffffffffff'")
    result = runner.invoke(app, ["sync", str(src), target])
    assert result.exit_code == 1 and "'ffffffffffff'" in result.stderr
