"""The three-way merge of one unit: what the source holds now, what the database holds now, and
what the last sync brought in (``base``) -- per row and per field, as git merges a file.

For each row (by primary key) and each field:

* the source did not change it since the last sync -> the database keeps what it has (whatever
  the server did with it);
* the database still holds what the last sync wrote -> the source's new value is written;
* both changed it to different values -> a *conflict*: the database keeps its value (the team
  saw and edited it on the server) and the conflict is reported with both values;
* a row the source no longer has is deleted only if the database still holds it as synced;
* a row only the database has (the server wrote it) is never touched.

A unit seen for the first time (no base) whose rows the database already holds was either
brought in by ``fs2sql migrate`` or another tool (``adopt``: the source's values win, because its
ID is unique to this store) or belongs to a shared name space (an experiment of the same name,
a registered model, a dataset: the database's values win, as in a conflict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .units import APPEND_ONLY, TableShape


@dataclass
class Ops:
    """Row changes of a batch, per table, in the target's column order."""

    inserts: Dict[str, List[tuple]] = field(default_factory=dict)
    updates: Dict[str, List[Tuple[tuple, Dict[str, object]]]] = field(default_factory=dict)
    deletes: Dict[str, List[tuple]] = field(default_factory=dict)
    conflicts: List[str] = field(default_factory=list)

    def insert(self, table: str, row: tuple) -> None:
        self.inserts.setdefault(table, []).append(row)

    def update(self, table: str, key: tuple, values: Dict[str, object]) -> None:
        self.updates.setdefault(table, []).append((key, values))

    def delete(self, table: str, key: tuple) -> None:
        self.deletes.setdefault(table, []).append(key)

    def __bool__(self) -> bool:
        return any(self.inserts.values()) or any(self.updates.values()) or \
            any(self.deletes.values())


def merge_table(ops: Ops, shape: TableShape, label: str, new: List[tuple],
                base: Optional[Dict[tuple, Tuple[str, ...]]], db: Dict[tuple, tuple],
                source_wins: bool) -> None:
    """Add to ``ops`` what it takes to bring one table's rows of one unit up to date."""
    table = shape.table
    new_by_key = {shape.key(r): r for r in new}
    base = base or {}
    for key, row in new_by_key.items():
        was = base.get(key)
        have = db.get(key)
        mine = shape.hashes(row)
        if have is None:
            if was is None:
                ops.insert(table, row)
            elif mine != was:  # changed in the source, deleted on the server: stays deleted
                ops.conflicts.append(f"{label}: {_what(shape, row)} was deleted in the "
                                     "database and changed in the source; it stays deleted")
            continue
        theirs = shape.hashes(have)
        if theirs == mine:
            continue
        changes = {}
        for n, i in enumerate(shape.fields):
            if mine[n] == theirs[n]:
                continue
            if was is not None and mine[n] == was[n]:
                continue  # only the database changed it
            if (was is not None and theirs[n] == was[n]) or (was is None and source_wins):
                changes[shape.names[i]] = row[i]
                continue
            ops.conflicts.append(
                f"{label}: {_what(shape, row)} field '{shape.names[i]}': kept the database's "
                f"{_short(have[i])}, the source has {_short(row[i])}")
        if changes:
            ops.update(table, key, changes)
    for key, was in base.items():
        if key in new_by_key:
            continue
        have = db.get(key)
        if have is None:
            continue
        if shape.hashes(have) == was:
            ops.delete(table, key)
        else:
            ops.conflicts.append(f"{label}: {_what(shape, have)} was removed from the source "
                                 "but changed in the database since; kept")


def pks_of(shape: TableShape, new: List[tuple], base: Optional[dict]) -> List[tuple]:
    keys = {shape.key(r) for r in new}
    keys.update((base or {}).keys())
    return list(keys)


def latest_ops(ops: Ops, shape: TableShape, candidates: List[tuple],
               db: Dict[tuple, tuple]) -> None:
    """latest_metrics: a candidate replaces the database's row only when (step, timestamp,
    value) is strictly greater -- the rule of MLflow's SQL store when it logs a point."""
    names = shape.names
    at = {c: names.index(c) for c in ("step", "timestamp", "value")}

    def rank(row):
        return (row[at["step"]], row[at["timestamp"]], row[at["value"]])

    for row in candidates:
        key = shape.key(row)
        have = db.get(key)
        if have is None:
            ops.insert(shape.table, row)
        elif rank(row) > rank(have):
            ops.update(shape.table, key, {names[i]: row[i] for i in shape.fields})


def _what(shape: TableShape, row: tuple) -> str:
    table = shape.table
    names = shape.names
    for column in ("key", "param_key", "tag_key", "alias", "name"):
        if column in names and table not in ("experiments", "runs"):
            return f"{table} row {row[names.index(column)]!r}"
    return f"{table} row"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["APPEND_ONLY", "Ops", "latest_ops", "merge_table", "pks_of"]
