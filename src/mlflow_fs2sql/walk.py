"""The source side: find the store, walk it, and yield typed entities (``model.py``).

It reads the files itself and never imports MLflow. Order is deterministic: experiments by ID
(active first, then ``.trash``), each followed by its runs in directory-name order. Memory holds
a bounded window of runs. In strict mode the first invalid entity raises ``InvalidSource``;
with ``skip_invalid`` it is recorded in ``Walk.skipped`` together with what depends on it.

Reading is parallel (``io_threads``): the files of the next runs are read and parsed by a pool
of threads while the caller consumes the current one. A file read releases the GIL, so the
latency of cold caches, network file systems and disks overlaps even though parsing does not.
Each run is read by one thread into its own ``_Unit`` (what it found, what it ignored), and the
results are taken in walk order, so entities, errors, skips and report counts are the same for
any number of threads; everything that depends on other runs (duplicate IDs) is decided then,
in order, on the caller's thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Union

from .errors import InvalidSource, SourceError
from .model import Experiment, Run, Skipped, Unchanged
from .parse import (
    check_inside,
    field_int,
    field_str,
    is_junk,
    parse_metric_lines,
    read_bytes,
    read_key_values,
    read_yaml_mapping,
    set_store_root,
    store_bounds,
    walk_key_files,
)
from .prefetch import PREFETCH_LEAD, PREFETCH_STEP, Prefetcher

TRASH = ".trash"
REGISTRY = "models"
# Sub-directories of an experiment that are never runs (FileStore's reserved names).
EXPERIMENT_RESERVED = frozenset({"tags", "datasets", "traces", "models"})

RUN_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
SOURCE_TYPE = {1: "NOTEBOOK", 2: "JOB", 3: "PROJECT", 4: "LOCAL", 5: "UNKNOWN", 1000: "UNKNOWN"}
LIFECYCLE = ("active", "deleted")
_NUMERIC_ID = re.compile(r"^[0-9]+$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# What MLflow creates inside a run folder: a folder holding one of these is a run, even when its
# meta.yaml is gone (an error, not a stray folder).
_RUN_CONTENTS = ("params", "metrics", "tags", "artifacts", "inputs", "outputs")

Entity = Union[Experiment, Run, object]

# ``Walk(selector=...)``: fn(kind, unit ID, folder) -> False (not read: an ``Unchanged`` marker is
# yielded instead), True (read it), or, for runs, {metric key: (offset, tail hash)} to read those
# metric files from where the last sync stopped. Called before anything of the unit is read.
Selector = Callable[[str, str, str], Union[bool, dict]]
# Kinds a selector is asked about: the numerous ones. Experiments, datasets and the registry are
# few and small; they are always read (and compared by the caller).
SELECTED_KINDS = ("run", "trace", "logged model")

# Entity kinds beyond experiments and runs plug in here (``kinds/*.py``):
# experiment sub-folder name -> fn(walk, experiment, folder) yielding entities;
EXPERIMENT_WALKERS: Dict[str, Callable] = {}
# store sub-folder name (e.g. the registry's "models") -> fn(walk, folder) yielding entities;
STORE_WALKERS: Dict[str, Callable] = {}
# fn(walk, run_dir, run_id, experiment) -> tuple of entities attached to the run (inputs, ...).
# Called on an I/O thread with a per-run view of the walk (``_Unit``): what it records in
# ``ignored``, ``not_migrated`` and ``notes`` is merged in walk order.
RUN_READERS: List[Callable] = []

# Threads reading files (``--io-threads``): the most the walk may use. How many it does use is
# measured as it reads (``Walk.in_order``): disks differ. On the many-runs bench store (30k runs,
# 750k files, 2 cores) after dropping the page cache, one machine kind read fastest with 8-16
# threads, another with 2 (more threads there only cost kernel time); a warm cache reads fastest
# on the caller's thread. See the README.
DEFAULT_IO_THREADS = 8
# Read ahead: runs holding about READ_AHEAD_ROWS rows (points, params, tags) together, at most
# READ_AHEAD_MAX runs: the threads keep reading while the caller writes a batch
# (``write.DEFAULT_BATCH_ROWS``), and memory stays flat whether runs are tiny (a sweep) or long
# (10k points each).
READ_AHEAD_ROWS = 50_000
READ_AHEAD_MAX = 1024
# ``Walk.in_order`` climbs a ladder of thread counts (1 = the caller's thread, 2, 4, ... up to
# io_threads), one segment of PROBE_ITEMS units each, as long as a step up reads at least
# CLIMB_GAIN faster; the next PROBE_EVERY units go at the best step (the fewest threads within
# TOLERANCE of the fastest), then it measures again: the cache may have warmed, or cooled.
# A segment ends early once it has taken PROBE_SECONDS and read PROBE_MIN_ITEMS units: where
# each read waits for a network (NFS: 65 ms for one run of 25 files at 0.5 ms a request), 128
# runs on one thread would take 8 s. The count of units until the next measurement carries over
# from one experiment's runs to the next, so a store of many small experiments is not measured
# again at each of them.
PROBE_ITEMS = 128
PROBE_MIN_ITEMS = 16
PROBE_SECONDS = 0.5
PROBE_EVERY = 2048
# A measurement that chooses what the last one chose puts the next one twice as far off, up to
# PROBE_EVERY_MAX units; another choice brings it back to PROBE_EVERY. Each measurement reads
# a segment at a thread count that loses: on a warm cache, 35 measurements of the many-runs
# store (30k runs) made migrate 20% slower than measuring once (hand runs: 32.6-35.3 s against
# 23.7-29.4 s).
PROBE_EVERY_MAX = 16384
CLIMB_GAIN = 0.10
TOLERANCE = 0.05


@dataclass(frozen=True)
class ExperimentDir:
    dir_name: str
    path: str
    in_trash: bool


def locate_store(source: str) -> str:
    """The ``mlruns`` directory: ``source`` itself or its ``mlruns`` sub-folder."""
    path = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(path):
        raise SourceError(
            "does not exist.", path=source, hint="Give the path of your mlruns folder."
        )
    if not os.path.isdir(path):
        raise SourceError(
            "is a file, not a folder.",
            path=source,
            hint="Give the path of your mlruns folder (the one holding meta.yaml files).",
        )
    try:
        _refuse_entity_folder(path, source)
        for candidate in (path, os.path.join(path, "mlruns")):
            if _looks_like_store(candidate):
                return candidate
        empty = not os.listdir(path)
    except OSError as exc:
        raise SourceError(
            f"cannot be read ({exc.strerror or exc}).", path=exc.filename or source,
            hint="Check the permissions of the mlruns folder.",
        ) from None
    if empty:
        raise SourceError("is an empty folder: there is nothing to migrate.", path=source)
    raise SourceError(
        "is not an MLflow FileStore: it has no experiment folder with a meta.yaml, no .trash and "
        "no models folder, and no mlruns sub-folder.",
        path=source,
        hint="Give the folder that MLflow wrote (usually ./mlruns, the one holding 0/meta.yaml).",
    )


def _refuse_entity_folder(path: str, source: str) -> None:
    """SOURCE is an experiment, run or registered-model folder of a store (its own meta.yaml
    says so): name the folder that contains the store instead of misreading its run folders as
    experiments. A store's root never holds a meta.yaml."""
    meta = os.path.join(path, "meta.yaml")
    if not os.path.isfile(meta):
        return
    import yaml

    try:
        with open(meta, encoding="utf-8") as f:
            fields = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # not ours to judge here: the walk reports a damaged file where it matters
    if not isinstance(fields, dict):
        return
    up = os.path.dirname
    if "model_id" in fields and "experiment_id" in fields:  # <exp>/models/<model_id>
        what, root = f"a logged model folder ({fields['model_id']})", up(up(up(path)))
    elif "version" in fields and "name" in fields:  # models/<name>/version-N
        what, root = f"a model version folder ('{fields['name']}' {fields['version']})", \
            up(up(up(path)))
    elif "run_id" in fields or "run_uuid" in fields:  # <exp>/<run>
        what, root = (f"a run folder (run {fields.get('run_id') or fields.get('run_uuid')})",
                      up(up(path)))
    elif "experiment_id" in fields and "name" in fields:  # <exp>
        what, root = (f"an experiment folder (experiment {fields['experiment_id']}, "
                      f"'{fields['name']}')"), up(path)
    elif "name" in fields and "creation_timestamp" in fields:  # models/<name>
        what, root = f"a registered model folder ('{fields['name']}')", up(up(path))
    else:
        return
    if os.path.basename(root) == TRASH:  # a deleted experiment's run
        root = up(root)
    raise SourceError(
        f"is {what} inside an MLflow FileStore, not the store itself.", path=source,
        hint=f"Give the store that contains it ({root}): fs2sql migrates a whole store.")


def _looks_like_store(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    for entry in os.scandir(path):
        if not entry.is_dir():
            continue
        if entry.name in (TRASH, REGISTRY):
            return True
        if os.path.isfile(os.path.join(entry.path, "meta.yaml")):
            return True
    return False


class Walk:
    """One pass over a store. ``check`` validates an entity against the target (column sizes)."""

    def __init__(
        self,
        root: str,
        *,
        skip_invalid: bool = False,
        check: Optional[Callable[[Entity], None]] = None,
        selector: Optional[Selector] = None,
        pending_window_s: Optional[float] = None,
        rename_conflicts: bool = False,
        io_threads: Optional[int] = None,
    ):
        self.root = root
        # 1: every file is read on the caller's thread, one after the other (as before).
        self.io_threads = max(1, int(io_threads or DEFAULT_IO_THREADS))
        self._pools: Dict[int, ThreadPoolExecutor] = {}  # by number of threads
        # A child process warming the page cache ahead of the runs (``prefetch.py``): only
        # where the walk may read on threads at all, and not for sync, which reads few runs.
        self.prefetch = self.io_threads > 1 and selector is None
        self._prefetcher: Optional[Prefetcher] = None
        self.io_levels: List[int] = []  # threads chosen by each measurement (in_order)
        self._choices: Dict[str, _Choice] = {}  # in_order's, by kind of item
        self.skip_invalid = skip_invalid
        self.check = check or (lambda entity: None)
        # sync: which units to read, and how recently a file may have changed for a unit that
        # cannot be read to count as "being written right now" (an ``Unchanged`` marker with
        # ``pending``) instead of as invalid. A RUNNING run's last metric line without its
        # newline is left for the next sync too.
        self.selector = selector
        self.pending_window_s = pending_window_s
        # A deleted experiment whose name an earlier one has: renamed "NAME (deleted, from ID)"
        # instead of refused (MLflow's database keeps names unique among deleted ones too).
        self.rename_conflicts = rename_conflicts
        self.renamed: List[str] = []  # "old -> new (experiment ID)", for the report
        self.bounds = set_store_root(root)  # links may not lead out of the store
        self.skipped: List[Skipped] = []
        self.ignored: List[str] = []  # junk files and stray folders, listed in the report
        self.not_migrated: Dict[str, List[str]] = {}  # kind -> paths fs2sql does not carry yet
        self.notes: Dict[str, int] = {}  # report note template ("{n} ...") -> count, from kinds
        self.duplicate_metric_lines = 0
        self.running_runs = 0
        self.warnings: List[str] = []  # for the report (files changed while being read)
        self._running_files: List[tuple] = []  # (path, mtime_ns, size) of RUNNING runs' files
        self._experiment_names: Dict[str, str] = {}
        # Run folders that are links, or have no meta.yaml (both rare), as run_dirs saw them.
        self._linked_runs: Set[str] = set()
        self._runs_without_meta: Set[str] = set()
        # Run ID -> the folder holding it (``_folder_of``: one shared string per experiment
        # folder; 100k runs would otherwise keep 100k full paths for the whole walk).
        self._run_ids: Dict[str, str] = {}

    # -- discovery ---------------------------------------------------------------------------
    def experiment_dirs(self) -> List[ExperimentDir]:
        found: List[ExperimentDir] = []
        for in_trash, base in ((False, self.root), (True, os.path.join(self.root, TRASH))):
            if not os.path.isdir(base):
                if in_trash and os.path.lexists(base):
                    self.ignored.append(base)  # a file named .trash: never MLflow's
                continue
            try:
                entries = list(os.scandir(base))
            except OSError as exc:
                raise SourceError(f"cannot be read ({exc.strerror or exc}).", path=base,
                                  hint="Check the permissions of the mlruns folder.") from None
            for entry in entries:
                if not in_trash and entry.name in (TRASH, REGISTRY):
                    if entry.name == REGISTRY and not _is_dir(entry):
                        self.ignored.append(entry.path)
                    continue
                if is_junk(entry.name) or not _is_dir(entry):
                    self.ignored.append(entry.path)
                    continue
                if not _NUMERIC_ID.match(entry.name) and not os.path.lexists(
                        os.path.join(entry.path, "meta.yaml")):
                    # Not an experiment (no number, no meta.yaml): a folder someone put here.
                    self.ignored.append(entry.path)
                    continue
                found.append(ExperimentDir(entry.name, entry.path, in_trash))

        def order(d: ExperimentDir):
            numeric = _NUMERIC_ID.match(d.dir_name) is not None
            return (d.in_trash, not numeric, int(d.dir_name) if numeric else 0, d.dir_name)

        return sorted(found, key=order)

    def run_dirs(self, exp_dir: ExperimentDir, ignored: Optional[List[str]] = None) -> List[str]:
        """Run folders of an experiment, by name. Raises ``InvalidSource`` (for the experiment)
        if its folder cannot be listed: its runs would silently go missing otherwise."""
        ignored = self.ignored if ignored is None else ignored
        runs = []
        try:
            entries = sorted(os.scandir(exp_dir.path), key=lambda e: e.name)
        except OSError as exc:
            raise InvalidSource(f"cannot be read ({exc.strerror or exc}).", path=exp_dir.path,
                                kind="experiment", entity_id=exp_dir.dir_name) from None
        def candidate(entry: os.DirEntry) -> bool:
            return entry.name != "meta.yaml" and entry.name not in EXPERIMENT_RESERVED \
                and not is_junk(entry.name) and _is_dir(entry)

        # One look into each run folder (the first read of it on a cold cache): on the threads.
        looked = [e for e in entries if candidate(e)]
        has_meta = dict(zip((e.name for e in looked), self.in_order(
            lambda e: os.path.lexists(os.path.join(e.path, "meta.yaml")), looked,
            kind="look")))
        for entry in entries:
            if entry.name == "meta.yaml":
                continue
            if entry.name in EXPERIMENT_RESERVED and _is_dir(entry):
                if entry.name != "tags" and entry.name not in EXPERIMENT_WALKERS:
                    self.not_migrated.setdefault(entry.name, []).append(entry.path)
                continue
            if is_junk(entry.name) or not _is_dir(entry):
                ignored.append(entry.path)
                continue
            if not has_meta[entry.name]:
                if not (_RUN_ID.match(entry.name) or _holds_any(entry.path, _RUN_CONTENTS)):
                    # Not a run: no meta.yaml and nothing MLflow puts in a run folder.
                    ignored.append(entry.path)
                    continue
                self._runs_without_meta.add(entry.path)
            if entry.is_symlink():
                self._linked_runs.add(entry.path)
            runs.append(entry.path)  # read_run says what is wrong with it, if anything
        return runs

    def count_runs(self) -> int:
        """A cheap first pass for the progress bar's total (no file is parsed, nothing recorded:
        the walk itself lists ignored paths and reports errors)."""
        ignored, not_migrated = list(self.ignored), {k: list(v) for k, v in
                                                     self.not_migrated.items()}
        total = 0
        try:
            for d in self.experiment_dirs():
                try:
                    total += len(self.run_dirs(d))
                except InvalidSource:
                    pass
        except SourceError:
            pass
        finally:
            self.ignored[:] = ignored
            self.not_migrated.clear()
            self.not_migrated.update(not_migrated)
            self._close_pool()
        return total

    # -- the walk ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Entity]:
        try:
            yield from self._walk()
        finally:
            self._close_pool()

    def _walk(self) -> Iterator[Entity]:
        self.ignored.clear()
        self.not_migrated.clear()
        self.notes.clear()
        # A second pass over the same Walk starts afresh (names and IDs seen, counts, skips).
        self.skipped.clear()
        self.warnings.clear()
        self._experiment_names.clear()
        self._run_ids.clear()
        self.renamed.clear()
        self.duplicate_metric_lines = self.running_runs = 0
        self._choices.clear()  # count_runs has just read the folders: measure again
        self.bounds = set_store_root(self.root)
        seen_ids: Set[str] = set()
        for exp_dir in self.experiment_dirs():
            try:
                experiment = self.read_experiment(exp_dir, seen_ids)
                self.check(experiment)
                run_paths = self.run_dirs(exp_dir)
            except InvalidSource as exc:
                self._skip_or_raise(exc, "experiment", exp_dir.dir_name)
                try:
                    run_paths = self.run_dirs(exp_dir)
                except InvalidSource:
                    run_paths = []
                    self.skipped.append(Skipped("run", "*", exp_dir.path, "the runs of "
                                                f"experiment {exp_dir.dir_name} cannot be listed"))
                for run_path in run_paths:
                    self.skipped.append(
                        Skipped("run", os.path.basename(run_path), run_path,
                                f"its experiment {exp_dir.dir_name} was skipped")
                    )
                for sub in EXPERIMENT_WALKERS:  # traces, datasets, logged models
                    folder = os.path.join(exp_dir.path, sub)
                    if os.path.isdir(folder):
                        self.skipped.append(Skipped(sub, "*", folder, f"its experiment "
                                                    f"{exp_dir.dir_name} was skipped"))
                continue
            seen_ids.add(exp_dir.dir_name)
            yield experiment
            yield from self._runs(experiment, run_paths)
            for sub, walker in EXPERIMENT_WALKERS.items():
                folder = os.path.join(exp_dir.path, sub)
                if os.path.isdir(folder):
                    yield from self._checked(
                        lambda f=folder, w=walker, e=experiment: w(self, e, f), sub, folder)
        for sub in (REGISTRY,):
            folder = os.path.join(self.root, sub)
            if not os.path.isdir(folder):
                continue
            walker = STORE_WALKERS.get(sub)
            if walker is None:
                self.not_migrated.setdefault("registry", []).append(folder)
            else:
                yield from self._checked(lambda f=folder, w=walker: w(self, f), sub, folder)
        self._check_still_writing()

    # -- runs, read ahead on I/O threads and taken in walk order ------------------------------
    def _runs(self, experiment: Experiment, run_paths: List[str]) -> Iterator[Entity]:
        sent = self._prefetch(run_paths, 0, 0)
        units = self.in_order(lambda path: self._read_unit(experiment, path), run_paths)
        for taken, unit in enumerate(units):
            if sent < len(run_paths) and taken % PREFETCH_STEP == 0:
                sent = self._prefetch(run_paths, sent, taken)
            entity = self._take_run(unit)
            if entity is not None:
                yield entity

    def _read_unit(self, experiment: Experiment, run_path: str) -> "_Unit":
        """On an I/O thread: the selector's plan, then the run's files. Touches nothing shared:
        what the run records goes into its ``_Unit``."""
        unit = _Unit(self, os.path.basename(run_path), run_path)
        try:
            plan = self.select("run", unit.unit_id, run_path)
            if plan is False:
                unit.unchanged = True
                return unit
            unit.run = self._read_run(unit, experiment, run_path,
                                      resume=plan if isinstance(plan, dict) else None)
        except (InvalidSource, OSError) as exc:  # OSError: e.g. a folder that vanished
            unit.error = exc
            return unit
        if unit.run.status == "RUNNING":  # its files as read, to see later whether they change
            unit.running_files = _file_states(run_path)
        return unit

    def _prefetch(self, run_paths: List[str], sent: int, taken: int) -> int:
        """Send the child (``prefetch.py``) the runs up to ``PREFETCH_LEAD`` past the ``taken``
        ones; return how many of ``run_paths`` it has now."""
        if not self.prefetch or len(run_paths) < 2:
            return len(run_paths)
        if self._prefetcher is None:
            self._prefetcher = Prefetcher()
        end = min(len(run_paths), taken + PREFETCH_LEAD)
        if end > sent:
            self._prefetcher.feed(run_paths[sent:end])
        return max(sent, end)

    def _take_run(self, unit: "_Unit") -> Optional[Entity]:
        """On the caller's thread, in walk order: merge what the run recorded, decide what
        depends on the runs before it, and return the run, its marker, or None (skipped)."""
        rid, run_path = unit.unit_id, unit.path
        unit.merge_into(self)
        if unit.unchanged:
            self._run_ids.setdefault(rid, self._folder_of(run_path))
            return Unchanged("run", rid, run_path)
        try:
            run = unit.result(self._run_ids)
        except InvalidSource as exc:
            marker = self.pending(exc, "run", rid, run_path)
            if marker is not None:
                return marker
            self._skip_or_raise(exc, "run", rid)
            return None
        except OSError as exc:
            self._skip_or_raise(_unreadable(exc, run_path, "run"), "run", rid)
            return None
        try:
            self.check(run)
        except InvalidSource as exc:
            self._skip_or_raise(exc, "run", rid)
            return None
        self._run_ids[run.run_uuid] = self._folder_of(run.path)
        self.duplicate_metric_lines += run.duplicate_metric_lines
        if run.status == "RUNNING":
            self.running_runs += 1
            room = 100_000 - len(self._running_files)  # cheap: few such runs
            self._running_files.extend(unit.running_files[:max(0, room)])
        return run

    @staticmethod
    def _folder_of(run_path: str) -> str:
        return sys.intern(os.path.dirname(run_path))

    def in_order(self, fn: Callable, items: Sequence, kind: str = "run") -> Iterator:
        """``fn(item)`` for each item, in order, read by as many threads as make it fastest.

        The results are taken in order whatever the number of threads. Which number is fastest
        is measured, not guessed: a segment of items is read at each step of a ladder (the
        caller's thread alone, then 2, 4, ... threads) while a step up is clearly faster; the
        next ``PROBE_EVERY`` items go at the best step, then the ladder is climbed again (twice
        as late each time it chooses the same, up to ``PROBE_EVERY_MAX`` items). The
        time of a segment is what the caller sees, its own work on the results included, so a
        warm cache (where each turn of the GIL costs more than the read it waits for) stays on
        one thread, and a disk that serves parallel requests no faster gets no more of them.
        What was chosen for a ``kind`` of item carries over to the next call (the next
        experiment's runs) until that many items of that kind have been read with it."""
        if self.io_threads == 1 or len(items) < 2:
            for item in items:
                yield fn(item)
            return
        choice = self._choices.setdefault(kind, _Choice())
        ladder = _ladder(self.io_threads)
        at, n = 0, len(items)
        while at < n:
            if choice.left > 0:
                end = min(n, at + choice.left)
                yield from self._at_level(fn, items[at:end], choice.threads)
                choice.left -= end - at
                at = end
                continue
            per_item: Dict[int, float] = {}
            best = 1
            for level in ladder:
                if at >= n:
                    return
                done = 0
                t0 = time.perf_counter()
                for result in self._at_level(fn, items[at:at + PROBE_ITEMS], level,
                                             until=t0 + PROBE_SECONDS):
                    done += 1
                    yield result
                per_item[level] = (time.perf_counter() - t0) / done
                at += done
                if per_item[level] < per_item[best] * (1 - CLIMB_GAIN):
                    best = level
                elif level > 1:
                    break  # a step up that does not pay: stop climbing
            fastest = min(per_item.values())
            best = min(level for level, t in per_item.items() if t <= fastest * (1 + TOLERANCE))
            self.io_levels.append(best)
            if choice.every and best == choice.threads:
                choice.every = min(2 * choice.every, max(PROBE_EVERY, PROBE_EVERY_MAX))
            else:
                choice.every = PROBE_EVERY
            choice.threads, choice.left = best, choice.every

    def _at_level(self, fn: Callable, items: Sequence, threads: int,
                  until: Optional[float] = None) -> Iterator:
        """``fn(item)`` on ``threads`` I/O threads (1: on this thread), taken in order. The
        threads read ahead as far as ``READ_AHEAD_ROWS`` rows and ``READ_AHEAD_MAX`` items allow
        (``_Budget``), so they go on reading while the caller writes. A measuring segment
        (``until``: a ``perf_counter`` time) starts no item after that time once it has started
        ``PROBE_MIN_ITEMS``, and reads at most a few items per thread ahead so that it can stop."""
        def stop(index: int) -> bool:
            return until is not None and index >= PROBE_MIN_ITEMS and \
                time.perf_counter() >= until

        if threads == 1:
            for index, item in enumerate(items):
                if stop(index):
                    return
                yield fn(item)
            return
        pool = self._pools.get(threads)
        if pool is None:
            pool = self._pools[threads] = ThreadPoolExecutor(
                threads, thread_name_prefix=f"fs2sql-io{threads}")
        budget = _Budget(READ_AHEAD_ROWS)
        ahead = READ_AHEAD_MAX if until is None else 4 * threads

        def job(index: int, item):
            if not budget.turn(index):
                return None  # the caller stopped: read nothing more
            result = fn(item)
            budget.hold(_rows(result))
            return result

        window: deque = deque()

        def take():
            result = window.popleft().result()
            budget.release(_rows(result))
            return result

        try:
            for index, item in enumerate(items):
                if stop(index):
                    break
                window.append(pool.submit(job, index, item))
                if len(window) >= ahead:
                    yield take()
            while window:
                yield take()
        finally:
            budget.close()
            for future in window:  # the caller stopped early (an error): read no further
                future.cancel()

    def _close_pool(self) -> None:
        prefetcher, self._prefetcher = self._prefetcher, None
        if prefetcher is not None:
            prefetcher.close()
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)

    def _checked(self, start, sub: str, folder: str) -> Iterator[Entity]:
        """Entities of a plug-in walker, checked against the target; invalid ones skipped or
        raised. A walker signals an unreadable entity by yielding its ``InvalidSource``.

        A walker that raises instead (an error outside its per-entity handling, or an OS error
        such as an unreadable folder) has stopped: the error is raised (strict) or recorded,
        together with a note that the rest of ``folder`` was not read (``--skip-invalid``)."""
        try:
            check_inside(folder, sub, "*")
            entities = iter(start())
        except InvalidSource as exc:
            self._skip_or_raise(exc, sub, "*")
            return
        while True:
            try:
                entity = next(entities)
            except StopIteration:
                return
            except InvalidSource as exc:
                self._skip_or_raise(exc, sub, "*")
                self.skipped.append(Skipped(sub, "*", folder, "the rest of this folder was not "
                                            f"read after an error in {exc.path or folder}"))
                return
            except OSError as exc:
                bad = _unreadable(exc, folder, sub)
                self._skip_or_raise(bad, sub, "*")
                self.skipped.append(Skipped(sub, "*", folder, "the rest of this folder was not "
                                            f"read after an error in {bad.path}"))
                return
            if isinstance(entity, Unchanged):
                yield entity
                continue
            try:
                if isinstance(entity, InvalidSource):
                    raise entity
                self.check(entity)
            except InvalidSource as exc:
                self._skip_or_raise(exc, exc.kind, exc.entity_id)
                continue
            yield entity

    # -- a store still being written ---------------------------------------------------------
    def _check_still_writing(self) -> None:
        """Warn when files changed while the walk read them (MLflow still logging)."""
        changed = set(self.bounds.modified_during) if self.bounds is not None else set()
        for path, mtime, size in self._running_files:
            try:
                st = os.stat(path)
            except OSError:
                if mtime is not None:
                    changed.add(path)
                continue
            if mtime is None:
                continue
            if (st.st_mtime_ns, st.st_size) != (mtime, size):
                changed.add(path)
        self._running_files.clear()
        if changed:
            first = sorted(changed)[0]
            self.warnings.append(
                f"{len(changed)} files were changed while fs2sql read the store (first: {first}):"
                " something is still writing to it. Stop it (or wait until its runs finish) and "
                "migrate again, or the database may miss the latest values.")

    # -- sync: units not read, and units caught while being written ----------------------------
    def select(self, kind: str, unit_id: str, path: str) -> Union[bool, dict]:
        """The selector's plan for a unit (True: read it all, without a selector)."""
        if self.selector is None:
            return True
        return self.selector(kind, unit_id, path)

    def pending(self, exc: InvalidSource, kind: str, unit_id: str,
                path: str) -> Optional[Unchanged]:
        """A marker for a unit that failed to read because MLflow is rewriting it right now
        (its file changed within ``pending_window_s``), or None: then it is invalid."""
        if self.pending_window_s is None:
            return None
        now = time.time()
        for where in (exc.path, os.path.dirname(exc.path or "") or None, path):
            if not where:
                continue
            try:
                mtime = os.stat(where).st_mtime
            except OSError:
                continue
            if now - mtime <= self.pending_window_s:
                return Unchanged(kind, unit_id, path, pending=True,
                                 reason=f"{exc.path or path}: {exc.what}")
            break
        return None

    def has_run(self, run_id: str) -> bool:
        """Was this run yielded (migrated) so far in this walk?"""
        return run_id in self._run_ids

    def _skip_or_raise(self, exc: InvalidSource, kind: str, entity_id: str) -> None:
        if not self.skip_invalid:
            raise exc
        self.skipped.append(
            Skipped(exc.kind or kind, exc.entity_id or entity_id, exc.path or "", exc.what)
        )

    # -- experiments -------------------------------------------------------------------------
    def read_experiment(self, exp_dir: ExperimentDir, seen_ids: Set[str]) -> Experiment:
        eid = exp_dir.dir_name
        meta_path = os.path.join(exp_dir.path, "meta.yaml")
        check_inside(exp_dir.path, "experiment", eid, is_dir=True)
        if not _NUMERIC_ID.match(eid):
            raise InvalidSource(
                f"experiment folder name '{eid}' is not a number; MLflow's SQL schema stores "
                "experiment IDs as integers, so it cannot keep this ID.",
                path=exp_dir.path, kind="experiment", entity_id=eid,
                hint="Rename the folder (and the experiment_id in its meta.yaml) to an unused "
                "number, or run again with --skip-invalid.",
            )
        if eid in seen_ids:
            raise InvalidSource(
                f"experiment {eid} exists both in {self.root} and in its .trash folder; MLflow "
                "cannot tell which one is real.",
                path=exp_dir.path, kind="experiment", entity_id=eid,
                hint="Remove or move away the copy you do not want, or run again with "
                "--skip-invalid to keep the active one.",
            )
        meta = read_yaml_mapping(meta_path, "experiment", eid)
        file_id = meta.get("experiment_id")
        if file_id is None:
            raise InvalidSource(
                "has no experiment_id field (MLflow always writes one: is the file truncated?).",
                path=meta_path, kind="experiment", entity_id=eid,
            )
        if str(file_id) != eid:
            raise InvalidSource(
                f"says experiment_id {file_id!r} but lies in folder '{eid}'.",
                path=meta_path, kind="experiment", entity_id=eid,
            )
        name = field_str(meta, "name", meta_path, "experiment", eid)
        if not name:
            raise InvalidSource("has no experiment name.", path=meta_path, kind="experiment",
                                entity_id=eid)
        other = self._experiment_names.get(name)
        if other is not None and self.rename_conflicts and exp_dir.in_trash:
            renamed = f"{name} (deleted, from {eid})"
            if renamed not in self._experiment_names:
                self.renamed.append(f"{name!r} -> {renamed!r} (experiment {eid})")
                name, other = renamed, None
        if other is not None:
            raise InvalidSource(
                f"has the name {name!r}, which experiment {other} has too; MLflow's database "
                "requires unique experiment names.",
                path=meta_path, kind="experiment", entity_id=eid,
                hint="Rename one of them in its meta.yaml, or run again with --skip-invalid.",
            )
        stage = meta.get("lifecycle_stage")
        if stage is not None and stage not in LIFECYCLE:
            raise InvalidSource(
                f"field 'lifecycle_stage' is {stage!r}; MLflow knows active and deleted.",
                path=meta_path, kind="experiment", entity_id=eid)
        self._experiment_names[name] = eid
        tags = read_key_values(os.path.join(exp_dir.path, "tags"), "experiment", eid, self.ignored)
        return Experiment(
            experiment_id=int(eid),
            name=name,
            artifact_location=field_str(meta, "artifact_location", meta_path, "experiment", eid),
            # The location decides: MLflow <= 2.2 moved deleted experiments to .trash without
            # changing the file, and MLflow's SQL store would have recorded them as deleted.
            lifecycle_stage="deleted" if exp_dir.in_trash else "active",
            creation_time=field_int(meta, "creation_time", meta_path, "experiment", eid),
            last_update_time=field_int(meta, "last_update_time", meta_path, "experiment", eid),
            tags=tags,
            path=exp_dir.path,
        )

    # -- runs --------------------------------------------------------------------------------
    def read_run(self, experiment: Experiment, run_path: str,
                 resume: Optional[dict] = None) -> Run:
        """One run, read on this thread (what the walk does for each run, without threads)."""
        unit = _Unit(self, os.path.basename(run_path), run_path)
        try:
            unit.run = self._read_run(unit, experiment, run_path, resume)
        except (InvalidSource, OSError) as exc:
            unit.error = exc
        unit.merge_into(self)
        return unit.result(self._run_ids)

    def _read_run(self, unit: "_Unit", experiment: Experiment, run_path: str,
                  resume: Optional[dict] = None) -> Run:
        rid = os.path.basename(run_path)
        meta_path = os.path.join(run_path, "meta.yaml")
        if run_path in self._linked_runs or self.bounds is None:
            check_inside(run_path, "run", rid, is_dir=True)
        else:
            self.bounds.trust(run_path)  # run_dirs saw it is no link: no system call
        if run_path in self._runs_without_meta:
            raise InvalidSource(
                "is missing: this folder holds a run's data, but MLflow cannot read a run "
                "without its meta.yaml.",
                path=meta_path, kind="run", entity_id=rid,
                hint="Restore the file (from a backup or the machine it was copied from), remove "
                "the folder, or run again with --skip-invalid to migrate everything else.")
        meta = read_yaml_mapping(meta_path, "run", rid)

        def bad(what: str) -> InvalidSource:
            return InvalidSource(what, path=meta_path, kind="run", entity_id=rid)

        file_id = meta.get("run_id") or meta.get("run_uuid")
        if file_id is None:
            raise bad("has no run_id field (MLflow always writes one: is the file truncated?).")
        if str(file_id) != rid:
            raise bad(f"says run_id {file_id!r} but lies in folder '{rid}'.")
        if str(meta.get("experiment_id")) != str(experiment.experiment_id):
            raise bad(
                f"says experiment_id {meta.get('experiment_id')!r} but lies in experiment "
                f"folder {experiment.experiment_id}."
            )
        unit.unique_at = meta_path  # is the ID new? Decided in walk order (``_Unit.result``)
        status = _enum(meta, "status", RUN_STATUS, "RUNNING", bad)
        source_type = _enum(meta, "source_type", SOURCE_TYPE, "UNKNOWN", bad)
        lifecycle = meta.get("lifecycle_stage") or "active"
        if not isinstance(lifecycle, str) or lifecycle not in LIFECYCLE:
            raise bad(f"field 'lifecycle_stage' is {lifecycle!r}; MLflow knows active and deleted.")
        ignored = unit.ignored
        params = read_key_values(os.path.join(run_path, "params"), "run", rid, ignored)
        tags = read_key_values(os.path.join(run_path, "tags"), "run", rid, ignored)
        metrics, latest, duplicates, files, resumed = _read_metrics(
            os.path.join(run_path, "metrics"), rid, ignored, resume,
            complete_lines=self.selector is not None and status == "RUNNING")
        attached = tuple(a for reader in RUN_READERS
                         for a in reader(unit, run_path, rid, experiment))
        name = field_str(meta, "run_name", meta_path, "run", rid)
        if not name:
            # Before 2.0 the name lived only in the tag; both stores fall back to it.
            name = dict(tags).get("mlflow.runName") or name
        return Run(
            run_uuid=rid,
            experiment_id=experiment.experiment_id,
            name=name,
            source_type=source_type,
            source_name=field_str(meta, "source_name", meta_path, "run", rid),
            entry_point_name=field_str(meta, "entry_point_name", meta_path, "run", rid),
            user_id=field_str(meta, "user_id", meta_path, "run", rid),
            status=status,
            start_time=field_int(meta, "start_time", meta_path, "run", rid),
            end_time=field_int(meta, "end_time", meta_path, "run", rid),
            source_version=field_str(meta, "source_version", meta_path, "run", rid),
            lifecycle_stage=lifecycle,
            artifact_uri=field_str(meta, "artifact_uri", meta_path, "run", rid),
            deleted_time=field_int(meta, "deleted_time", meta_path, "run", rid),
            params=params,
            tags=tags,
            metrics=metrics,
            latest_metrics=latest,
            path=run_path,
            duplicate_metric_lines=duplicates,
            attached=attached,
            metric_files=files,
            metrics_from=resumed,
        )


class _Unit:
    """One run as an I/O thread read it: the run (or its error, or ``unchanged``), and what
    reading it recorded. Plug-in readers (``RUN_READERS``) get it as their ``walk``: ``ignored``,
    ``not_migrated`` and ``notes`` are its own, merged into the walk in walk order; any other
    attribute is the walk's."""

    def __init__(self, walk: Walk, unit_id: str, path: str):
        self._walk = walk
        self.unit_id = unit_id
        self.path = path
        self.ignored: List[str] = []
        self.not_migrated: Dict[str, List[str]] = {}
        self.notes: Dict[str, int] = {}
        self.run: Optional[Run] = None
        self.error: Optional[BaseException] = None
        self.unchanged = False
        self.unique_at: Optional[str] = None  # meta.yaml, once the run's ID checks passed
        self.running_files: List[tuple] = []  # a RUNNING run's files as read (_file_states)

    def __getattr__(self, name: str):
        return getattr(self._walk, name)

    @property
    def rows(self) -> int:
        """How much the unit holds (its rows), for the read-ahead's budget."""
        run = self.run
        return 1 if run is None else 1 + len(run.metrics) + len(run.params) + len(run.tags)

    def merge_into(self, walk: Walk) -> None:
        walk.ignored.extend(self.ignored)
        for kind, paths in self.not_migrated.items():
            walk.not_migrated.setdefault(kind, []).extend(paths)
        for template, n in self.notes.items():
            walk.notes[template] = walk.notes.get(template, 0) + n

    def result(self, run_ids: Dict[str, str]) -> Run:
        """The run, or the first error a one-thread read would have raised: a run ID seen
        before (checked right after the ID checks in meta.yaml), else what the thread met."""
        folder = run_ids.get(self.unit_id) if self.unique_at is not None else None
        if folder is not None:
            other = os.path.join(folder, self.unit_id)
            raise InvalidSource(f"run {self.unit_id} also exists in {other}; a run ID must be "
                                "unique.", path=self.unique_at, kind="run",
                                entity_id=self.unit_id)
        if self.error is not None:
            raise self.error
        assert self.run is not None
        return self.run


def _file_states(run_path: str) -> List[tuple]:
    """(path, mtime_ns, size) of a RUNNING run's files, re-checked at the end of the walk; the
    metrics folder itself with None: a metric file added later changes nothing else."""
    states: List[tuple] = []
    for sub in ("", "metrics", "params", "tags"):
        folder = os.path.join(run_path, sub)
        try:
            names = ["meta.yaml"] if not sub else os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            states.append((path, st.st_mtime_ns, st.st_size))
        if not sub:
            states.append((os.path.join(run_path, "metrics"), None, None))
    return states


class _Budget:
    """How far I/O threads may read ahead of the caller: a thread starts its next item only
    while the results waiting hold at most ``rows`` rows, or when that item is the one the
    caller waits for next (so the caller never waits for a thread that waits for it)."""

    def __init__(self, rows: int):
        self.rows = rows
        self.held = 0
        self.next = 0  # index of the item the caller takes next
        self.closed = False
        self._cond = threading.Condition()

    def turn(self, index: int) -> bool:
        with self._cond:
            while self.held > self.rows and index != self.next and not self.closed:
                self._cond.wait()
            return not self.closed

    def hold(self, rows: int) -> None:
        with self._cond:
            self.held += rows

    def release(self, rows: int) -> None:
        with self._cond:
            self.held -= rows
            self.next += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


@dataclass
class _Choice:
    """What ``Walk.in_order`` chose for a kind of item: how many threads read it, and for how
    many more items before it measures again."""
    threads: int = 1
    left: int = 0
    every: int = 0  # items between the last measurement and the next; 0: not measured yet


def _rows(result) -> int:
    return getattr(result, "rows", 1)  # a run's size (``_Unit.rows``); 1 for anything else


def _ladder(most: int) -> List[int]:
    """1, 2, 4, ... and ``most`` itself: the thread counts ``in_order`` tries."""
    steps, k = [1], 2
    while k < most:
        steps.append(k)
        k *= 2
    return steps + [most] if most > 1 else steps


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _holds_any(folder: str, names) -> bool:
    return any(os.path.lexists(os.path.join(folder, n)) for n in names)


def _unreadable(exc: OSError, path: str, kind: str) -> InvalidSource:
    where = exc.filename or path
    return InvalidSource(f"cannot be read ({exc.strerror or exc}).", path=where, kind=kind,
                         entity_id=os.path.basename(path))


def _enum(meta, key, names, default, bad) -> str:
    value = meta.get(key)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value in names:
        return names[value]
    if isinstance(value, str) and value in names.values():
        return value
    raise bad(f"field '{key}' has the unknown value {value!r}; MLflow writes one of "
              f"{sorted(names)} ({', '.join(sorted(set(names.values())))}).")


TAIL_BYTES = 256  # how much before a resume offset must be unchanged (else: read it all again)


def tail_hash(data: bytes) -> str:
    return hashlib.blake2b(data[-TAIL_BYTES:], digest_size=8).hexdigest()


def _read_metrics(folder: str, rid: str, ignored: List[str], resume: Optional[dict] = None,
                  complete_lines: bool = False):
    """Points, latest points, duplicate count, (key, bytes consumed, tail hash) per file, and the
    keys read from a resume offset. ``resume``: {key: (offset, tail hash)} -- only the lines
    after the offset are parsed, unless the file is shorter or its bytes before the offset
    changed (rewritten: read whole). ``complete_lines``: a last line without its newline is
    being written; leave it for next time."""
    metrics = []
    latest = []
    duplicates = 0
    files = []
    resumed = []
    for key, path in sorted(walk_key_files(folder, ignored, "run", rid)):
        start, before, data = _metric_bytes(path, rid, (resume or {}).get(key))
        if complete_lines:
            data = data[:data.rfind(b"\n") + 1]
        if start:
            resumed.append(key)
        files.append((key, start + len(data), tail_hash(before + data)))
        if not data and (start or complete_lines):
            continue  # nothing new (or nothing complete yet); an empty file is invalid
        points, last, dups = parse_metric_lines(data, key, path, rid)
        metrics.extend(points)
        latest.append(last)
        duplicates += dups
    return tuple(metrics), tuple(latest), duplicates, tuple(files), tuple(resumed)


def _metric_bytes(path: str, rid: str, resume: Optional[tuple]):
    """(offset, the bytes just before it, the bytes from there): the whole file, or what
    follows ``resume``'s offset when the bytes before it are still the ones hashed last time."""
    if not resume:
        return 0, b"", read_bytes(path, "run", rid, watch=True)
    offset, expected = resume
    head = max(0, offset - TAIL_BYTES)
    try:
        with open(path, "rb") as f:
            if store_bounds() is not None:
                store_bounds().note_mtime(path, os.fstat(f.fileno()).st_mtime_ns)
            f.seek(head)
            data = f.read()
    except OSError:
        return 0, b"", read_bytes(path, "run", rid, watch=True)  # says what is wrong
    before = data[:offset - head]
    if len(before) < offset - head or tail_hash(before) != expected:
        return 0, b"", read_bytes(path, "run", rid, watch=True)  # rewritten: all of it again
    return offset, before, data[offset - head:]
