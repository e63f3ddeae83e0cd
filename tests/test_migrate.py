"""Library-level migration tests: round trips, atomicity, targets, verify failing on damage."""

import math
import os
import sqlite3
import string

import pytest
from conftest import default_schema, experiment_meta, query, run_meta, tree_hash, write_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_fs2sql.errors import InvalidSource, SourceError, TargetError
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify
from mlflow_fs2sql.parse import MAX_DOUBLE, is_junk, sanitize_metric


def test_tiny_store_round_trip(tiny_store, tmp_path):
    out = str(tmp_path / "out.db")
    before = tree_hash(tiny_store)
    report = migrate(str(tiny_store), out)
    assert report.written["runs"] == 1 and report.written["metrics"] == 2
    assert query(out, "SELECT key, value, run_uuid FROM params") == [("lr", "0.1", "a" * 32)]
    assert query(out, "SELECT key, value, timestamp, step, is_nan FROM latest_metrics") == [
        ("loss", 0.25, 1718000000200, 1, 0)]
    assert query(out, "SELECT experiment_id, name FROM experiments") == [(0, "Default")]
    if "workspace" in default_schema()[1]["experiments"]:  # MLflow >= 3.10 schemas
        assert query(out, "SELECT workspace FROM experiments") == [("default",)]
    assert query(out, "PRAGMA foreign_key_check") == []
    assert query(out, "PRAGMA journal_mode") == [("delete",)]
    assert query(out, "SELECT version_num FROM alembic_version") == [(report.revision,)]
    assert verify(str(tiny_store), out).ok
    assert tree_hash(tiny_store) == before
    assert sorted(os.listdir(tmp_path)) == ["mlruns", "out.db"]  # no temporary file left


def test_source_may_be_the_folder_containing_mlruns(tiny_store, tmp_path):
    report = migrate(str(tiny_store.parent), str(tmp_path / "o.db"))
    assert report.source == str(tiny_store)


def test_sqlite_uri_target(tiny_store, tmp_path):
    migrate(str(tiny_store), f"sqlite:///{tmp_path}/u.db")
    assert (tmp_path / "u.db").exists()


def test_large_experiment_ids_deleted_entities_and_exact_text(tmp_path):
    eid, rid, did = "412345678901234567", "b" * 32, "c" * 32
    store = write_files(tmp_path / "mlruns", {
        f"{eid}/meta.yaml": experiment_meta(eid, "实验 🚀"),
        f"{eid}/tags/a/b/c": "line1\r\nline2\n",
        f"{eid}/{rid}/meta.yaml": run_meta(rid, eid, status=4, run_name="ä-run"),
        f"{eid}/{rid}/params/long": "p" * 8000,
        f"{eid}/{rid}/tags/team/owner/name": "",
        f"{eid}/{rid}/metrics/m": "1 nan 0\n2 inf 1\n3 -inf 2\n",
        f"{eid}/{did}/meta.yaml": run_meta(did, eid, lifecycle_stage="deleted",
                                           deleted_time=1718000099000),
        # Deleted by MLflow <= 2.2: in .trash but the file still says active.
        ".trash/7/meta.yaml": experiment_meta("7", "old", lifecycle_stage="active"),
    })
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    assert query(out, "SELECT experiment_id, name, lifecycle_stage FROM experiments "
                      "ORDER BY experiment_id") == [(7, "old", "deleted"),
                                                    (int(eid), "实验 🚀", "active")]
    assert query(out, "SELECT key, value FROM experiment_tags") == [("a/b/c", "line1\r\nline2\n")]
    assert query(out, "SELECT value FROM params") == [("p" * 8000,)]
    assert query(out, "SELECT key, value FROM tags") == [("team/owner/name", "")]
    assert query(out, f"SELECT status, name FROM runs WHERE run_uuid='{rid}'") == [
        ("FAILED", "ä-run")]
    assert query(out, f"SELECT lifecycle_stage, deleted_time FROM runs WHERE run_uuid='{did}'") \
        == [("deleted", 1718000099000)]
    assert query(out, "SELECT value, is_nan FROM metrics ORDER BY step") == [
        (0.0, 1), (MAX_DOUBLE, 0), (-MAX_DOUBLE, 0)]
    assert verify(str(store), out).ok


def test_value_longer_than_its_column_is_an_error_never_cut(tmp_path):
    rid = "d" * 32
    store = write_files(tmp_path / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        f"0/{rid}/meta.yaml": run_meta(rid, "0"),
        f"0/{rid}/params/big": "x" * 8001,
    })
    out = tmp_path / "o.db"
    with pytest.raises(InvalidSource, match=r"params.value holds at most 8000 .* 8001"):
        migrate(str(store), str(out))
    assert sorted(os.listdir(tmp_path)) == ["mlruns"]
    report = migrate(str(store), str(out), MigrateOptions(skip_invalid=True))
    assert [(s.kind, s.entity_id) for s in report.skipped] == [("run", rid)]
    assert report.exit_code == 4
    assert query(str(out), "SELECT COUNT(*) FROM runs") == [(0,)]
    assert verify(str(store), str(out), skip_invalid=True).ok


def test_existing_target_is_refused_then_replaced_with_overwrite(tiny_store, tmp_path):
    out = tmp_path / "o.db"
    out.write_bytes(b"not a database")
    with pytest.raises(TargetError, match="not an SQLite database"):
        migrate(str(tiny_store), str(out))
    assert out.read_bytes() == b"not a database"
    migrate(str(tiny_store), str(out), MigrateOptions(overwrite=True))
    with pytest.raises(TargetError, match="MLflow database with 1 experiment and 1 run"):
        migrate(str(tiny_store), str(out))


def test_target_folder_missing(tiny_store, tmp_path):
    with pytest.raises(TargetError, match="does not exist"):
        migrate(str(tiny_store), str(tmp_path / "nope" / "o.db"))


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), p)[1], "empty folder"),
    (lambda p: (p.mkdir(), (p / "x.txt").write_text("hi"), p)[2], "not an MLflow FileStore"),
])
def test_source_problems(tmp_path, make, fragment):
    src = make(tmp_path / "src")
    with pytest.raises(SourceError, match=fragment):
        migrate(str(src), str(tmp_path / "o.db"))
    assert not (tmp_path / "o.db").exists()


def test_dry_run_writes_nothing(tiny_store, tmp_path):
    report = migrate(str(tiny_store), str(tmp_path / "o.db"), MigrateOptions(dry_run=True))
    assert report.found["metrics"] == 2 and report.written is None
    assert sorted(os.listdir(tmp_path)) == ["mlruns"]


def test_verify_finds_every_kind_of_damage(tiny_store, tmp_path):
    out = str(tmp_path / "o.db")
    migrate(str(tiny_store), out)
    con = sqlite3.connect(out)
    con.execute("UPDATE runs SET end_time = end_time + 1")
    con.execute("UPDATE params SET value = '0.2'")
    con.execute("DELETE FROM metrics WHERE step = 0")
    con.execute(f"INSERT INTO tags VALUES ('extra', 'v', '{'a' * 32}')")
    con.commit()
    con.close()
    report = verify(str(tiny_store), out)
    assert not report.ok and report.exit_code == 3
    text = "\n".join(report.mismatches)
    assert f"FAILED: Run {'a' * 32} — field 'end_time': source=1718000050000, " \
           "target=1718000050001" in text
    assert "param 'lr', field 'value': source='0.1', target='0.2'" in text
    assert "metric 'loss' step=0 timestamp=1718000000100 value=0.5: missing in target" in text
    assert "tag 'extra': in target but not in source" in text
    assert report.mismatch_count == 4


def test_verify_sees_rows_of_runs_that_are_not_in_the_source(tiny_store, tmp_path):
    out = str(tmp_path / "o.db")
    migrate(str(tiny_store), out)
    con = sqlite3.connect(out)
    con.execute("INSERT INTO runs (run_uuid, name, source_type, status, lifecycle_stage, "
                "experiment_id) VALUES ('f' || hex(randomblob(15)), 'x', 'LOCAL', 'FINISHED', "
                "'active', 0)")
    con.commit()
    con.close()
    report = verify(str(tiny_store), out)
    assert report.mismatch_count == 1 and "table runs has 1 row that is not in the source" in report.mismatches[0]


def test_failure_mid_load_leaves_no_target_and_no_temporary(tiny_store, tmp_path, monkeypatch):
    from mlflow_fs2sql.targets import sqlite as sqlite_target

    def boom(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sqlite_target.SqliteTarget, "insert_many", boom)
    with pytest.raises(OSError):
        migrate(str(tiny_store), str(tmp_path / "o.db"))
    assert sorted(os.listdir(tmp_path)) == ["mlruns"]


# -- property: small generated stores round-trip exactly ---------------------------------------
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40)
keys = st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1,
               max_size=12).filter(lambda k: k.strip(" .") == k and not is_junk(k))
metric_values = st.one_of(st.floats(allow_nan=False), st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def stores(draw):
    runs = {}
    for i in range(draw(st.integers(0, 3))):
        rid = f"{i:032x}"
        runs[rid] = {
            "params": draw(st.dictionaries(keys, text, max_size=3)),
            "tags": draw(st.dictionaries(keys, text, max_size=3)),
            "metrics": draw(st.dictionaries(keys, st.lists(
                st.tuples(st.integers(0, 2**53), metric_values, st.integers(0, 5)),
                min_size=1, max_size=5), max_size=2)),
        }
    return draw(st.integers(0, 10**18 - 1)), draw(text.filter(bool)), runs


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(store=stores())
def test_generated_stores_round_trip(tmp_path_factory, store):
    eid, name, runs = store
    root = tmp_path_factory.mktemp("gen") / "mlruns"
    files = {f"{eid}/meta.yaml": experiment_meta(str(eid), name)}
    for rid, run in runs.items():
        files[f"{eid}/{rid}/meta.yaml"] = run_meta(rid, str(eid))
        for k, v in run["params"].items():
            files[f"{eid}/{rid}/params/{k}"] = v
        for k, v in run["tags"].items():
            files[f"{eid}/{rid}/tags/{k}"] = v
        for k, points in run["metrics"].items():
            files[f"{eid}/{rid}/metrics/{k}"] = "".join(f"{t} {v!r} {s}\n" for t, v, s in points)
    write_files(root, files)
    out = str(root.parent / "o.db")
    migrate(str(root), out)
    # The name as MLflow reads it back from its own YAML (e.g. YAML folds U+0085 to a space).
    import yaml

    as_read = yaml.safe_load(yaml.safe_dump(name, allow_unicode=True))
    assert query(out, "SELECT experiment_id, name FROM experiments") == [(eid, as_read)]
    for rid, run in runs.items():
        assert dict(query(out, f"SELECT key, value FROM params WHERE run_uuid='{rid}'")) == \
            run["params"]
        assert dict(query(out, f"SELECT key, value FROM tags WHERE run_uuid='{rid}'")) == \
            run["tags"]
        got = sorted(query(out, f"SELECT key, timestamp, step, value, is_nan FROM metrics "
                                f"WHERE run_uuid='{rid}'"))
        want = sorted({(k, t, s, sanitize_metric(v)[0], int(sanitize_metric(v)[1]))
                       for k, pts in run["metrics"].items() for t, v, s in pts})
        assert got == want
    assert verify(str(root), out).ok
