"""Phase 2 of a sync, inside the write transaction: merge the spooled units with the database.

Experiments first (``experiments.assign``: the database ID of every experiment met for the first
time), then the spooled units in batches -- each batch's base and database rows read with a few
``IN`` queries, merged (``merge.py``), written (``apply.py``) -- then the units removed from the
source, then the state itself. Nothing here commits; ``core.py`` does, once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from .. import rows as _rows
from ..errors import InvalidSource
from ..model import Experiment, Run
from ..rows import entity_identity, rows_for
from . import state
from .apply import Cascade, Tables, apply, read_rows
from .apply import read_back as _read_back
from .experiments import Assigned, SyncTransform, assign
from .merge import APPEND_ONLY, Ops, latest_ops, merge_table, pks_of
from .plan import Plan, SpooledUnit
from .units import digest, make_base, metric_offsets, read_base

BATCH_UNITS = 500
# Kinds whose IDs are unique to the store that made them (random UUIDs): a database row with
# such an ID and no sync state came from this very store (fs2sql migrate, another tool).
UNIQUE_KINDS = ("run", "trace", "logged model")
# The table holding each kind's own row, and its key column(s): where removals start.
ROOT = {"run": ("runs", ("run_uuid",)), "trace": ("trace_info", ("request_id",)),
        "logged model": ("logged_models", ("model_id",)),
        "registered model": ("registered_models", ("name",)),
        "model version": ("model_versions", ("name", "version")),
        "experiment": ("experiments", ("experiment_id",))}
LIFECYCLE = {"run": "lifecycle_stage", "logged model": "lifecycle_stage",
             "experiment": "lifecycle_stage"}


@dataclass
class Outcome:
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)
    conflicts: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    skipped: list = field(default_factory=list)
    kept_removed: int = 0
    unwritten: List[str] = field(default_factory=list)  # --verify: writes not read back
    read_back: bool = False
    assigned: Dict[int, Assigned] = field(default_factory=dict)


def apply_plan(live, plan: Plan, columns, source: state.Source, *, policy: str,
               rename_conflicts: bool, skip_invalid: bool, artifacts=None,
               read_back: bool = False) -> Outcome:
    """``artifacts`` (``artifacts.ArtifactStep``): its URI rewriting applies, and it plans the
    copy of every changed unit's files (copied by the caller before it commits)."""
    conn = live.conn
    tables = Tables(columns)
    out = Outcome()
    out.read_back = read_back
    mapped = dict(plan.experiments)
    skipped_experiments: Set[int] = set()
    taken: Set[int] = set()
    for exp in plan.new_experiments:
        try:
            a = assign(conn, live, source.source_id, exp, policy=policy,
                       rename_conflicts=rename_conflicts, taken=taken)
        except InvalidSource as exc:
            if not skip_invalid:
                raise
            skipped_experiments.add(exp.experiment_id)
            out.skipped.append((exc.kind or "experiment", exc.entity_id or "", exc.path or "",
                                exc.what))
            continue
        taken.add(a.experiment_id)
        out.assigned[exp.experiment_id] = a
        mapped[exp.experiment_id] = state.MappedExperiment(a.experiment_id, a.owner, a.name)
        state.save_experiment(conn, source.source_id, exp.experiment_id,
                              mapped[exp.experiment_id])
    transform = SyncTransform({x: m.experiment_id for x, m in mapped.items()},
                              {x for x, m in mapped.items() if m.owner},
                              {x: m.name for x, m in mapped.items() if m.name},
                              source.source_id)
    undo = _rows.add_transform(transform)
    undo_uris = artifacts.install() if artifacts is not None else (lambda: None)
    writes = state.UnitWrites()
    try:
        batch: List[SpooledUnit] = []
        for item in plan.spool:
            if getattr(item.entity, "experiment_id", None) in skipped_experiments:
                continue
            batch.append(item)
            if len(batch) >= BATCH_UNITS:
                _merge_batch(live, tables, plan, source, batch, writes, out, skip_invalid,
                             artifacts)
                batch = []
        if batch:
            _merge_batch(live, tables, plan, source, batch, writes, out, skip_invalid,
                         artifacts)
        _remove(live, tables, plan, source, mapped, writes, out)
    finally:
        undo_uris()
        undo()
    writes.sig_only.update(plan.sig_only)
    state.write_units(conn, source.source_id, writes)
    return out


def _merge_batch(live, tables: Tables, plan: Plan, source: state.Source,
                 batch: List[SpooledUnit], writes: state.UnitWrites, out: Outcome,
                 skip_invalid: bool, artifacts=None) -> None:
    conn = live.conn
    bases = state.load_bases(conn, source.source_id, [u.key for u in batch if u.key in plan.units])
    fresh = [u.key for u in batch if u.key not in plan.units
             and entity_identity(u.entity)[0] in UNIQUE_KINDS]
    elsewhere = state.holders(conn, source.source_id, fresh)
    prepared = []
    wanted: Dict[str, List[tuple]] = {}
    for unit in batch:
        unit_rows = rows_for(unit.entity)
        projected = {t: tables.project(t, r) for t, r in unit_rows.items() if t in tables.shapes}
        base = read_base(bases.get(unit.key, {}).get("rows"))
        for table, rows in projected.items():
            shape = tables.shapes[table]
            if table == "metrics":
                continue
            keys = [shape.key(r) for r in rows] if table == "latest_metrics" else \
                pks_of(shape, rows, base.get(table))
            wanted.setdefault(table, []).extend(keys)
        for table, old in base.items():
            if table not in projected and table in tables.shapes:
                wanted.setdefault(table, []).extend(old)
        prepared.append((unit, unit_rows, projected, base))
    db = {t: read_rows(conn, tables, t, keys, live.for_update) for t, keys in wanted.items()}
    ops = Ops()
    for unit, unit_rows, projected, base in prepared:
        kind, _ = entity_identity(unit.entity)
        label = f"{kind} {entity_identity(unit.entity)[1]}"
        if unit.key in elsewhere and _differs(tables, projected, db):
            other_source, other_path = elsewhere[unit.key]
            exc = InvalidSource(
                f"{kind} {entity_identity(unit.entity)[1]} is also in another source synced "
                f"into this database ({other_path}, source {other_source}) with different "
                "content; one ID cannot be two entities.", path=getattr(unit.entity, "path", ""),
                kind=kind, entity_id=entity_identity(unit.entity)[1],
                hint="Remove one of the copies, or run again with --skip-invalid to leave this "
                "source's copy out.")
            if not skip_invalid:
                raise exc
            out.skipped.append((kind, exc.entity_id, exc.path, exc.what))
            continue
        if artifacts is not None:
            artifacts.observe(unit.entity)
        # No base: a unique ID, or an experiment this source turned out to have made (adopted),
        # came from this store: its values win. Shared names (joined) keep the database's.
        adopted = isinstance(unit.entity, Experiment) and getattr(
            out.assigned.get(unit.entity.experiment_id), "how", "") == "adopted"
        source_wins = not base and (kind in UNIQUE_KINDS or adopted) and \
            unit.key not in elsewhere
        for table in sorted(set(projected) | set(base), key=_order):
            if table in APPEND_ONLY or table not in tables.shapes:
                continue
            shape = tables.shapes[table]
            rows = projected.get(table, [])
            have = db.get(table, {})
            merge_table(ops, shape, label, rows, base.get(table), have, source_wins)
        if isinstance(unit.entity, Run):
            for row in projected.get("metrics", ()):
                ops.insert("metrics", row)
            latest_ops(ops, tables.shapes["latest_metrics"], projected.get("latest_metrics", []),
                       db.get("latest_metrics", {}))
        known = plan.units.get(unit.key)
        offsets = metric_offsets(unit.entity, known.offsets if known else None) \
            if isinstance(unit.entity, Run) else None
        writes.upsert(unit.key, unit.path, unit.sig, digest(unit_rows), offsets,
                      {"rows": make_base(projected, tables.shapes)})
    apply(live, tables, ops, out.counts)
    out.conflicts.extend(ops.conflicts)
    if out.read_back:
        out.unwritten.extend(_read_back(conn, tables, ops))


def _differs(tables: Tables, projected, db) -> bool:
    for table, rows in projected.items():
        if table in APPEND_ONLY:
            continue
        shape = tables.shapes[table]
        have = db.get(table, {})
        for row in rows:
            got = have.get(shape.key(row))
            if got is None or shape.hashes(got) != shape.hashes(row):
                return True
    return False


def _order(table: str) -> int:
    order = _rows.table_order()
    return order.index(table) if table in order else len(order)


def _remove(live, tables: Tables, plan: Plan, source: state.Source,
            mapped: Dict[int, state.MappedExperiment], writes: state.UnitWrites,
            out: Outcome) -> None:
    """Units the source no longer holds. Traces, registry entries and datasets go (MLflow
    deletes those by removing their files); runs and logged models go only if the database
    holds them as deleted (``mlflow gc``), else they stay -- a store that lost files (a scratch
    purge, a partial copy) must not empty the team's database; experiments go when deleted and
    nothing is left in them."""
    if not plan.removed:
        return
    conn = live.conn
    bases = state.load_bases(conn, source.source_id, plan.removed)
    cascade: Optional[Cascade] = None
    ops = Ops()
    kept = 0
    order = ["model alias", "model version", "registered model", "trace", "logged model", "run",
             "dataset", "experiment"]
    for key in sorted(plan.removed, key=lambda k: order.index(k.split(":", 1)[0])
                      if k.split(":", 1)[0] in order else 0):
        kind, unit_id = key.split(":", 1)
        writes.deletes.append(key)
        base = read_base(bases.get(key, {}).get("rows"))
        root = ROOT.get(kind)
        if root is None or root[0] not in tables.shapes:  # datasets, aliases: row by row
            for table, old in base.items():
                if table in tables.shapes:
                    have = read_rows(conn, tables, table, list(old), live.for_update)
                    merge_table(ops, tables.shapes[table], f"{kind} {unit_id}", [], old, have,
                                False)
            continue
        table, key_cols = root
        keys = list(base.get(table, {}))
        if kind == "experiment":
            x = int(unit_id)
            m = mapped.get(x)
            keys = [(m.experiment_id,)] if m and m.owner else []
        if not keys:
            continue
        shape = tables.shapes[table]
        have = read_rows(conn, tables, table, keys, live.for_update)
        if not have:
            continue
        column = LIFECYCLE.get(kind)
        if column is not None:
            at = shape.names.index(column)
            alive = [k for k, r in have.items() if r[at] != "deleted"
                     and not _in_deleted_experiment(conn, shape, r)]
            if alive or (kind == "experiment" and _still_used(conn, tables, keys[0][0])):
                kept += kind in ("run", "logged model")
                continue
        if cascade is None:
            cascade = Cascade(conn)
        cascade.delete(conn, table, list(key_cols), list(have), out.counts)
    apply(live, tables, ops, out.counts)
    out.conflicts.extend(ops.conflicts)
    if kept:
        out.kept_removed += kept
        out.notes.append(
            f"{kept} runs or logged models are no longer in the source but were never deleted "
            "in MLflow: they stay in the database (a store that lost files must not empty it). "
            "Delete them in MLflow if they should go.")


def _in_deleted_experiment(conn, shape, row) -> bool:
    """A run (or logged model) of an experiment the database holds as deleted is gone with it
    when it leaves the store: MLflow <= 2.2 deleted an experiment without marking its runs
    deleted, and ``mlflow gc`` then removes the experiment's folder, runs included."""
    if "experiment_id" not in shape.names or shape.table == "experiments":
        return False
    mark = "%s" if conn.dialect.name != "sqlite" else "?"
    stage = conn.exec_driver_sql(
        f"SELECT lifecycle_stage FROM experiments WHERE experiment_id = {mark}",
        (row[shape.names.index("experiment_id")],)).scalar()
    return stage == "deleted"


def _still_used(conn, tables: Tables, experiment_id: int) -> bool:
    mark = "%s" if conn.dialect.name != "sqlite" else "?"
    for table in ("runs", "trace_info", "logged_models", "datasets"):
        if table in tables.shapes and conn.exec_driver_sql(
                f"SELECT 1 FROM {table} WHERE experiment_id = {mark} LIMIT 1",
                (experiment_id,)).first():
            return True
    return False


__all__ = ["Experiment", "Outcome", "apply_plan"]
