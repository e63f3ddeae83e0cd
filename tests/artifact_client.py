"""Standalone: run INSIDE the full-MLflow venv, against a running ``mlflow server``.

Usage: python artifact_client.py <tracking URI> <request JSON> ; prints one JSON object.

The request names the (database) IDs to read: a run and the files it must hold, a logged model,
registered model versions, a trace, and a new file to log to the run. Everything goes through
MLflow's own client, so artifact URIs are resolved the way users' code resolves them.
"""

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow import MlflowClient


def md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def main(tracking_uri: str, request: dict) -> dict:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, tracking_uri)
    out: dict = {}
    tmp = Path(tempfile.mkdtemp())
    run_id = request["run_id"]
    run = client.get_run(run_id)
    out["run_artifact_uri"] = run.info.artifact_uri
    local = client.download_artifacts(run_id, "", str(tmp / "run"))
    out["run_files"] = {str(p.relative_to(local)): md5(p)
                        for p in sorted(Path(local).rglob("*")) if p.is_file()}
    model = mlflow.pyfunc.load_model(f"models:/{request['model_id']}")
    out["model_predict"] = list(model.predict([1, 2]))
    out["model_artifact_location"] = client.get_logged_model(request["model_id"]).artifact_location
    registered = mlflow.pyfunc.load_model(f"models:/adder/{request['adder_version']}")
    out["registered_predict"] = list(registered.predict([10]))
    notes = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/notes/{request['notes_version']}", dst_path=str(tmp / "notes"))
    out["notes_files"] = sorted(p.name for p in Path(notes).rglob("*") if p.is_file())
    out["notes_storage"] = client.get_model_version_download_uri("notes",
                                                                 request["notes_version"])
    trace = client.get_trace(request["trace_id"])
    out["trace_spans"] = [s.name for s in trace.data.spans]
    new = tmp / "logged-after-migration.txt"
    new.write_text("new\n")
    client.log_artifact(run_id, str(new), "after")
    out["listed_after"] = sorted(f.path for f in client.list_artifacts(run_id, "after"))
    fresh = client.create_run(request["experiment_id"])
    out["new_run_artifact_uri"] = fresh.info.artifact_uri
    client.log_artifact(fresh.info.run_id, str(new))
    out["new_run_id"] = fresh.info.run_id
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
