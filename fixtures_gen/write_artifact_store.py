"""Standalone: run INSIDE a full-MLflow venv. Writes a FileStore whose entities carry real
artifacts, for the artifact round trips (``fixtures_gen/artifact_store.py``).

Usage: python write_artifact_store.py <out_dir>   (writes <out_dir>/mlruns, manifest.json)

Contents: experiment 0 with one run (one file); an experiment with an 18-digit ID holding a run
with files in folders, names with a space and non-ASCII letters and a binary file; a pyfunc
model logged from that run (a logged model with its files); registered model ``adder`` version 1
from the logged model (``source`` ``models:/m-…``) and ``notes`` version 1 from a folder of the
run's artifacts (``source`` a ``file://`` URI inside the run); one trace (``traces.json``).
"""

import hashlib
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
from mlflow import MlflowClient  # noqa: E402


class Adder(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [x + 1 for x in model_input]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main(out: Path) -> None:
    root = out / "mlruns"
    uri = root.as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    work = out / "work"
    work.mkdir(parents=True)
    (work / "notes").mkdir()
    (work / "notes" / "hello.txt").write_text("hello from the store\n")
    (work / "notes" / "my file.txt").write_text("a name with a space\n")
    (work / "données.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    rng = random.Random(14)
    (work / "weights.bin").write_bytes(bytes(rng.getrandbits(8) for _ in range(300_000)))

    with mlflow.start_run(experiment_id="0", run_name="default-run") as run0:
        mlflow.log_text("in the Default experiment\n", "default.txt")
    exp_id = mlflow.create_experiment("artifact-exp")
    mlflow.set_experiment(experiment_id=exp_id)
    with mlflow.start_run(run_name="with-artifacts") as run:
        mlflow.log_artifacts(str(work / "notes"), "notes")
        mlflow.log_artifact(str(work / "données.csv"))
        mlflow.log_artifact(str(work / "weights.bin"), "bin")
        mlflow.log_param("p", "1")
        info = mlflow.pyfunc.log_model(name="adder", python_model=Adder(),
                                       pip_requirements=["mlflow"])
    model_id = info.model_id
    version = mlflow.register_model(f"models:/{model_id}", "adder")
    client.create_registered_model("notes")
    notes_version = client.create_model_version(
        "notes", source=f"{run.info.artifact_uri}/notes", run_id=run.info.run_id)

    @mlflow.trace(name="add_one")
    def add_one(x):
        return x + 1

    add_one(41)
    trace_id = mlflow.get_last_active_trace_id()
    mlflow.flush_trace_async_logging()  # traces.json is written by a background queue

    files = {}
    for folder in root.rglob("artifacts"):
        if folder.is_dir():
            for f in folder.rglob("*"):
                if f.is_file():
                    files[str(f.relative_to(root))] = md5(f)
    manifest = {
        "mlflow_version": mlflow.__version__,
        "experiment_id": exp_id,
        "run_id": run.info.run_id,
        "default_run_id": run0.info.run_id,
        "model_id": model_id,
        "registered": {"adder": version.version, "notes": notes_version.version},
        "trace_id": trace_id,
        "run_files": {"notes/hello.txt": md5(work / "notes" / "hello.txt"),
                      "notes/my file.txt": md5(work / "notes" / "my file.txt"),
                      "données.csv": md5(work / "données.csv"),
                      "bin/weights.bin": md5(work / "weights.bin")},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
