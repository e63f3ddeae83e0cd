"""The first sync into an empty target is a migration (``migrate.migrate``, same speed) that also
writes the sync state, in the migration's own transaction (SQLite: the temporary file; PostgreSQL:
the load's transaction; MySQL: the staging database, renamed in with everything else).

``Recorder`` is the migration's hook: its ``selector`` takes each unit's signature before the
unit is read (and reads everything), ``observe`` keeps each unit's digest, base and metric
offsets, flushed to the state tables every ``FLUSH_UNITS`` units (memory stays flat), and
``finish`` writes the source and its experiment mapping before the migration publishes.
"""

from __future__ import annotations

from typing import Dict, Optional

from ..model import Experiment, Run
from . import state
from .apply import Tables
from .plan import PENDING_WINDOW_S
from .units import digest, key_of, make_base, metric_offsets, relative, signature, unit_key

FLUSH_UNITS = 2000


class Recorder:
    pending_window_s = PENDING_WINDOW_S

    def __init__(self, root: str, started: float):
        self.root = root
        self.started = started
        self.source = state.new_source(root)
        self.sigs: Dict[str, str] = {}
        self.writes = state.UnitWrites()
        self.experiments: Dict[int, int] = {}
        self.pending = []
        self._conn = None
        self._tables: Optional[Tables] = None
        self.units = 0

    def selector(self, kind: str, unit_id: str, path: str):
        self.sigs[unit_key(kind, unit_id)] = signature(path, self.started)
        return True

    def begin(self, conn, columns) -> None:
        """The migration's connection is open and its schema made."""
        self._conn = conn
        self._tables = Tables(columns)
        state.create(conn)

    def observe(self, entity, unit_rows) -> None:
        if self._tables is None:  # a dry run: nothing to record
            return
        key = key_of(entity)
        tables = self._tables
        projected = {t: tables.project(t, r) for t, r in unit_rows.items() if t in tables.shapes}
        offsets = metric_offsets(entity, None) if isinstance(entity, Run) else None
        if isinstance(entity, Experiment):
            db_id = projected["experiments"][0][0] if projected.get("experiments") else \
                entity.experiment_id
            self.experiments[entity.experiment_id] = db_id
        self.writes.upsert(key, relative(self.root, getattr(entity, "path", "")),
                           self.sigs.pop(key, ""), digest(unit_rows), offsets,
                           {"rows": make_base(projected, tables.shapes)})
        self.units += 1
        if len(self.writes.upserts) >= FLUSH_UNITS:
            self.flush()

    def flush(self) -> None:
        if self._conn is not None and len(self.writes):
            state.write_units(self._conn, self.source.source_id, self.writes)
            self.writes = state.UnitWrites()

    artifacts = None  # ArtifactOptions of the sync, kept in the state

    def finish(self, policy: str) -> None:
        """Before the migration publishes: the rest of the units, the source, the mapping."""
        if self._conn is None:
            return
        self.flush()
        for x, db_id in self.experiments.items():
            state.save_experiment(self._conn, self.source.source_id, x,
                                  state.MappedExperiment(db_id, True))
        state.save_source(self._conn, self.source, self.root)
        state.set_meta(self._conn, "experiment_ids", policy)
        state.save_artifacts(self._conn, self.artifacts)
