"""Artifact copy throughput of ``fs2sql migrate --artifacts-to`` (a benchmark, asserts nothing).

Two generated stores -- many small files and a few large ones -- copied into a local folder and
into S3 served by moto on loopback (in-memory: the numbers are fs2sql's + MLflow's + boto3's
cost, not a real network's). Each case runs fs2sql as a subprocess with ``--json`` and prints the
copy's own counters (files/s, MB/s, measured around the copy only), plus the whole command's
wall time. Run it under the machine's heavy lock::

    flock /tmp/fs2sql-heavy.lock python bench/artifacts.py --fs2sql .venv/bin/fs2sql
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STORES = {"small": (200, 100, 4_000), "large": (4, 2, 64_000_000)}  # runs, files/run, bytes


def make_store(root: Path, runs: int, files: int, size: int) -> Path:
    import yaml

    exp = root / "mlruns" / "0"
    exp.mkdir(parents=True)
    (exp / "meta.yaml").write_text(yaml.safe_dump({
        "artifact_location": "file:///elsewhere/mlruns/0", "experiment_id": "0",
        "lifecycle_stage": "active", "name": "Default", "creation_time": 1, "last_update_time": 1}))
    block = os.urandom(1 << 20)
    for r in range(runs):
        rid = f"{r:032x}"
        run = exp / rid
        (run / "artifacts" / "sub").mkdir(parents=True)
        (run / "meta.yaml").write_text(yaml.safe_dump({
            "artifact_uri": f"file:///elsewhere/mlruns/0/{rid}/artifacts", "experiment_id": "0",
            "run_id": rid, "lifecycle_stage": "active", "status": 3, "start_time": 1,
            "end_time": 2, "source_type": 4, "user_id": "u", "run_name": rid[-4:],
            "source_name": "", "entry_point_name": "", "source_version": ""}))
        for f in range(files):
            with open(run / "artifacts" / ("sub" if f % 2 else "") / f"f{f}.bin", "wb") as out:
                left = size
                while left:
                    out.write(block[:min(left, len(block))])
                    left -= min(left, len(block))
    return root / "mlruns"


def run_case(fs2sql: str, store: Path, dest: str, work: Path, env: dict) -> dict:
    db = work / f"out-{time.monotonic_ns()}.db"
    out = work / "r.json"
    started = time.perf_counter()
    done = subprocess.run([fs2sql, "migrate", str(store), str(db), "--artifacts-to", dest, "-q",
                           "--json", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    copy = json.loads(out.read_text())["artifacts"]["copy"]
    return {"wall_s": round(wall, 2), **{k: copy[k] for k in (
        "copied_files", "copied_bytes", "elapsed_s", "files_per_s", "mb_per_s")}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fs2sql", default="fs2sql")
    parser.add_argument("--targets", default="local,s3")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fs2sql-art-bench-"))
    rows = []
    try:
        for name, shape in STORES.items():
            store = make_store(work / name, *shape)
            for target in args.targets.split(","):
                env = dict(os.environ)
                if target == "local":
                    dest = str(work / f"dest-{name}")
                    rows.append((name, target, run_case(args.fs2sql, store, dest, work, env)))
                    shutil.rmtree(dest)
                    continue
                from artifact_servers import moto_s3

                with moto_s3(work) as s3:
                    env.update(s3)
                    rows.append((name, target, run_case(args.fs2sql, store,
                                                        "s3://team-bucket/mlflow", work, env)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| store | destination | files | MB | copy s | files/s | MB/s | command s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, target, r in rows:
        print(f"| {name} | {target} | {r['copied_files']:,} | {r['copied_bytes'] / 1e6:,.0f} | "
              f"{r['elapsed_s']:.2f} | {r['files_per_s']:,.0f} | {r['mb_per_s']:,.1f} | "
              f"{r['wall_s']:.2f} |")


if __name__ == "__main__":
    main()
