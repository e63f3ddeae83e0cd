"""Phase 1 of a sync, before any database lock: find what changed in one source.

The walk runs with a selector (``walk.Walk(selector=...)``) that stats each run, trace and
logged model folder and declines those whose signature equals the state's: they are not read.
Every unit that is read is turned into rows and compared with the state's digest; only units
whose rows changed (or are new) go into the spool -- a temporary file of pickled entities, so
memory stays flat whatever the size of the change -- for phase 2 (``apply.py``/``core.py``) to
merge with the database under the lock. Units the state knows but the walk did not meet were
removed from the source; units the walk skipped (``--skip-invalid``) or caught while MLflow was
rewriting them are neither changed nor removed.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Set

from .. import rows as _rows
from ..model import Experiment, Run, Unchanged
from ..rows import rows_for
from ..walk import Walk
from . import state
from .units import digest, key_of, relative, signature, unit_key

# A unit that cannot be read although its file changed less than this long ago is taken to be
# in the middle of an MLflow rewrite (meta.yaml is truncated and rewritten in place).
PENDING_WINDOW_S = 60.0
EVIDENCE = 64  # run/trace/model IDs looked up to recognise a store


class Selector:
    """``Walk(selector=)``: read a unit only if its files changed since the last sync."""

    def __init__(self, units: Dict[str, state.UnitState], started: float, full: bool = False):
        self.units = units
        self.started = started
        self.full = full
        self.sigs: Dict[str, str] = {}

    def __call__(self, kind: str, unit_id: str, path: str):
        key = unit_key(kind, unit_id)
        sig = signature(path, self.started)
        self.sigs[key] = sig
        known = self.units.get(key)
        if known is None or self.full:
            return True
        if sig and known.sig == sig:
            return False
        if kind == "run" and known.offsets:
            return {k: (v[0], v[1]) for k, v in known.offsets.items()}
        return True


class Spool:
    """Entities written to a temporary file and read back in order (flat memory)."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="fs2sql-sync-")
        self.count = 0

    def add(self, item) -> None:
        pickle.dump(item, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def __iter__(self) -> Iterator:
        self._file.seek(0)
        while True:
            try:
                yield pickle.load(self._file)
            except EOFError:
                return

    def close(self) -> None:
        self._file.close()


@dataclass
class SpooledUnit:
    key: str
    path: str  # relative to the store root
    sig: str
    entity: object


@dataclass
class Plan:
    root: str
    source: Optional[state.Source]
    units: Dict[str, state.UnitState]
    experiments: Dict[int, state.MappedExperiment]
    spool: Spool
    walk: Walk
    sig_only: Dict[str, str] = field(default_factory=dict)
    removed: List[str] = field(default_factory=list)
    pending: List[Unchanged] = field(default_factory=list)
    new_experiments: List[Experiment] = field(default_factory=list)
    read: int = 0  # units read and parsed
    not_read: int = 0  # units the quick check skipped

    @property
    def changed(self) -> int:
        return self.spool.count


def evidence(root: str, limit: int = EVIDENCE) -> List[str]:
    """Unit keys of run IDs (the first ``limit`` in walk order): a store's fingerprint. Only
    folder names are listed; nothing is read."""
    from ..walk import _RUN_ID, EXPERIMENT_RESERVED, TRASH

    found: List[str] = []
    for base in (root, os.path.join(root, TRASH)):
        try:
            experiments = sorted(e.name for e in os.scandir(base) if e.is_dir()
                                 and e.name.isdigit())
        except OSError:
            continue
        for exp in experiments:
            try:
                names = sorted(e.name for e in os.scandir(os.path.join(base, exp))
                               if e.name not in EXPERIMENT_RESERVED and _RUN_ID.match(e.name))
            except OSError:
                continue
            for name in names:
                found.append(unit_key("run", name))
                if len(found) >= limit:
                    return found
    return found


def read_source(root: str, conn, columns, *, skip_invalid: bool, full: bool,
                rename_conflicts: bool, started: float, progress, artifacts=None,
                io_threads: Optional[int] = None) -> Plan:
    """Phase 1 for one source (``conn`` reads the state; nothing is written)."""
    have_state = state.exists(conn)
    source = state.identify(conn, root, evidence(root)) if have_state else None
    units = state.load_units(conn, source.source_id) if source else {}
    experiments = state.load_experiments(conn, source.source_id) if source else {}
    conn.commit()
    selector = Selector(units, started, full)
    walk = Walk(root, skip_invalid=skip_invalid, check=columns.check, selector=selector,
                pending_window_s=PENDING_WINDOW_S, rename_conflicts=rename_conflicts,
                io_threads=io_threads)
    plan = Plan(root, source, units, experiments, Spool(), walk)
    from .experiments import SyncTransform

    undo = _rows.add_transform(SyncTransform(
        {x: m.experiment_id for x, m in experiments.items()},
        {x for x, m in experiments.items() if m.owner},
        {x: m.name for x, m in experiments.items() if m.name},
        source.source_id if source else ""))
    # --artifacts-to: URIs as the database will hold them (``artifacts.ArtifactStep``), after
    # the IDs; the digests compare rewritten rows with rewritten rows.
    undo_uris = artifacts.install() if artifacts is not None else (lambda: None)
    seen: Set[str] = set()
    try:
        progress.start("Reading changes", walk.count_runs())
        for entity in walk:
            _take(plan, entity, seen, selector)
            if isinstance(entity, (Run, Unchanged)) and getattr(entity, "kind", "run") == "run":
                progress.advance()
    finally:
        undo_uris()
        undo()
    for skipped in walk.skipped:  # neither changed nor removed: kept as they are
        if skipped.entity_id == "*":
            prefix = relative(root, skipped.path)
            seen.update(k for k, u in units.items() if u.path.startswith(prefix))
        else:
            seen.add(unit_key(skipped.kind, skipped.entity_id))
    plan.removed = [k for k in units if k not in seen]
    return plan


def _take(plan: Plan, entity, seen: Set[str], selector: Selector) -> None:
    key = key_of(entity)
    seen.add(key)
    if isinstance(entity, Unchanged):
        if entity.pending:
            plan.pending.append(entity)
        else:
            plan.not_read += 1
        return
    plan.read += 1
    if isinstance(entity, Experiment) and entity.experiment_id not in plan.experiments:
        plan.new_experiments.append(entity)
    known = plan.units.get(key)
    sig = selector.sigs.get(key, "")
    unit_rows = rows_for(entity)
    unchanged = known is not None and known.digest == digest(unit_rows)
    if unchanged and isinstance(entity, Run):
        unchanged = not entity.metrics and _same_offsets(entity, known)
    if unchanged:
        if known.sig != sig:
            plan.sig_only[key] = sig
        return
    plan.spool.add(SpooledUnit(key, relative(plan.root, getattr(entity, "path", "")), sig,
                               entity))


def _same_offsets(run: Run, known: state.UnitState) -> bool:
    old = known.offsets or {}
    return all(key in old and old[key][0] == end for key, end, _ in run.metric_files)
