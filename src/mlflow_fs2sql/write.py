"""The sink: entity rows, buffered per table and inserted in batches by the target.

Buffers are flushed together, parents first (``rows.table_order()``), so every foreign key already
has its parent row when a child batch goes in.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Dict, List

from .rows import SPECS, Rows, TargetColumns, table_order
from .targets.base import Target

DEFAULT_BATCH_ROWS = 50_000


class Writer:
    def __init__(self, target: Target, columns: TargetColumns,
                 batch_rows: int = DEFAULT_BATCH_ROWS):
        self.target = target
        self.batch_rows = batch_rows
        self.written: Dict[str, int] = {t: 0 for t in table_order()}
        self._buffers: Dict[str, List[tuple]] = {t: [] for t in table_order()}
        self._pending = 0
        self._plans = {}
        for table in table_order():
            if columns.has_table(table):
                self._plans[table] = self._plan(table, columns)

    def _plan(self, table: str, columns: TargetColumns):
        """(column order the target inserts in, row -> insert tuple or None for identity)."""
        spec = SPECS[table]
        names, _, consts = columns.insert_columns(spec)
        order = self.target.insert_order(table, names)
        source = list(spec.columns) + [c for c, _ in consts]
        index = [source.index(c) for c in order]
        if index == list(range(len(spec.columns))) and not consts:
            return order, None, ()
        return order, itemgetter(*index), tuple(v for _, v in consts)

    def add(self, rows: Rows) -> None:
        for table, table_rows in rows.items():
            if not table_rows:
                continue
            plan = self._plans.get(table)
            if plan is None:  # no such table in this schema: counted, refused after the walk
                continue
            _, getter, consts = plan
            buffer = self._buffers[table]
            if getter is None:
                buffer.extend(table_rows)
            else:
                buffer.extend(getter(row + consts) for row in table_rows)
            self._pending += len(table_rows)
        if self._pending >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        for table in table_order():
            buffer = self._buffers[table]
            if buffer:
                self.target.insert_many(table, self._plans[table][0], buffer)
                self.written[table] += len(buffer)
                self._buffers[table] = []
        self._pending = 0
