"""Oracle: MLflow's SQL store sees the datasets, run inputs/outputs and logged models of the
migrated DB exactly as its FileStore sees them in the source.

For fixture stores written by MLflow 2.22.5 (datasets and dataset inputs only: logged models came
with 3.0), 3.2.0 and 3.17.2 (size ``full``): migrate, verify, then run the small dump script below
in the oracle reader's venv (the installed mlflow-skinny, ``conftest.oracle_reader``) against a copy of the FileStore and a copy of the DB (both stores
may write while reading) and compare ``get_run(...).inputs`` / ``.outputs``,
``search_logged_models`` and ``get_logged_model`` (params, tags, metrics).

Normalised differences (each is how MLflow's own SQL store behaves, not a migration loss):

* Logged-model metric values: ``SqlAlchemyStore._log_model_metrics`` stores
  ``sanitize_metric_value(v)[1]``, i.e. NaN as 0 and +-Inf as +-1.7976931348623157e308, so the SQL
  store returns those where the FileStore returns nan/inf (the FileStore side is mapped the same).
* Logged-model metrics per key: ``FileStore._get_model_metrics_from_file`` returns only the
  maximum by (step, timestamp, value) of each (dataset_name, dataset_digest) group, while
  ``SqlLoggedModel.to_mlflow_entity`` returns every row; the SQL side is reduced the same way.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from conftest import fixture_store, oracle_python

from mlflow_fs2sql.migrate import migrate, verify
from mlflow_fs2sql.parse import MAX_DOUBLE

pytestmark = pytest.mark.oracle


DUMP = textwrap.dedent(r'''
    import json, math, os, sys, warnings
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    warnings.filterwarnings("ignore")
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    uri, out = sys.argv[1], sys.argv[2]
    client = MlflowClient(tracking_uri=uri)

    def num(v):
        return v if v is None or math.isfinite(v) else repr(v)

    def metric(m):
        return {"key": m.key, "value": num(m.value), "timestamp": m.timestamp, "step": m.step,
                "run_id": m.run_id, "dataset_name": m.dataset_name,
                "dataset_digest": m.dataset_digest, "model_id": m.model_id}

    def model(m):
        return {"model_id": m.model_id, "experiment_id": m.experiment_id, "name": m.name,
                "artifact_location": m.artifact_location,
                "creation_timestamp": m.creation_timestamp,
                "last_updated_timestamp": m.last_updated_timestamp,
                "status": str(m.status), "status_message": m.status_message,
                "model_type": m.model_type, "source_run_id": m.source_run_id,
                "tags": dict(m.tags or {}), "params": dict(m.params or {}),
                "metrics": [metric(x) for x in (m.metrics or [])]}

    def key(d):
        return json.dumps(d, sort_keys=True, ensure_ascii=False)

    exps = client.search_experiments(view_type=ViewType.ALL, max_results=50000)
    exp_ids = [e.experiment_id for e in exps]
    result = {"runs": {}, "search_logged_models": [], "get_logged_model": {}}
    for run in client.search_runs(exp_ids, run_view_type=ViewType.ALL, max_results=50000):
        full = client.get_run(run.info.run_id)
        result["runs"][run.info.run_id] = {
            "dataset_inputs": sorted((key({"dataset": dict(d.dataset),
                                           "tags": sorted([t.key, t.value] for t in d.tags)})
                                      for d in full.inputs.dataset_inputs)),
            "model_inputs": sorted(m.model_id for m in (full.inputs.model_inputs or [])),
            "model_outputs": sorted([m.model_id, m.step]
                                    for m in (full.outputs.model_outputs or [])),
        }
    if hasattr(client, "search_logged_models"):
        found = client.search_logged_models(experiment_ids=exp_ids, max_results=50000)
        result["search_logged_models"] = sorted((model(m) for m in found),
                                                key=lambda m: m["model_id"])
        for m in found:
            result["get_logged_model"][m.model_id] = model(client.get_logged_model(m.model_id))
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, sort_keys=True, ensure_ascii=False)
''')


def _dump(uri: str, tmp) -> dict:
    script, out = tmp / "dump.py", tmp / "dump.json"
    script.write_text(DUMP, encoding="utf-8")
    proc = subprocess.run([str(oracle_python()), str(script), uri, str(out)], cwd=tmp, check=False,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def _sql_value(value):
    """What SqlAlchemyStore._log_model_metrics stores for a FileStore value (module docstring)."""
    if value == "nan":
        return 0.0
    if value in ("inf", "-inf"):
        return MAX_DOUBLE if value == "inf" else -MAX_DOUBLE
    return value


def _normalise_filestore_model(model: dict) -> dict:
    metrics = [dict(m, value=_sql_value(m["value"])) for m in model["metrics"]]
    return dict(model, metrics=sorted(metrics, key=lambda m: json.dumps(m, sort_keys=True)))


def _normalise_sql_model(model: dict) -> dict:
    """Keep only the (step, timestamp, value) maximum per (key, dataset) as the FileStore does."""
    best = {}
    for m in model["metrics"]:
        group = (m["key"], m["dataset_name"], m["dataset_digest"])
        rank = (m["step"], m["timestamp"], m["value"])
        if group not in best or rank > best[group][0]:
            best[group] = (rank, m)
    metrics = [m for _, m in best.values()]
    return dict(model, metrics=sorted(metrics, key=lambda m: json.dumps(m, sort_keys=True)))


@pytest.fixture(scope="module", params=["2.22.5", "3.2.0", "3.17.2"])
def migrated(request, tmp_path_factory):
    version = request.param
    tmp = tmp_path_factory.mktemp(f"oracle-ds-{version}")
    source = fixture_store(version, "full")
    db = tmp / "out.db"
    report = migrate(str(source), str(db))
    assert report.exit_code == 0, report.skipped
    return version, source, db, report, tmp


def test_migrated_store_verifies(migrated):
    version, source, db, report, _ = migrated
    assert report.written["datasets"] > 0 and report.written["input_tags"] > 0
    if version != "2.22.5":
        assert report.written["logged_models"] > 0
        assert report.written["logged_model_metrics"] > 0
    checked = verify(str(source), str(db))
    assert checked.ok, checked.mismatches[:10]
    assert checked.verified["inputs"] == report.written["inputs"]


def test_mlflow_sql_store_sees_what_the_file_store_sees(migrated):
    version, source, db, report, tmp = migrated
    (tmp / "fs").mkdir(exist_ok=True)
    (tmp / "sql").mkdir(exist_ok=True)
    store_copy = tmp / "fs" / "mlruns"
    if not store_copy.exists():
        shutil.copytree(source, store_copy, symlinks=True)
    db_copy = tmp / "sql" / "copy.db"
    shutil.copyfile(db, db_copy)
    fs = _dump(store_copy.as_uri(), tmp / "fs")
    sql = _dump(f"sqlite:///{db_copy}", tmp / "sql")

    assert set(fs["runs"]) == set(sql["runs"])
    assert any(r["dataset_inputs"] for r in fs["runs"].values())
    if version != "2.22.5":
        assert any(r["model_inputs"] and r["model_outputs"] for r in fs["runs"].values())
    for run_id, seen in fs["runs"].items():
        assert sql["runs"][run_id] == seen, run_id

    fs_models = [_normalise_filestore_model(m) for m in fs["search_logged_models"]]
    sql_models = [_normalise_sql_model(m) for m in sql["search_logged_models"]]
    assert len(fs_models) == report.written["logged_models"]
    assert sql_models == fs_models
    assert set(sql["get_logged_model"]) == set(fs["get_logged_model"])
    for mid, seen in fs["get_logged_model"].items():
        assert _normalise_sql_model(sql["get_logged_model"][mid]) == \
            _normalise_filestore_model(seen), mid
    if version != "2.22.5":
        values = {m["value"] for model in fs["search_logged_models"] for m in model["metrics"]}
        assert {"nan", "inf"} <= values  # the normalised cases really occur


def test_verify_fails_on_a_changed_value(migrated, tmp_path):
    version, source, db, _, _ = migrated
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(db, damaged)
    con = sqlite3.connect(damaged)
    if version == "2.22.5":
        con.execute("UPDATE input_tags SET value = 'tampered' WHERE rowid = "
                    "(SELECT MIN(rowid) FROM input_tags)")
        expect = ("Input tag", "'value'")
    else:
        con.execute("UPDATE logged_model_metrics SET metric_value = 42.5 WHERE rowid = "
                    "(SELECT MIN(rowid) FROM logged_model_metrics)")
        expect = ("Logged model metric", "'metric_value'")
    con.commit()
    con.close()
    cli = os.path.join(os.path.dirname(sys.executable), "fs2sql")
    proc = subprocess.run([cli, "verify", str(source), str(damaged)], check=False,
                          capture_output=True,
                          text=True, env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
    assert len(lines) == 1 and all(part in lines[0] for part in expect), lines
