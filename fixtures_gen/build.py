"""Build (or reuse) FileStores written by real MLflow releases.

``ensure_store("3.17.2", "full")`` returns ``<cache>/stores/mlflow-3.17.2-full/mlruns``; the
manifest is ``<cache>/stores/mlflow-3.17.2-full/fixture_manifest.json``. Stores are generated into
a temporary sibling directory and renamed into place, so a store that exists is complete.
Treat them as read-only: copy before changing anything.

CLI::

    python -m fixtures_gen.build --version 3.17.2 --size full
    python -m fixtures_gen.build --all            # every version in versions.py x small, full, edge
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .envs import cache_root, ensure_venv, file_lock
from .versions import ALL_VERSIONS, SIZES

WRITER = Path(__file__).with_name("write_store.py")


class StoreBuildError(RuntimeError):
    """write_store.py failed or its check of the written files found problems."""


def store_dir(mlflow_version: str, size: str) -> Path:
    return cache_root() / "stores" / f"mlflow-{mlflow_version}-{size}"


def load_manifest(mlflow_version: str, size: str) -> dict:
    """The manifest of a built store (builds it if needed)."""
    ensure_store(mlflow_version, size)
    path = store_dir(mlflow_version, size) / "fixture_manifest.json"
    return json.loads(path.read_text(encoding="utf-8"))


def ensure_store(mlflow_version: str, size: str) -> Path:
    """Return the ``mlruns`` directory of the store for (version, size), generating it once."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    final = store_dir(mlflow_version, size)
    if (final / "mlruns").is_dir():
        return final / "mlruns"
    python = ensure_venv(mlflow_version)
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if (final / "mlruns").is_dir():
            return final / "mlruns"
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            _generate(python, size, tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final / "mlruns"


def _generate(python: Path, size: str, out: Path) -> None:
    # Run a copy of the writer from the output folder: MLflow records the script path and git
    # info of the caller (run/trace source tags); outside the repo there is no git noise.
    script = out / "write_store.py"
    shutil.copyfile(WRITER, script)
    log = out / "write_store.log"
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([str(python), str(script), "--size", size, "--out", str(out)],
                              cwd=out, stdout=fh, stderr=subprocess.STDOUT)
    script.unlink()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise StoreBuildError(
            f"write_store.py --size {size} failed with {python} (exit {proc.returncode}).\n{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build fixture FileStores (cached).")
    parser.add_argument("--version", action="append", help="MLflow version (repeatable)")
    parser.add_argument("--size", action="append", choices=SIZES, help="repeatable")
    parser.add_argument("--all", action="store_true", help="all versions x all sizes")
    args = parser.parse_args(argv)
    versions = ALL_VERSIONS if args.all or not args.version else args.version
    sizes = SIZES if args.all or not args.size else args.size
    if not args.all and not args.version:
        parser.error("give --version (and --size) or --all")
    for version in versions:
        started = time.time()
        ensure_venv(version)
        print(f"venv mlflow-{version}: {time.time() - started:.1f}s", flush=True)
        for size in sizes:
            started = time.time()
            try:
                path = ensure_store(version, size)
            except StoreBuildError as exc:
                print(f"ERROR {exc}", file=sys.stderr)
                return 1
            print(f"store {path}: {time.time() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
