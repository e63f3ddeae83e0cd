"""Units: what ``sync`` tracks one by one, and how it tells cheaply whether one changed.

A unit is one top-level entity of the walk (an experiment, a run with its inputs and model
links, a dataset, a trace with its assessments, a logged model, a registered model, a model
version, an alias), named ``kind:id`` with the ID as the source has it. For each unit the state
keeps (``state.py``):

* ``sig`` -- for runs, traces and logged models (the numerous ones): size and mtime of every
  file of the unit (its folder without ``artifacts/``), hashed. Equal to last time: the unit is
  not read at all (rsync's quick check). A file modified in the last ``RACY_S`` seconds before
  the scan makes the signature "racy" (empty): the next sync reads the unit again, because a
  second change within the same clock tick would keep size and mtime (git's "racily clean").
* ``digest`` -- a hash of every row the unit became (metric points excepted): a unit that was
  read but is unchanged (touched files, a copy with new mtimes) costs no database work.
* ``base`` -- per row, a short hash of each field as last synced: the common ancestor of the
  three-way merge (``merge.py``).
* ``offsets`` -- per metric file, the bytes already synced and a hash of those just before:
  only lines after it are parsed and inserted (metric files are append-only).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..model import Experiment, Run, Unchanged
from ..rows import SPECS, entity_identity

RACY_S = 2.0
HASH_BYTES = 6  # 48-bit field hashes: collisions are irrelevant next to the cost of storage
_MAX_UNIT = 400  # unit keys longer than this are shortened with a hash (index size limits)


def unit_key(kind: str, unit_id: str) -> str:
    key = f"{kind}:{unit_id}"
    if len(key) > _MAX_UNIT:
        key = key[:_MAX_UNIT - 33] + "#" + hashlib.sha1(key.encode()).hexdigest()[:32]
    return key


def key_of(entity) -> str:
    if isinstance(entity, Unchanged):
        return unit_key(entity.kind, entity.unit_id)
    kind, unit_id = entity_identity(entity)
    return unit_key(kind, unit_id)


def relative(root: str, path: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path


# -- signatures --------------------------------------------------------------------------------
def signature(folder: str, started: float) -> str:
    """Size and mtime of every file below ``folder`` except ``artifacts/``, hashed ('' when a
    file changed within ``RACY_S`` of ``started`` or the folder cannot be listed)."""
    h = hashlib.blake2b(digest_size=12)
    newest = 0
    stack = [folder]
    try:
        while stack:
            directory = stack.pop()
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    if entry.name == "artifacts" and directory == folder:
                        continue
                    stack.append(entry.path)
                    h.update(b"d" + entry.path.encode("utf-8", "surrogateescape") + b"\0")
                    continue
                st = entry.stat()
                newest = max(newest, st.st_mtime_ns)
                h.update(f"f{entry.path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode(
                    "utf-8", "surrogateescape"))
    except OSError:
        return ""
    if newest >= (started - RACY_S) * 1e9:
        return ""
    return h.hexdigest()


# -- field hashes ------------------------------------------------------------------------------
def _norm(value):
    return int(value) if isinstance(value, bool) else value


def field_hash(value) -> str:
    return hashlib.blake2b(repr(_norm(value)).encode("utf-8", "surrogateescape"),
                           digest_size=HASH_BYTES).hexdigest()


class TableShape:
    """Where a table's primary key and other fields sit in its rows (``TableSpec.columns``
    order, projected to the columns the target has)."""

    def __init__(self, table: str, names: Sequence[str]):
        spec = SPECS[table]
        self.table = table
        self.names = list(names)
        self.pk = [self.names.index(c) for c in spec.pk if c in self.names]
        self.fields = [i for i in range(len(self.names)) if i not in self.pk]

    def key(self, row: tuple) -> tuple:
        return tuple(_norm(row[i]) for i in self.pk)

    def hashes(self, row: tuple) -> Tuple[str, ...]:
        return tuple(field_hash(row[i]) for i in self.fields)


# Rows of these tables are not kept in ``base`` (millions): metric files are append-only and
# tracked by offsets; latest_metrics follows the points.
APPEND_ONLY = ("metrics", "latest_metrics")


def digest(unit_rows: Dict[str, List[tuple]]) -> str:
    """One hash of every row of a unit (metric points excepted), order-independent."""
    h = hashlib.blake2b(digest_size=16)
    for table in sorted(unit_rows):
        if table in APPEND_ONLY:
            continue
        rows = unit_rows[table]
        h.update(table.encode() + b"\0")
        for text in sorted(repr(tuple(map(_norm, r))) for r in rows):
            h.update(text.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def make_base(unit_rows: Dict[str, List[tuple]], shapes: Dict[str, TableShape]) -> dict:
    """{table: [[pk..., "h1 h2 ..."], ...]} of a unit's rows as written."""
    out = {}
    for table, rows in unit_rows.items():
        if table in APPEND_ONLY or not rows or table not in shapes:
            continue
        shape = shapes[table]
        out[table] = [list(shape.key(r)) + [" ".join(shape.hashes(r))] for r in rows]
    return out


def read_base(base: Optional[dict]) -> Dict[str, Dict[tuple, Tuple[str, ...]]]:
    """The stored base as {table: {pk: field hashes}}."""
    out: Dict[str, Dict[tuple, Tuple[str, ...]]] = {}
    for table, rows in (base or {}).items():
        out[table] = {tuple(r[:-1]): tuple(r[-1].split(" ")) if r[-1] else () for r in rows}
    return out


def metric_offsets(run: Run, previous: Optional[dict]) -> dict:
    """{key: [offset, tail hash]} after reading ``run``; keys not read keep their old value."""
    out = dict(previous or {})
    for key, end, tail in run.metric_files:
        out[key] = [end, tail]
    return out


def is_unit(entity) -> bool:
    return not isinstance(entity, Unchanged) and (
        isinstance(entity, (Experiment, Run)) or hasattr(entity, "identity"))


def now() -> float:
    return time.time()


def project(rows: Iterable[tuple], projection: Optional[List[int]]) -> List[tuple]:
    if projection is None:
        return list(rows)
    return [tuple(r[i] for i in projection) for r in rows]
