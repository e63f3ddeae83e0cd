"""Copy units of artifacts to their destination through MLflow's own artifact repositories.

Every backend ``mlflow.store.artifact`` knows (local and NFS folders, ``s3://``, ``gs://``,
``wasbs://``, ``hdfs://``, ``sftp://``, ...) works without code here: a file goes up with the
repository's ``log_artifact``. Cloud SDKs are fs2sql's extras (``fs2sql[s3]`` brings boto3).

* **Parallel**: ``workers`` threads copy files (the repositories do network or disk I/O, which
  releases the GIL); the destination of each unit is listed once, also in parallel.
* **Resumable**: a file already at the destination with the same size (and, in a local folder,
  the same modification time, which MLflow's local repository keeps) is not copied again, so a
  re-run after a failure or a kill copies only what is missing or different.
* **Retrying**: a failed file is tried again ``retries`` times with a growing pause; files that
  still fail are listed together at the end (``ArtifactCopyError``), after every other file.
* **Consistent**: a source file whose size or mtime changed while it was copied is copied again;
  one that keeps changing fails (something still writes to the store).
* **Read-only source**: source files are only opened for reading.
"""

from __future__ import annotations

import os
import posixpath
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from ..errors import Fs2sqlError
from ..progress import NULL_PROGRESS, Progress
from . import uris
from .plan import ArtifactOptions, Unit

_MLFLOW_TEMP_PREFIX = ".artifact.uploading."  # LocalArtifactRepository's staging files
MAX_FAILURES_SHOWN = 5


class ArtifactError(Fs2sqlError):
    """The artifact destination cannot be used, or artifacts could not be copied."""


class ArtifactCopyError(ArtifactError):
    pass


@dataclass
class CopyStats:
    files: int = 0  # planned
    bytes: int = 0
    copied_files: int = 0
    copied_bytes: int = 0
    present_files: int = 0  # already at the destination (resumed)
    present_bytes: int = 0
    retries: int = 0
    recopied_changed: int = 0  # copied again because the source changed meanwhile
    vanished: List[str] = field(default_factory=list)  # source files gone before their copy
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items()}
        d["elapsed_s"] = round(self.elapsed_s, 3)
        if self.elapsed_s:
            d["files_per_s"] = round(self.copied_files / self.elapsed_s, 1)
            d["mb_per_s"] = round(self.copied_bytes / 1e6 / self.elapsed_s, 2)
        return d


# -- destinations ------------------------------------------------------------------------------
class Destinations:
    """Artifact repositories, one per root (DEST, or a root map's NEW), shared by threads."""

    def __init__(self, options: ArtifactOptions,
                 factory: Optional[Callable[[str], object]] = None):
        self.options = options
        self._factory = factory or _mlflow_repository
        self._repos: Dict[str, object] = {}
        self._lock = threading.Lock()

    def split(self, dest: str) -> Tuple[str, str]:
        """(repository root, path below it) of a unit's destination."""
        root = self.options.dest_uri
        if root and dest.startswith(root.rstrip("/") + "/"):
            return root, dest[len(root.rstrip("/")) + 1:]
        return dest, ""

    def repo(self, root: str):
        with self._lock:
            if root not in self._repos:
                self._repos[root] = self._factory(root)
            return self._repos[root]

    def listing(self, dest: str) -> Dict[str, Tuple[int, Optional[int]]]:
        """{path below ``dest``: (size, mtime in ns or None)} of what is there already."""
        root, prefix = self.split(dest)
        local = local_folder(root)
        if local is not None:
            return _local_listing(os.path.join(local, *prefix.split("/")) if prefix else local)
        repo = self.repo(root)
        found: Dict[str, Tuple[int, Optional[int]]] = {}
        start = len(prefix) + 1 if prefix else 0
        stack = [prefix or None]
        while stack:
            for info in repo.list_artifacts(stack.pop()):
                if info.is_dir:
                    stack.append(info.path)
                elif not posixpath.basename(info.path).startswith(_MLFLOW_TEMP_PREFIX):
                    found[info.path[start:]] = (info.file_size, None)
        return found

    def put(self, source: str, dest: str, rel: str) -> None:
        root, prefix = self.split(dest)
        folder = posixpath.dirname(posixpath.join(prefix, rel)) if prefix else \
            posixpath.dirname(rel)
        self.repo(root).log_artifact(source, folder or None)


def _mlflow_repository(uri: str):
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(uri)
    except ImportError as exc:
        raise _missing_sdk(uri, exc) from None


def _missing_sdk(uri: str, exc: Exception) -> ArtifactError:
    scheme = uris.scheme_of(uri)
    extra = {"s3": "s3", "gs": "gcs", "wasbs": "azure", "abfss": "azure"}.get(scheme)
    how = (f"pipx install 'fs2sql[{extra}]' (or pipx inject fs2sql {exc.name or 'the SDK'})"
           if extra else f"pip install {exc.name or 'the SDK'} into fs2sql's environment")
    return ArtifactError(
        f"MLflow's artifact repository for {scheme}:// needs a package that is not installed "
        f"({exc}).", path=uri, hint=f"Install it: {how}.")


def local_folder(uri: str) -> Optional[str]:
    """The folder of a ``file://`` URI (or plain path), else None."""
    if not uris.is_local(uri):
        return None
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(uri)
    return url2pathname(parts.path) if parts.scheme.lower() == "file" else uri


def _local_listing(folder: str) -> Dict[str, Tuple[int, Optional[int]]]:
    found = {}
    for dirpath, _dirs, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder).replace(os.sep, "/")
        for name in filenames:
            if name.startswith(_MLFLOW_TEMP_PREFIX):
                continue  # a copy a kill interrupted: replaced by the next one
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            found[name if rel_dir == "." else f"{rel_dir}/{name}"] = (st.st_size, st.st_mtime_ns)
    return found


def check_destination(options: ArtifactOptions, store_root: str,
                      factory: Optional[Callable[[str], object]] = None) -> None:
    """Before anything is read or written: DEST must not lie inside the store (that would write
    into the source), and MLflow must be able to open it (SDK installed, bucket reachable)."""
    dest = options.dest_uri
    if not dest:
        return
    local = local_folder(dest)
    if local is not None:
        real, store = os.path.realpath(local), os.path.realpath(store_root)
        if real == store or real.startswith(store + os.sep):
            raise ArtifactError(
                "lies inside the store being migrated; fs2sql never writes into its source.",
                path=options.to, hint="Give a folder outside the mlruns folder, e.g. "
                "./mlartifacts beside it (what mlflow server --artifacts-destination uses).")
        parent = local
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise ArtifactError(f"cannot be created or written ({parent} is not a writable "
                                "folder).", path=options.to,
                                hint="Choose a folder you can write, or fix its permissions.")
        return
    repo = (factory or _mlflow_repository)(dest)
    try:
        repo.list_artifacts(None)
    except Exception as exc:  # credentials, bucket, endpoint: MLflow's and the SDK's words
        raise ArtifactError(
            f"cannot be listed through MLflow's artifact repository ({type(exc).__name__}: "
            f"{exc}).", path=options.to,
            hint="Check the URI and the credentials the SDK uses (for S3: AWS_ACCESS_KEY_ID "
            "or ~/.aws, and MLFLOW_S3_ENDPOINT_URL for an S3-compatible server).") from None


# -- the copy ------------------------------------------------------------------------------------
class Copier:
    """Copies units to their destinations (see the module docstring); ``run`` returns stats."""

    def __init__(self, options: ArtifactOptions, destinations: Optional[Destinations] = None,
                 progress: Progress = NULL_PROGRESS, sleep: Callable[[float], None] = time.sleep):
        self.options = options
        self.destinations = destinations or Destinations(options)
        self.progress = progress
        self.stats = CopyStats()
        self.failures: List[Tuple[str, str]] = []  # (source file, why)
        self._sleep = sleep
        self._lock = threading.Lock()

    def run(self, units: Iterable[Unit]) -> CopyStats:
        units = [u for u in units if u.copy and u.files]
        for root in {self.destinations.split(u.dest)[0] for u in units}:
            self.destinations.repo(root)  # imports MLflow's repositories once, before timing
        started = time.perf_counter()
        self.stats.files = sum(len(u.files) for u in units)
        self.stats.bytes = sum(u.size for u in units)
        self.progress.start("Copying artifacts", self.stats.bytes, unit="bytes")
        workers = max(1, self.options.workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="fs2sql-copy") as pool:
            try:
                listings = dict(zip((id(u) for u in units),
                                    _bounded(pool, self._listing, units, workers * 4)))
                tasks = ((u, f) for u in units for f in self._missing(u, listings[id(u)]))
                for _ in _bounded(pool, lambda t: self._copy(*t), tasks, workers * 4):
                    pass
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # finish files in flight
                raise
        self.stats.elapsed_s = time.perf_counter() - started
        if self.failures:
            raise self._error()
        return self.stats

    def _listing(self, unit: Unit):
        last = None
        for attempt in range(self.options.retries + 1):
            try:
                return self.destinations.listing(unit.dest)
            except Fs2sqlError:
                raise
            except Exception as exc:
                last = exc
                self._pause(attempt)
        raise ArtifactCopyError(f"cannot list {unit.dest} ({type(last).__name__}: {last}).",
                                hint="Check the destination and run the same command again.")

    def _missing(self, unit: Unit, there) -> Iterator[Tuple[str, int, int]]:
        local = local_folder(unit.dest) is not None or \
            local_folder(self.destinations.split(unit.dest)[0]) is not None
        for rel, size, mtime in unit.files:
            have = there.get(rel)
            if have and have[0] == size and (not local or have[1] == mtime):
                with self._lock:
                    self.stats.present_files += 1
                    self.stats.present_bytes += size
                self.progress.advance(size)
                continue
            yield rel, size, mtime

    def _copy(self, unit: Unit, file: Tuple[str, int, int]) -> None:
        rel, planned, _ = file
        source = os.path.join(unit.source_dir, *rel.split("/"))
        why = ""
        for attempt in range(self.options.retries + 1):
            try:
                before = os.stat(source)
                self.destinations.put(source, unit.dest, rel)
                after = os.stat(source)
            except FileNotFoundError:
                if not os.path.exists(source):
                    with self._lock:
                        self.stats.vanished.append(source)
                    self.progress.advance(planned)
                    return
                why = "not found"
            except Fs2sqlError:
                raise
            except Exception as exc:  # network, throttling, a full disk: try again
                why = f"{type(exc).__name__}: {exc}"
            else:
                if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
                    with self._lock:
                        self.stats.copied_files += 1
                        self.stats.copied_bytes += after.st_size
                    self.progress.advance(planned)
                    return
                why = "it changed while it was being copied (is something still writing?)"
                with self._lock:
                    self.stats.recopied_changed += 1
            if attempt < self.options.retries:
                with self._lock:
                    self.stats.retries += 1
                self._pause(attempt)
        with self._lock:
            self.failures.append((source, why))
        self.progress.advance(planned)

    def _pause(self, attempt: int) -> None:
        self._sleep(min(0.2 * 2 ** attempt, 5.0))

    def _error(self) -> ArtifactCopyError:
        shown = "; ".join(f"{src}: {why}" for src, why in self.failures[:MAX_FAILURES_SHOWN])
        more = len(self.failures) - MAX_FAILURES_SHOWN
        return ArtifactCopyError(
            f"{len(self.failures)} of {self.stats.files} artifact files could not be copied "
            f"after {self.options.retries + 1} tries each: {shown}"
            + (f" and {more} more" if more > 0 else "") + ". The database was not published.",
            hint="The files copied so far stay where they are and are not copied again: fix the "
            "cause and run the same command again.")


def _bounded(pool: ThreadPoolExecutor, fn, items: Iterable, window: int) -> Iterator:
    """``pool.map`` that keeps at most ``window`` tasks in flight (memory stays flat for a
    million files) and yields results in order."""
    pending: List = []
    done_results: Dict[int, object] = {}
    order = 0
    next_out = 0
    index = {}
    for item in items:
        fut = pool.submit(fn, item)
        index[fut] = order
        pending.append(fut)
        order += 1
        while len(pending) >= window:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                pending.remove(f)
                done_results[index.pop(f)] = f.result()
            while next_out in done_results:
                yield done_results.pop(next_out)
                next_out += 1
    for f in pending:
        done_results[index.pop(f)] = f.result()
    while next_out in done_results:
        yield done_results.pop(next_out)
        next_out += 1
