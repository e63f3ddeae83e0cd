"""Re-read the source and compare it with the database, field by field.

For each entity of a fresh walk, its expected rows (``rows.rows_for``, the writer's own mapping)
are compared with the rows the database returns for that entity's key: missing rows, extra rows
and differing fields all count. Then whole-table counts catch rows that belong to nothing in the
source. Memory holds one entity's rows at a time.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from .model import Experiment, Run
from .progress import NULL_PROGRESS, Progress
from .rows import SPECS, TABLE_ORDER, TargetColumns, rows_for
from .walk import Walk

# The column that ties each table's rows to their entity.
OWNER_COLUMN = {
    "experiments": "experiment_id",
    "experiment_tags": "experiment_id",
    "runs": "run_uuid",
    "params": "run_uuid",
    "tags": "run_uuid",
    "metrics": "run_uuid",
    "latest_metrics": "run_uuid",
}
# How a child row is named in a message: the label and which columns identify it.
ROW_LABEL = {
    "experiment_tags": ("tag", ("key",)),
    "params": ("param", ("key",)),
    "tags": ("tag", ("key",)),
    "metrics": ("metric", ("key", "step", "timestamp", "value")),
    "latest_metrics": ("latest metric", ("key",)),
}


class Verifier:
    def __init__(self, conn, columns: TargetColumns, max_messages: int = 1000):
        from sqlalchemy import MetaData, Table, bindparam, select

        self.conn = conn
        self.max_messages = max_messages
        self.mismatches: List[str] = []
        self.mismatch_count = 0
        self.verified: Dict[str, int] = {t: 0 for t in TABLE_ORDER}
        self.expected_total: Dict[str, int] = {t: 0 for t in TABLE_ORDER}
        self._plans = {}
        meta = MetaData()
        for table in TABLE_ORDER:
            if not columns.has_table(table):
                continue
            spec = SPECS[table]
            names, projection, _ = columns.insert_columns(spec)
            names = [c for c in names if c in spec.columns]
            t = Table(table, meta, autoload_with=conn)
            stmt = select(*[t.c[c] for c in names]).where(
                t.c[OWNER_COLUMN[table]] == bindparam("owner"))
            pk_idx = [names.index(c) for c in spec.pk if c in names]
            self._plans[table] = (stmt, projection, pk_idx, names, t)

    # -- per entity --------------------------------------------------------------------------
    def check_entity(self, entity) -> None:
        if isinstance(entity, Run):
            owner, label = entity.run_uuid, f"Run {entity.run_uuid}"
        elif isinstance(entity, Experiment):
            owner, label = entity.experiment_id, f"Experiment {entity.experiment_id}"
        else:  # pragma: no cover
            raise TypeError(type(entity).__name__)
        for table, rows in rows_for(entity).items():
            plan = self._plans.get(table)
            if plan is None:
                continue
            stmt, projection, pk_idx, names, _ = plan
            expected = [_normal(_project(r, projection)) for r in rows]
            actual = [_normal(tuple(r)) for r in self.conn.execute(stmt, {"owner": owner})]
            self.expected_total[table] += len(expected)
            self._compare(table, label, names, pk_idx, expected, actual)

    def _compare(self, table, label, names, pk_idx, expected, actual) -> None:
        if expected == actual or sorted(expected, key=_sort_key) == sorted(actual, key=_sort_key):
            self.verified[table] += len(expected)
            return
        def key(row):
            return tuple(row[i] for i in pk_idx)

        want = {key(r): r for r in expected}
        have = {key(r): r for r in actual}
        good = 0
        for k, row in want.items():
            got = have.get(k)
            if got is None:
                self._fail(f"{label} — {_row_name(table, names, row)}: missing in target")
                continue
            diffs = [i for i in range(len(names)) if not _same(row[i], got[i])]
            if not diffs:
                good += 1
            for i in diffs:
                what = _row_name(table, names, row)
                self._fail(f"{label} — {what + ', ' if what else ''}field '{names[i]}': "
                           f"source={row[i]!r}, target={got[i]!r}")
        for k, row in have.items():
            if k not in want:
                self._fail(f"{label} — {_row_name(table, names, row)}: in target but not in "
                           "source")
        self.verified[table] += good

    def _fail(self, message: str) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < self.max_messages:
            self.mismatches.append("FAILED: " + message)

    # -- whole tables ------------------------------------------------------------------------
    def check_totals(self, experiment_ids, run_ids, source_has_default: bool) -> None:
        from sqlalchemy import func, select

        for table, (_, _, _, _, t) in self._plans.items():
            n = self.conn.execute(select(func.count()).select_from(t)).scalar()
            extra = n - self.expected_total[table]
            if extra <= 0:
                continue
            owner = OWNER_COLUMN[table]
            known = experiment_ids if owner == "experiment_id" else run_ids
            strays = [
                v for (v,) in self.conn.execute(select(t.c[owner]).distinct()) if v not in known
            ]
            if table == "experiments" and not source_has_default and 0 in strays:
                # MLflow's server adds experiment 0 "Default" when it first opens a database.
                strays.remove(0)
                extra -= 1
            if extra <= 0:
                continue
            kind = "experiment" if owner == "experiment_id" else "run"
            shown = ", ".join(str(s) for s in strays[:5])
            self._fail(f"table {table} has {extra} rows that are not in the source"
                       + (f" (for {kind} {shown})" if shown else ""))


def verify_walk(walk: Walk, conn, columns: TargetColumns,
                progress: Progress = NULL_PROGRESS) -> Verifier:
    verifier = Verifier(conn, columns)
    experiment_ids, run_ids = set(), set()
    for entity in walk:
        verifier.check_entity(entity)
        if isinstance(entity, Run):
            run_ids.add(entity.run_uuid)
            progress.advance()
        else:
            experiment_ids.add(entity.experiment_id)
    verifier.check_totals(experiment_ids, run_ids, source_has_default=0 in experiment_ids)
    return verifier


def _project(row: tuple, projection: Optional[List[int]]) -> tuple:
    return row if projection is None else tuple(row[i] for i in projection)


def _normal(row: tuple) -> tuple:
    return tuple(int(v) if isinstance(v, bool) else v for v in row)


def _sort_key(row: tuple) -> Tuple:
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in row)


def _same(a, b) -> bool:
    """Exact: same type and value (a float that came back as text is a difference); NaN = NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _row_name(table: str, names: List[str], row: tuple) -> str:
    if table not in ROW_LABEL:
        return ""
    label, cols = ROW_LABEL[table]
    parts = [repr(row[names.index(c)]) if c == "key" else f"{c}={row[names.index(c)]!r}"
             for c in cols if c in names]
    return f"{label} {' '.join(parts)}"
