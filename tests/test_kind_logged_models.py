"""Logged models and run <-> model links: parsing, mapping decisions, invalid input, IDs."""

import hashlib
import sqlite3

import pytest
import yaml
from conftest import experiment_meta, query, run_meta, write_files

from mlflow_fs2sql.errors import InvalidSource
from mlflow_fs2sql.kinds.logged_models import (
    NOT_MIGRATED_NO_META,
    NOTE_COLLIDING,
    NOTE_IDENTICAL,
    LoggedModel,
    ModelLink,
    parse_model_metric_lines,
    sanitize_model_metric,
)
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify
from mlflow_fs2sql.parse import MAX_DOUBLE
from mlflow_fs2sql.rows import rows_for, table_order
from mlflow_fs2sql.walk import Walk

EID = "412345678901234567"
RID = "a" * 32
MID = "m-" + "5" * 32
PATH = "/x/metrics/acc"


def md5(*parts):
    h = hashlib.md5()
    for p in parts:
        h.update(p.encode("utf-8"))
    return h.hexdigest()


def model_yaml(**fields):
    # As MLflow 3.x writes it after finalize_logged_model (no lifecycle_stage).
    meta = {"artifact_location": f"file:///m/{EID}/models/{MID}/artifacts",
            "creation_timestamp": 1718000000300, "experiment_id": EID,
            "last_updated_timestamp": 1718000000900, "model_id": MID, "model_type": "agent",
            "name": "my-model", "source_run_id": RID, "status": 2, "status_message": None}
    meta.update(fields)
    return yaml.safe_dump(meta, default_flow_style=False, allow_unicode=True)


def link_yaml(model_id, kind):
    # FileStore writes destination_id as a copy of source_id (both the model ID).
    if kind == "input":
        return yaml.safe_dump({"destination_id": model_id, "destination_type": "RUN",
                               "source_id": model_id, "source_type": "MODEL", "tags": {}})
    return yaml.safe_dump({"destination_id": model_id, "destination_type": "MODEL_OUTPUT",
                           "source_id": model_id, "source_type": "RUN_OUTPUT", "step": 3,
                           "tags": {}})


def model_store(tmp_path, metrics=None, meta=None, extra=None):
    m = f"{EID}/models/{MID}"
    files = {
        f"{EID}/meta.yaml": experiment_meta(EID, "exp"),
        f"{EID}/{RID}/meta.yaml": run_meta(RID, EID),
        f"{EID}/{RID}/inputs/{md5(MID, RID)}/meta.yaml": link_yaml(MID, "input"),
        f"{EID}/{RID}/outputs/{MID}/meta.yaml": link_yaml(MID, "output"),
        f"{m}/meta.yaml": meta if meta is not None else model_yaml(),
        f"{m}/params/lr": "0.1",
        f"{m}/tags/team/owner": "ålice",
        f"{m}/metrics/acc": metrics if metrics is not None else
        f"1718000000400 0.5 1 {RID}\n1718000000500 nan 2 {RID}\n"
        f"1718000000600 inf 3 {RID} eval ds with spaces 6c3b2a1f\n",
    }
    files.update(extra or {})
    return write_files(tmp_path / "mlruns", files)


def test_metric_line_parser():
    rows = parse_model_metric_lines(
        f"1 0.5 0 {RID}\n2 -inf 1 {RID} ds d1\r\n3 nan 2 {RID} a  b d2\n".encode(), "acc", PATH,
        MID)
    assert rows == [("acc", 1, 0, 0.5, RID, None, None),
                    ("acc", 2, 1, -MAX_DOUBLE, RID, "ds", "d1"),
                    # names may hold spaces (even two): the digest is the last field
                    ("acc", 3, 2, 0.0, RID, "a  b", "d2")]
    for bad in ("1 0.5 0\n", f"1 0.5 0 {RID} ds\n", f"x 0.5 0 {RID}\n", "\n", ""):
        with pytest.raises(InvalidSource):
            parse_model_metric_lines(bad.encode(), "acc", PATH, MID)


def test_sanitize_like_sqlalchemy_store_log_model_metrics():
    # `_, value = self.sanitize_metric_value(metric.value)`: NaN -> 0, the flag is dropped.
    assert sanitize_model_metric(float("nan")) == 0.0
    assert sanitize_model_metric(float("inf")) == MAX_DOUBLE
    assert sanitize_model_metric(float("-inf")) == -MAX_DOUBLE
    assert sanitize_model_metric(1e-300) == 1e-300


def test_logged_model_rows_and_links(tmp_path):
    store = model_store(tmp_path)
    found = list(Walk(str(store)))
    run = [e for e in found if type(e).__name__ == "Run"][0]
    (model,) = [e for e in found if isinstance(e, LoggedModel)]
    rows = rows_for(model)
    assert rows["logged_models"] == [(MID, int(EID), "my-model",
                                      f"file:///m/{EID}/models/{MID}/artifacts", 1718000000300, 1718000000900, 2, "active",
                                      "agent", RID, None)]
    assert rows["logged_model_params"] == [(MID, int(EID), "lr", "0.1")]
    assert rows["logged_model_tags"] == [(MID, int(EID), "team/owner", "ålice")]
    assert rows["logged_model_metrics"] == [
        (MID, "acc", 1718000000400, 1, 0.5, int(EID), RID, None, None, None),
        (MID, "acc", 1718000000500, 2, 0.0, int(EID), RID, None, None, None),
        (MID, "acc", 1718000000600, 3, MAX_DOUBLE, int(EID), RID, None, "eval ds with spaces",
         "6c3b2a1f")]
    assert all(isinstance(a, ModelLink) for a in run.attached)
    # Direction reversed, as SqlAlchemyStore.log_inputs / log_outputs write them.
    links = sorted(r[1:] for r in rows_for(run)["inputs"])
    assert links == [("RUN_INPUT", RID, "MODEL_INPUT", MID, 0),
                     ("RUN_OUTPUT", RID, "MODEL_OUTPUT", MID, 3)]


def test_tables_come_after_inputs():
    order = table_order()
    i = order.index("input_tags")
    assert order[i + 1:i + 5] == ("logged_models", "logged_model_params", "logged_model_tags",
                                  "logged_model_metrics")


def test_round_trip_is_deterministic_and_verifies(tmp_path):
    store = model_store(tmp_path)
    for name in ("1.db", "2.db"):
        report = migrate(str(store), str(tmp_path / name))
        assert report.written["logged_model_metrics"] == 3 and report.written["inputs"] == 2
    for table in ("logged_models", "logged_model_metrics", "inputs"):
        sql = f"SELECT * FROM {table} ORDER BY 1, 2, 3"
        assert query(str(tmp_path / "1.db"), sql) == query(str(tmp_path / "2.db"), sql)
    assert query(str(tmp_path / "1.db"), "PRAGMA foreign_key_check") == []
    assert verify(str(store), str(tmp_path / "1.db")).ok


def test_lifecycle_and_status(tmp_path):
    walk = Walk(str(model_store(tmp_path, meta=model_yaml(lifecycle_stage="deleted", status=3))))
    (model,) = [e for e in walk if isinstance(e, LoggedModel)]
    assert (model.lifecycle_stage, model.status) == ("deleted", 3)
    bad = model_store(tmp_path / "b", meta=model_yaml(status=7))
    with pytest.raises(InvalidSource, match="status"):
        list(Walk(str(bad)))


def test_model_in_wrong_folder_or_missing_fields_is_invalid(tmp_path):
    for i, meta in enumerate([model_yaml(experiment_id="1"), model_yaml(model_id="m-other"),
                              model_yaml(name=None), "just text\n"]):
        store = model_store(tmp_path / str(i), meta=meta)
        with pytest.raises(InvalidSource) as err:
            list(Walk(str(store)))
        assert err.value.kind == "logged model" and err.value.entity_id == MID


def test_metric_from_a_run_not_in_the_store_invalidates_the_model(tmp_path):
    gone = "9" * 32
    store = model_store(tmp_path, metrics=f"1 0.5 0 {RID}\n2 0.7 1 {gone}\n")
    with pytest.raises(InvalidSource, match=gone):
        migrate(str(store), str(tmp_path / "strict.db"))
    out = str(tmp_path / "skip.db")
    report = migrate(str(store), out, MigrateOptions(skip_invalid=True))
    assert [(s.kind, s.entity_id) for s in report.skipped] == [("logged model", MID)]
    assert report.written["logged_models"] == 0 and report.written["runs"] == 1
    assert query(out, "PRAGMA foreign_key_check") == []
    assert verify(str(store), out, skip_invalid=True).ok


def test_metric_from_a_skipped_run_invalidates_the_model(tmp_path):
    store = model_store(tmp_path)
    (store / EID / RID / "params").mkdir()
    (store / EID / RID / "params" / "bad").write_bytes(b"\xff")
    report = migrate(str(store), str(tmp_path / "o.db"), MigrateOptions(skip_invalid=True))
    assert [s.kind for s in report.skipped] == ["run", "logged model"]


def test_identical_and_colliding_lines(tmp_path):
    store = model_store(tmp_path, metrics=(f"1 0.5 0 {RID}\n1 0.5 0 {RID}\n1 0.9 0 {RID}\n"
                                           f"1 0.5 0 {RID} ds d\n2 0.5 0 {RID}\n"))
    out = str(tmp_path / "o.db")
    report = migrate(str(store), out)
    assert query(out, "SELECT metric_timestamp_ms, metric_value, dataset_name FROM "
                      "logged_model_metrics ORDER BY 1") == [(1, 0.5, None), (2, 0.5, None)]
    assert NOTE_IDENTICAL.format(n=1) in report.notes
    assert NOTE_COLLIDING.format(n=2) in report.notes
    assert verify(str(store), out).ok


def test_folder_without_meta_yaml_is_reported(tmp_path):
    store = model_store(tmp_path, extra={f"{EID}/models/m-{'7' * 32}/metrics/x": f"1 1 0 {RID}\n"})
    report = migrate(str(store), str(tmp_path / "o.db"))
    assert [p.rsplit("/", 1)[1] for p in report.not_migrated[NOT_MIGRATED_NO_META]] == [
        f"m-{'7' * 32}"]
    assert report.written["logged_models"] == 1


def test_output_in_a_folder_that_disagrees_with_the_file_is_invalid(tmp_path):
    store = model_store(tmp_path, extra={
        f"{EID}/{RID}/outputs/m-other/meta.yaml": link_yaml(MID, "output")})
    with pytest.raises(InvalidSource) as err:
        list(Walk(str(store)))
    assert err.value.kind == "run" and "m-other" in str(err.value)


def test_link_to_a_model_that_no_longer_exists_is_kept(tmp_path):
    # No foreign key on inputs; MLflow's FileStore and SQL store both list such links.
    gone = "m-" + "0" * 32
    store = model_store(tmp_path, extra={
        f"{EID}/{RID}/outputs/{gone}/meta.yaml": link_yaml(gone, "output")})
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    assert (gone,) in query(out, "SELECT destination_id FROM inputs")


def test_verify_names_a_changed_logged_model_field(tmp_path):
    store = model_store(tmp_path)
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    con = sqlite3.connect(out)
    con.execute("UPDATE logged_model_params SET param_value = '0.2'")
    con.execute("UPDATE inputs SET step = 4 WHERE source_type = 'RUN_OUTPUT'")
    con.commit()
    con.close()
    report = verify(str(store), out)
    assert report.exit_code == 3
    text = "\n".join(report.mismatches)
    assert f"Logged model param ('{MID}', 'lr')" in text and "'param_value'" in text
    assert "RUN_OUTPUT" in text and "'step'" in text
