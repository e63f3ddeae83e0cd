"""A FileStore with real artifacts (``write_artifact_store.py``), and SDKs in the server venv.

``ensure_artifact_store()`` returns ``(mlruns, manifest)`` of the store written once by full MLflow
3.17.2 under ``<cache>/stores/mlflow-3.17.2-artifacts`` (lock, marker written last, as
``build.py``; files made read-only: copy before changing). ``ensure_package(version, "boto3")``
adds a package to a fixture venv without touching its requirement marker, so worktrees whose
``envs.requirements`` differ do not rebuild the shared venv back and forth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Tuple

from .build import _make_read_only
from .envs import _uv, cache_root, ensure_venv, file_lock, venv_dir

WRITER = Path(__file__).with_name("write_artifact_store.py")
VERSION = "3.17.2"
MARKER = ".fs2sql-complete"


def ensure_artifact_store() -> Tuple[Path, dict]:
    final = cache_root() / "stores" / f"mlflow-{VERSION}-artifacts"
    if not (final / MARKER).is_file():
        python = ensure_venv(VERSION)
        final.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(final.parent / f".{final.name}.lock"):
            if not (final / MARKER).is_file():
                if final.exists():
                    shutil.rmtree(final)
                final.mkdir()
                try:
                    env = dict(os.environ, MLFLOW_ALLOW_FILE_STORE="true")
                    env.pop("MLFLOW_TRACKING_URI", None)
                    with open(final / "write.log", "wb") as log:
                        subprocess.run([str(python), str(WRITER), str(final)], check=True,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=final, env=env)
                    shutil.rmtree(final / "work")
                    _make_read_only(final / "mlruns")
                    (final / MARKER).write_text(VERSION + "\n")
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)
                    raise
    return final / "mlruns", json.loads((final / "manifest.json").read_text(encoding="utf-8"))


def ensure_package(mlflow_version: str, package: str, module: str = "") -> Path:
    """The venv's python, with ``package`` installed (added once, under the venv's lock)."""
    python = ensure_venv(mlflow_version)
    module = module or package
    probe = [str(python), "-c", f"import {module}"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    with file_lock(venv_dir(mlflow_version).parent / f".mlflow-{mlflow_version}.lock"):
        if subprocess.run(probe, capture_output=True).returncode != 0:
            uv = _uv()
            cmd = ([uv, "pip", "install", "-q", "-p", str(python), package] if uv else
                   [str(python), "-m", "pip", "install", "-q", package])
            subprocess.run(cmd, check=True, env=dict(os.environ, UV_PYTHON_DOWNLOADS="never"))
    return python
