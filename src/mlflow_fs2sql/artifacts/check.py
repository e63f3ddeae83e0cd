"""Prove the artifacts arrived: every file of every unit is at its destination with the same
size and the same MD5 as its source file.

A local destination is read directly; any other is read back through MLflow's artifact
repository (``download_artifacts`` into a temporary folder, hashed, removed), so the check sees
what MLflow's clients and server will see. ``mlflow-artifacts:/`` URIs without a known DEST are
read through the server MLflow's client finds in ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

from ..progress import NULL_PROGRESS, Progress
from .copy import Destinations, _bounded, local_folder
from .plan import ArtifactOptions, Unit

MAX_LISTED = 1000


@dataclass
class CheckStats:
    files: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    problems: List[str] = field(default_factory=list)
    problem_count: int = 0
    unchecked: int = 0  # folders behind mlflow-artifacts:/ URIs with no server to ask

    def as_dict(self) -> dict:
        d = {"files": self.files, "bytes": self.bytes, "elapsed_s": round(self.elapsed_s, 3),
             "problem_count": self.problem_count, "unchecked_folders": self.unchecked}
        if self.elapsed_s:
            d["files_per_s"] = round(self.files / self.elapsed_s, 1)
            d["mb_per_s"] = round(self.bytes / 1e6 / self.elapsed_s, 2)
        return d


def md5_of(path: str) -> str:
    h = hashlib.md5(usedforsecurity=False) if _MD5_FLAG else hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


try:
    hashlib.md5(usedforsecurity=False)
    _MD5_FLAG = True
except TypeError:  # Python built without the flag
    _MD5_FLAG = False


def _reachable(dest: str) -> bool:
    """``mlflow-artifacts:/`` resolves only through a server (MLFLOW_TRACKING_URI=http...)."""
    if not dest.startswith("mlflow-artifacts:"):
        return True
    return os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://"))


class Checker:
    def __init__(self, options: ArtifactOptions, destinations: Optional[Destinations] = None,
                 progress: Progress = NULL_PROGRESS):
        self.options = options
        self.destinations = destinations or Destinations(options)
        self.progress = progress
        self.stats = CheckStats()
        self._lock = threading.Lock()

    def run(self, units: Iterable[Unit]) -> CheckStats:
        units = [u for u in units if u.files]
        reachable = [u for u in units if _reachable(u.dest)]
        self.stats.unchecked = len(units) - len(reachable)
        units = reachable
        started = time.perf_counter()
        total = sum(u.size for u in units)
        self.progress.start("Verifying artifacts", total, unit="bytes")
        workers = max(1, self.options.workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="fs2sql-check") as pool:
            listings = list(_bounded(pool, self._listing, units, workers * 4))
            tasks = ((u, f, there) for u, there in zip(units, listings) if there is not None
                     for f in u.files)
            for _ in _bounded(pool, lambda t: self._check(*t), tasks, workers * 4):
                pass
        self.stats.elapsed_s = time.perf_counter() - started
        return self.stats

    def _problem(self, message: str) -> None:
        with self._lock:
            self.stats.problem_count += 1
            if len(self.stats.problems) < MAX_LISTED:
                self.stats.problems.append(message)

    def _listing(self, unit: Unit):
        try:
            return self.destinations.listing(unit.dest)
        except Exception as exc:
            self._problem(f"{unit.kind} {unit.entity_id}: {unit.dest} cannot be listed "
                          f"({type(exc).__name__}: {exc})")
            return None

    def _check(self, unit: Unit, file: Tuple[str, int, int], there) -> None:
        rel, size, _ = file
        label = f"{unit.kind} {unit.entity_id}: artifact {rel!r}"
        source = os.path.join(unit.source_dir, *rel.split("/"))
        try:
            have = there.get(rel)
            if have is None:
                self._problem(f"{label}: missing at {unit.dest}")
                return
            actual = os.path.getsize(source)
            if have[0] != actual:
                self._problem(f"{label}: size source={actual}, destination={have[0]}")
                return
            want, got = md5_of(source), self._dest_md5(unit, rel)
            if want != got:
                self._problem(f"{label}: MD5 source={want}, destination={got}")
                return
            with self._lock:
                self.stats.files += 1
                self.stats.bytes += actual
        except Exception as exc:
            self._problem(f"{label}: cannot be read ({type(exc).__name__}: {exc})")
        finally:
            self.progress.advance(size)

    def _dest_md5(self, unit: Unit, rel: str) -> str:
        root, prefix = self.destinations.split(unit.dest)
        path = "/".join(p for p in (prefix, rel) if p)
        local = local_folder(root)
        if local is not None:
            return md5_of(os.path.join(local, *path.split("/")))
        tmp = tempfile.mkdtemp(prefix="fs2sql-check-")
        try:
            got = self.destinations.repo(root).download_artifacts(path, dst_path=tmp)
            return md5_of(got)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
