"""Write the tiny sample store shipped in the package (``fs2sql migrate --example``).

Run from the repo root: ``python -m fixtures_gen.make_example``. It drives real MLflow (the
fixture venv of ``versions.LATEST_3X``) to write a FileStore, then copies it into
``src/mlflow_fs2sql/data/example-mlruns`` with artifact URIs rewritten to a neutral prefix (the
sample has no artifacts). Deterministic apart from the IDs and creation times MLflow draws.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .envs import ensure_venv
from .versions import LATEST_3X

DEST = Path(__file__).resolve().parents[1] / "src" / "mlflow_fs2sql" / "data" / "example-mlruns"

SCRIPT = r'''
import os, sys
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
import mlflow
from mlflow import MlflowClient
root = sys.argv[1]
uri = "file://" + root
mlflow.set_tracking_uri(uri); mlflow.set_registry_uri(uri)
c = MlflowClient(uri, uri)
c.get_experiment("0") if os.path.isdir(os.path.join(root, "0")) else None
exp = c.create_experiment("demo-churn", tags={"team": "data-science",
                                               "mlflow.note.content": "Sample store\r\nfor fs2sql"})
for i, (lr, status) in enumerate([(0.1, "FINISHED"), (0.01, "FINISHED"), (0.5, "FAILED")]):
    run = c.create_run(exp, run_name=f"train-{i}", start_time=1718000000000 + i * 60000)
    rid = run.info.run_id
    c.log_param(rid, "lr", str(lr)); c.log_param(rid, "model", "gbm")
    c.set_tag(rid, "data/version", "v3")
    for step in range(5):
        value = float("nan") if status == "FAILED" and step == 4 else 1.0 / (1 + step * lr * 10)
        c.log_metric(rid, "loss", value, timestamp=1718000000000 + i * 60000 + step * 1000,
                     step=step)
    c.log_metric(rid, "val/auc", 0.8 + i / 100, timestamp=1718000000000 + i * 60000 + 5000)
    c.set_terminated(rid, status, end_time=1718000000000 + i * 60000 + 6000)
c.delete_run(rid)
c.create_registered_model("churn-classifier", description="demo model")
c.create_model_version("churn-classifier", f"runs:/{rid}/model", run_id=rid)
'''


def main() -> int:
    python = ensure_venv(LATEST_3X)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "mlruns")
        subprocess.run([str(python), "-c", SCRIPT, root], check=True,
                       env={**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"})
        shutil.rmtree(DEST, ignore_errors=True)
        for dirpath, _, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for name in files:
                src = os.path.join(dirpath, name)
                data = Path(src).read_bytes().replace(("file://" + root).encode(),
                                                      b"file:///example/mlruns")
                out = DEST / rel / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
    (DEST.parent / "EXAMPLE_VERSION").write_text(f"written by MLflow {LATEST_3X}\n")
    size = sum(p.stat().st_size for p in DEST.rglob("*") if p.is_file())
    print(f"wrote {DEST} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
