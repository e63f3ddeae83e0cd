"""Bench stores: sizes on the command line, named stores, generation into the cache.

A store is generated once by ``gen_store.py`` (in the bench venv) into
``<cache>/bench-stores/<key>/mlruns`` with a ``manifest.json`` of the expected row counts, and
reused as long as its key (every size parameter and the generator version) is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from env import BENCH_DIR, cache_root, file_lock, log

# Named stores (``--sizes many-runs``): the shape of a hyperparameter sweep -- tens of thousands
# of short runs, each a folder of 25 tiny files (meta.yaml, 10 params, 11 tags, 3 metrics of 5
# steps), 750k files in all. Reading the files is what costs there, not parsing or inserting.
NAMED = {
    "many-runs": dict(runs=30_000, points=450_000, experiments=11, params=10, tags=11, keys=3),
    "100k-runs": dict(runs=100_000, points=1_500_000, experiments=11, params=10, tags=11, keys=3),
}


def parse_count(tok: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*", tok)
    if not m:
        raise argparse.ArgumentTypeError(f"bad count {tok!r} (e.g. 400k, 0.4M, 1000000)")
    mult = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(round(float(m.group(1)) * mult))


def parse_sizes(text: str) -> list[dict]:
    """``0.4M,1.6M`` -> 1 run per 1000 points; ``RUNSxPOINTS`` (``400x0.4M``) sets the runs;
    a name from ``NAMED`` (``many-runs``) is that store. Each item: the spec fields it fixes
    (the rest come from the command line's defaults)."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok in NAMED:
            out.append(dict(NAMED[tok], name=tok))
        elif "x" in tok:
            r, p = tok.split("x", 1)
            out.append(dict(runs=parse_count(r), points=parse_count(p)))
        else:
            p = parse_count(tok)
            out.append(dict(runs=max(1, round(p / 1000)), points=p))
    return out


def store_key(spec: dict) -> str:
    keys = spec.get("keys") or 0
    return (f"r{spec['runs']}-p{spec['points']}-e{spec['experiments']}-pa{spec['params']}"
            f"-t{spec['tags']}-m{spec['models']}-s{spec['seed']}"
            + (f"-k{keys}" if keys else "") + f"-g{generator_version()}")


def ensure_store(venv: Path, spec: dict, regenerate: bool) -> tuple[Path, dict, bool]:
    """Returns (mlruns path, manifest, generated now?). Cached under bench-stores/<key>/."""
    key = store_key(spec)
    base = cache_root() / "bench-stores"
    final = base / key
    with file_lock(base / f".{key}.lock"):
        if final.exists() and regenerate:
            shutil.rmtree(final)
        if (final / "manifest.json").exists() and (final / "mlruns").is_dir():
            return final / "mlruns", json.loads((final / "manifest.json").read_text()), False
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=base))
        try:
            log(f"generating store {key} ...")
            args = [str(venv / "bin" / "python"), str(BENCH_DIR / "gen_store.py"),
                    "--out", str(tmp), "--artifact-root", str(final / "mlruns")]
            for k in ("runs", "points", "experiments", "params", "tags", "models", "seed",
                      "keys"):
                args += [f"--{k}", str(spec.get(k) or 0)]
            t0 = time.perf_counter()
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            manifest = json.loads((tmp / "manifest.json").read_text())
            manifest["wall_seconds"] = round(wall, 3)
            manifest["disk_bytes"] = du(tmp / "mlruns")
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    c = manifest["counts"]
    log(f"generated {c['runs']} runs / {c['metrics']} points / {c['files']} files in "
        f"{manifest['wall_seconds']:.1f} s ({c['metrics'] / manifest['seconds'] / 1e3:.0f} k "
        f"points/s in the generator)")
    return final / "mlruns", manifest, True


def generator_version() -> int:
    text = (BENCH_DIR / "gen_store.py").read_text()
    return int(re.search(r"^GENERATOR_VERSION = (\d+)", text, re.M).group(1))


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def size_label(size: dict) -> str:
    """How a store is named in the table: its name, or its points (0.4M)."""
    if size.get("name"):
        return size["name"]
    points = size["counts"]["metrics"] if "counts" in size else size["points"]
    return f"{points / 1e6:g}M" if points >= 100_000 else f"{points / 1e3:g}k"
