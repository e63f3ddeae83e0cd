"""Datasets, dataset inputs and input tags: parsing, mapping decisions, invalid input, IDs."""

import hashlib
import sqlite3

import pytest
import yaml
from conftest import experiment_meta, query, run_meta, write_files

from mlflow_fs2sql.errors import InvalidSource
from mlflow_fs2sql.kinds.datasets import (
    NOT_MIGRATED_DUPLICATE_INPUT,
    NOT_MIGRATED_MISSING_DATASET,
    NOT_MIGRATED_RUN_VERTEX,
    Dataset,
    DatasetInput,
    dataset_uuid,
)
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify
from mlflow_fs2sql.rows import rows_for, table_order
from mlflow_fs2sql.walk import Walk

EID = "412345678901234567"
RID = "a" * 32
RID2 = "b" * 32


def md5(*parts):
    h = hashlib.md5()
    for p in parts:
        h.update(p.encode("utf-8"))
    return h.hexdigest()


def dataset_yaml(name="eval-ds", digest="6c3b2a1f", **extra):
    meta = {"digest": digest, "name": name, "profile": '{"num_rows": 3}',
            "schema": '{"mlflow_colspec": []}', "source": '{"uri": "s3://b/d.csv"}',
            "source_type": "s3"}
    meta.update(extra)
    return yaml.safe_dump(meta, default_flow_style=False, allow_unicode=True)


def input_yaml(source_id, tags=None, source_type="DATASET"):
    # As FileStore._FileStoreInput.write_yaml writes it: destination_id is a copy of source_id.
    return yaml.safe_dump({"destination_id": source_id, "destination_type": "RUN",
                           "source_id": source_id, "source_type": source_type,
                           "tags": tags if tags is not None else {}},
                          default_flow_style=False, allow_unicode=True)


def store_with_dataset(tmp_path, name="eval-ds", digest="6c3b2a1f", tags=None, extra=None):
    did = md5(name, digest)
    files = {
        f"{EID}/meta.yaml": experiment_meta(EID, "exp"),
        f"{EID}/datasets/{did}/meta.yaml": dataset_yaml(name, digest),
        f"{EID}/{RID}/meta.yaml": run_meta(RID, EID),
        f"{EID}/{RID}/inputs/{md5(did, RID)}/meta.yaml": input_yaml(
            did, tags if tags is not None else {"mlflow.data.context": "training", "split": "ü"}),
    }
    files.update(extra or {})
    return write_files(tmp_path / "mlruns", files), did


def entities(store, **kw):
    return list(Walk(str(store), **kw))


def test_dataset_and_input_rows(tmp_path):
    store, _did = store_with_dataset(tmp_path)
    found = entities(store)
    run = [e for e in found if type(e).__name__ == "Run"][0]
    (ds,) = [e for e in found if isinstance(e, Dataset)]
    (inp,) = run.attached
    assert isinstance(inp, DatasetInput)
    uuid_ = dataset_uuid(int(EID), "eval-ds", "6c3b2a1f")
    assert ds.dataset_uuid == uuid_ and len(uuid_) == 32
    assert rows_for(ds) == {"datasets": [(uuid_, int(EID), "eval-ds", "6c3b2a1f", "s3",
                                          '{"uri": "s3://b/d.csv"}', '{"mlflow_colspec": []}',
                                          '{"num_rows": 3}')]}
    rows = rows_for(run)
    # The run comes from its folder, not from the file's destination_id (a copy of source_id).
    assert rows["inputs"] == [(inp.input_uuid, "DATASET", uuid_, "RUN", RID, 0)]
    assert sorted(rows["input_tags"]) == [(inp.input_uuid, "mlflow.data.context", "training"),
                                          (inp.input_uuid, "split", "ü")]


def test_tables_come_after_their_parents():
    order = table_order()
    assert order.index("datasets") == order.index("experiment_tags") + 1
    assert order.index("latest_metrics") < order.index("inputs") < order.index("input_tags")


def test_ids_are_deterministic_and_include_the_experiment(tmp_path):
    a = dataset_uuid(1, "ds", "d1")
    assert a == dataset_uuid(1, "ds", "d1")
    assert a != dataset_uuid(2, "ds", "d1")  # the folder md5 repeats across experiments
    # md5(name + digest) has no separator; the derived ID does.
    assert dataset_uuid(1, "ab", "c") != dataset_uuid(1, "a", "bc")
    store, _ = store_with_dataset(tmp_path)
    one = migrate(str(store), str(tmp_path / "1.db"))
    migrate(str(store), str(tmp_path / "2.db"))
    assert one.written["inputs"] == 1
    for table in ("datasets", "inputs", "input_tags"):
        sql = f"SELECT * FROM {table} ORDER BY 1, 2, 3"
        assert query(str(tmp_path / "1.db"), sql) == query(str(tmp_path / "2.db"), sql)


def test_yaml_name_and_digest_decide_not_the_folder_name(tmp_path):
    # A folder named after (ab, c) may hold (a, bc): the YAML values identify the dataset.
    folder = md5("ab", "c")
    store = write_files(tmp_path / "mlruns", {
        f"{EID}/meta.yaml": experiment_meta(EID, "exp"),
        f"{EID}/datasets/{folder}/meta.yaml": dataset_yaml("a", "bc"),
        f"{EID}/{RID}/meta.yaml": run_meta(RID, EID),
        f"{EID}/{RID}/inputs/{md5(folder, RID)}/meta.yaml": input_yaml(folder),
    })
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    assert query(out, "SELECT name, digest FROM datasets") == [("a", "bc")]
    assert query(out, "SELECT d.name FROM inputs i JOIN datasets d "
                      "ON i.source_id = d.dataset_uuid") == [("a",)]


def test_missing_dataset_folder_is_reported_and_the_run_migrated(tmp_path):
    # MLflow's FileStore: "Failed to find dataset ... Skipping." -- the run is shown without it.
    store, _did = store_with_dataset(tmp_path)
    other = "f" * 32
    write_files(store, {f"{EID}/{RID}/inputs/{md5(other, RID)}/meta.yaml": input_yaml(other)})
    out = str(tmp_path / "o.db")
    report = migrate(str(store), out)
    assert report.written["runs"] == 1 and report.written["inputs"] == 1
    (path,) = report.not_migrated[NOT_MIGRATED_MISSING_DATASET]
    assert path.endswith(f"{md5(other, RID)}/meta.yaml")
    assert report.exit_code == 0
    assert verify(str(store), out).ok


def test_no_datasets_folder_at_all(tmp_path):
    store, _did = store_with_dataset(tmp_path)
    import shutil

    shutil.rmtree(store / EID / "datasets")
    report = migrate(str(store), str(tmp_path / "o.db"))
    assert report.written["inputs"] == 0
    assert len(report.not_migrated[NOT_MIGRATED_MISSING_DATASET]) == 1


def test_unreadable_dataset_makes_its_runs_invalid(tmp_path):
    # MLflow's get_run raises on such a run; strict mode stops, --skip-invalid skips run + dataset.
    store, did = store_with_dataset(tmp_path)
    (store / EID / "datasets" / did / "meta.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InvalidSource) as err:
        migrate(str(store), str(tmp_path / "strict.db"))
    assert err.value.kind == "run" and err.value.entity_id == RID
    assert "datasets" in str(err.value)
    assert not (tmp_path / "strict.db").exists()
    report = migrate(str(store), str(tmp_path / "skip.db"), MigrateOptions(skip_invalid=True))
    assert sorted((s.kind, s.entity_id) for s in report.skipped) == [
        ("dataset", f"{EID}/{did}"), ("run", RID)]
    assert report.exit_code == 4
    assert report.written["datasets"] == 0 and report.written["inputs"] == 0
    assert verify(str(store), str(tmp_path / "skip.db"), skip_invalid=True).ok


def test_dataset_missing_required_field_is_invalid(tmp_path):
    store, did = store_with_dataset(tmp_path)
    (store / EID / "datasets" / did / "meta.yaml").write_text(
        yaml.safe_dump({"name": "eval-ds", "digest": "6c3b2a1f", "source_type": "s3"}))
    with pytest.raises(InvalidSource, match="no 'source'"):
        entities(store)


def test_over_long_input_tag_is_invalid_for_the_run(tmp_path):
    store, _ = store_with_dataset(tmp_path, tags={"k": "v" * 501})
    with pytest.raises(InvalidSource) as err:
        migrate(str(store), str(tmp_path / "o.db"))
    assert err.value.kind == "run" and "input_tags.value" in str(err.value)
    report = migrate(str(store), str(tmp_path / "s.db"), MigrateOptions(skip_invalid=True))
    assert [(s.kind, s.entity_id) for s in report.skipped] == [("run", RID)]
    assert report.written["datasets"] == 1  # the dataset itself is fine


def test_duplicate_dataset_name_and_digest_in_one_experiment(tmp_path):
    store, did = store_with_dataset(tmp_path)
    copy = "0" * 32
    write_files(store, {f"{EID}/datasets/{copy}/meta.yaml": dataset_yaml()})
    with pytest.raises(InvalidSource, match="same name"):
        entities(store)
    walk = Walk(str(store), skip_invalid=True)
    found = list(walk)
    assert [s.entity_id for s in walk.skipped] == [f"{EID}/{did}"]  # sorted: 000.. comes first
    assert len([e for e in found if isinstance(e, Dataset)]) == 1


def test_input_tag_values_are_text_and_null_is_invalid(tmp_path):
    store, _ = store_with_dataset(tmp_path, tags={"n": 3, "b": True})
    run = [e for e in entities(store) if type(e).__name__ == "Run"][0]
    assert run.attached[0].tags == (("b", "true"), ("n", "3"))
    store2, _ = store_with_dataset(tmp_path / "2", tags={"n": None})
    with pytest.raises(InvalidSource, match="NOT NULL"):
        entities(store2)


def test_unknown_source_type_is_invalid_and_run_vertex_reported(tmp_path):
    store, _did = store_with_dataset(tmp_path, extra={
        f"{EID}/{RID}/inputs/{'9' * 32}/meta.yaml": input_yaml("x", source_type="TABLE")})
    with pytest.raises(InvalidSource, match="source_type"):
        entities(store)
    store2, _ = store_with_dataset(tmp_path / "2", extra={
        f"{EID}/{RID}/inputs/{'9' * 32}/meta.yaml": input_yaml("x", source_type="RUN")})
    walk = Walk(str(store2))
    list(walk)
    assert len(walk.not_migrated[NOT_MIGRATED_RUN_VERTEX]) == 1


def test_same_dataset_twice_in_one_run_is_kept_once(tmp_path):
    store, _did = store_with_dataset(tmp_path)
    copy = "0" * 32
    write_files(store, {f"{EID}/datasets/{copy}/meta.yaml": dataset_yaml(),
                        f"{EID}/{RID}/inputs/{'1' * 32}/meta.yaml": input_yaml(copy)})
    walk = Walk(str(store), skip_invalid=True)
    runs = [e for e in walk if type(e).__name__ == "Run"]
    assert len(runs[0].attached) == 1
    assert len(walk.not_migrated[NOT_MIGRATED_DUPLICATE_INPUT]) == 1


def test_two_runs_share_one_dataset_across_two_experiments(tmp_path):
    e2, did = "2", md5("eval-ds", "6c3b2a1f")
    store, _ = store_with_dataset(tmp_path, extra={
        f"{e2}/meta.yaml": experiment_meta(e2, "other"),
        f"{e2}/datasets/{did}/meta.yaml": dataset_yaml(),
        f"{e2}/{RID2}/meta.yaml": run_meta(RID2, e2),
        f"{e2}/{RID2}/inputs/{md5(did, RID2)}/meta.yaml": input_yaml(did),
    })
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    assert query(out, "SELECT COUNT(DISTINCT dataset_uuid) FROM datasets") == [(2,)]
    assert query(out, "SELECT i.destination_id, d.experiment_id FROM inputs i JOIN datasets d "
                      "ON i.source_id = d.dataset_uuid ORDER BY 1") == [
        (RID, int(EID)), (RID2, 2)]
    assert verify(str(store), out).ok


def test_verify_names_a_changed_dataset_field(tmp_path):
    store, _ = store_with_dataset(tmp_path)
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    con = sqlite3.connect(out)
    con.execute("UPDATE datasets SET dataset_profile = 'x'")
    con.execute("UPDATE input_tags SET value = 'eval' WHERE name = 'mlflow.data.context'")
    con.commit()
    con.close()
    report = verify(str(store), out)
    assert report.exit_code == 3
    text = "\n".join(report.mismatches)
    assert "Dataset" in text and "'dataset_profile'" in text
    assert "Input tag" in text and "'value'" in text
