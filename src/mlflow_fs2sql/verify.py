"""Re-read the source and compare it with the database, field by field.

Expected rows come from a fresh walk through ``rows.rows_for`` (the writer's own mapping). The big
per-run tables are compared entity by entity, reading that entity's rows by its owner key, so
memory holds one run at a time; the other tables are compared whole, keyed by primary key. Missing
rows, extra rows and differing fields all count; whole-table counts catch rows that belong to
nothing in the source.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from . import kinds  # noqa: F401  (registers every entity kind's tables)
from .progress import NULL_PROGRESS, Progress
from .rows import SPECS, TargetColumns, entity_identity, owner_value, rows_for, table_order
from .walk import Walk

# How a child row is named in a message: the label and which columns identify it.
ROW_LABEL = {
    "experiment_tags": ("tag", ("key",)),
    "params": ("param", ("key",)),
    "tags": ("tag", ("key",)),
    "metrics": ("metric", ("key", "step", "timestamp", "value")),
    "latest_metrics": ("latest metric", ("key",)),
    "trace_tags": ("tag", ("key",)),
    "trace_request_metadata": ("metadata", ("key",)),
    "assessments": ("assessment", ("assessment_id",)),
}
# MLflow's server adds experiment 0 "Default" when it first opens a database without it.
_SERVER_DEFAULT = ("experiments", (0,))


# Entities whose rows are read back together: one query per table for this many (``owner IN
# (...)``) instead of one per entity and table -- 30k runs took 210k queries before -- or fewer,
# once they hold BATCH_ROWS rows (long runs: memory stays flat).
BATCH_ENTITIES = 200
BATCH_ROWS = 20_000


class Verifier:
    def __init__(self, conn, columns: TargetColumns, max_messages: int = 1000,
                 batch: Optional[int] = None):
        from sqlalchemy import and_, bindparam, column, select
        from sqlalchemy import table as table_clause

        self.conn = conn
        self.max_messages = max_messages
        self.batch = max(1, batch or BATCH_ENTITIES)
        # (label, rows) of entities whose per-entity rows are not compared yet, in walk order
        self._pending: List[Tuple[str, object, dict]] = []
        self._pending_rows = 0
        self.batch_rows = BATCH_ROWS
        self.mismatches: List[str] = []
        self.mismatch_count = 0
        self.verified: Dict[str, int] = {t: 0 for t in table_order()}
        self.expected_total: Dict[str, int] = {t: 0 for t in table_order()}
        self._accounted: Dict[str, int] = {t: 0 for t in table_order()}  # extra - missing seen
        self._whole: Dict[str, Dict[tuple, tuple]] = {}
        # owner values seen, per owner column (shared by the tables owned by it: flat memory)
        self._owners: Dict[str, set] = {}
        self._plans = {}
        # table -> (its select, its owner column, that column's place in the rows), read for
        # many owners at once
        self._batched = {}
        self._heads: Dict[str, str] = {}  # table -> that select's SQL up to the owner test
        # PostgreSQL: ``owner = ANY(array)``, one statement text for every batch (psycopg
        # prepares it once; ``IN`` with 200 values is a new text to convert and plan each time)
        self._any = conn.dialect.name == "postgresql"
        for table in table_order():
            if not columns.has_table(table):
                continue
            spec = SPECS[table]
            names, projection, _ = columns.insert_columns(spec)
            names = [c for c in names if c in spec.columns]
            t = table_clause(table, *[column(c) for c in set(names) | set(spec.owner)])
            cols = [t.c[c] for c in names]
            if spec.per_entity:
                stmt = select(*cols).where(
                    and_(*[t.c[o] == bindparam(o) for o in spec.owner]))
                if len(spec.owner) == 1:
                    owner = t.c[spec.owner[0]]
                    # every owner is one of its table's columns (rows.SPECS): the rows are
                    # grouped by it as fetched, with no new tuple per row
                    self._batched[table] = (select(*cols), owner, names.index(spec.owner[0]))
            else:
                stmt = select(*cols)
                self._whole[table] = {}
            pk_idx = [names.index(c) for c in spec.pk if c in names]
            self._plans[table] = (stmt, projection, pk_idx, names, t)

    def _key(self, table, row):
        return tuple(row[i] for i in self._plans[table][2])

    # -- per entity --------------------------------------------------------------------------
    def check_entity(self, entity) -> None:
        """Compare ``entity`` with the database (now or with the next batch; ``finish`` and
        ``flush`` compare what is left). Messages come in walk order either way."""
        kind, entity_id = entity_identity(entity)
        rows = dict(rows_for(entity))
        owners = {o: owner_value(entity, o) for t in rows if t in self._plans
                  for o in SPECS[t].owner if SPECS[t].per_entity}
        self._pending.append((f"{kind.capitalize()} {entity_id}", owners, rows))
        self._pending_rows += sum(len(r) for r in rows.values())
        if len(self._pending) >= self.batch or self._pending_rows >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        """Read back the rows of the pending entities (one query per table) and compare."""
        pending, self._pending, self._pending_rows = self._pending, [], 0
        actual = self._read_back(pending)
        for label, owners, rows in pending:
            for table, table_rows in rows.items():
                self._check_table(table, label, owners, table_rows, actual)

    def _batched_query(self, table: str, keys: list) -> str:
        """The SQL that reads ``table``'s rows of the owners ``keys``, in the driver's own
        parameter style: it runs on the driver's cursor, whose rows are plain tuples (through
        SQLAlchemy's result, making and unpacking its row objects took as long as the query)."""
        dialect = self.conn.dialect
        head = self._heads.get(table)
        if head is None:
            stmt, owner, _ = self._batched[table]
            head = f"{stmt.compile(dialect=dialect)} WHERE {owner.compile(dialect=dialect)}"
            self._heads[table] = head
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        if self._any:
            # typed, so an integer column meets an integer array (its index serves the lookup)
            kind = "BIGINT[]" if all(isinstance(k, int) for k in keys) else "TEXT[]"
            return f"{head} = ANY(CAST({mark} AS {kind}))"
        return f"{head} IN ({', '.join([mark] * len(keys))})"

    def _read_back(self, pending) -> Dict[str, Dict[object, list]]:
        """table -> owner value -> rows, for the batched tables the pending entities have."""
        wanted: Dict[str, dict] = {}
        for _, owners, rows in pending:
            for table in rows:
                if table in self._batched:
                    owner = owners[SPECS[table].owner[0]]
                    wanted.setdefault(table, {})[owner] = None
        found: Dict[str, Dict[object, list]] = {}
        for table, keys in wanted.items():
            grouped: Dict[object, list] = {k: [] for k in keys}
            keys = list(keys)
            cursor = self.conn.connection.cursor()
            try:
                cursor.execute(self._batched_query(table, keys),
                               (keys,) if self._any else keys)
                fetched = cursor.fetchall()
            finally:
                cursor.close()
            at = self._batched[table][2]
            bucket_of = grouped.get
            for r in fetched:
                bucket = bucket_of(r[at])
                if bucket is not None:
                    bucket.append(r)
            found[table] = grouped
        return found

    def _check_table(self, table, label, owners, rows, actual) -> None:
        plan = self._plans.get(table)
        if plan is None:
            return
        stmt, projection, pk_idx, names, _ = plan
        expected = rows if projection is None else [_project(r, projection) for r in rows]
        self.expected_total[table] += len(expected)
        spec = SPECS[table]
        if not spec.per_entity:
            bucket = self._whole[table]
            for row in expected:
                row = _normal(row)
                bucket[self._key(table, row)] = row
            return
        # Rows are read by the entity's own key, so rows the source lacks show up too.
        owner = {o: owners[o] for o in spec.owner}
        for o, value in owner.items():
            self._owners.setdefault(o, set()).add(value)
        if table in actual:
            got = actual[table][owner[spec.owner[0]]]
        else:
            got = [tuple(r) for r in self.conn.execute(stmt, owner)]
        self._compare(table, label, names, expected, got)

    def _compare(self, table, label, names, expected, actual) -> None:
        if len(expected) == len(actual) and _same_rows(expected, actual):
            self.verified[table] += len(expected)
            return
        # The slow path, only where something differs: exact types, field by field.
        expected = [_normal(r) for r in expected]
        actual = sorted((_normal(r) for r in actual), key=_sort_key)  # messages in one order
        want = {self._key(table, r): r for r in expected}
        have = {self._key(table, r): r for r in actual}
        self._diff(table, lambda row: (label, _row_name(table, names, row)), names, want, have)

    def _diff(self, table, describe, names, want, have) -> None:
        good = 0
        for k, row in want.items():
            got = have.get(k)
            head, sub = describe(row)
            if got is None:
                self._accounted[table] -= 1
                self._fail(f"{head} — {sub or 'row'}: missing in target")
                continue
            diffs = [i for i in range(len(names)) if not _same(row[i], got[i])]
            if not diffs:
                good += 1
            for i in diffs:
                self._fail(f"{head} — {sub + ', ' if sub else ''}field '{names[i]}': "
                           f"source={row[i]!r}, target={got[i]!r}")
        for k, row in have.items():
            if k not in want:
                self._accounted[table] += 1
                head, sub = describe(row)
                self._fail(f"{head} — {sub or 'row'}: in target but not in source")
        self.verified[table] += good

    def _fail(self, message: str) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < self.max_messages:
            self.mismatches.append("FAILED: " + message)

    # -- whole tables ------------------------------------------------------------------------
    def finish(self, source_has_default: bool) -> None:
        from sqlalchemy import func, select

        self.flush()
        for table, (stmt, _, _pk, names, t) in self._plans.items():
            spec = SPECS[table]
            if not spec.per_entity:
                have = {}
                for r in self.conn.execute(stmt):
                    row = _normal(tuple(r))
                    have[self._key(table, row)] = row
                label = spec.label.rstrip("s")
                self._diff(table, lambda row, _l=label, _t=table: (f"{_l} {self._key(_t, row)}",
                                                                    ""),
                           names, self._whole[table], have)
                continue
            n = self.conn.execute(select(func.count()).select_from(t)).scalar()
            extra = n - self.expected_total[table] - self._accounted[table]
            if extra <= 0:
                continue
            owner_cols = [t.c[o] for o in spec.owner]
            known = [self._owners.get(o, set()) for o in spec.owner]
            strays = [tuple(r) for r in self.conn.execute(select(*owner_cols).distinct())
                      if any(v not in k for v, k in zip(r, known))]
            if (table, (0,)) == _SERVER_DEFAULT and not source_has_default and (0,) in strays:
                strays.remove((0,))
                extra -= 1
            if extra > 0:
                shown = ", ".join(str(s[0] if len(s) == 1 else s) for s in strays[:5])
                self._fail(f"table {table} has {extra} "
                           f"{'row that is' if extra == 1 else 'rows that are'} not in the source"
                           + (f" (for {'/'.join(spec.owner)} {shown})" if shown else ""))


def verify_walk(walk: Walk, conn, columns: TargetColumns,
                progress: Progress = NULL_PROGRESS, observe=None) -> Verifier:
    """``observe(entity)``: also called for every entity (e.g. to plan the artifact check)."""
    from .model import Experiment, Run

    verifier = Verifier(conn, columns)
    source_has_default = False
    for entity in walk:
        verifier.check_entity(entity)
        if observe is not None:
            observe(entity)
        if isinstance(entity, Run):
            progress.advance()
        elif isinstance(entity, Experiment) and entity.experiment_id == 0:
            source_has_default = True
    verifier.finish(source_has_default)
    return verifier


def _same_rows(expected: list, actual: list) -> bool:
    """The same rows in any order? Fast: C-level sorting of plain tuples (True == 1, as SQLite
    returns booleans); rows with None beside values fall back to a typed sort key."""
    try:
        return sorted(expected) == sorted(actual)
    except TypeError:
        return sorted(map(_normal, expected), key=_sort_key) == \
            sorted(map(_normal, actual), key=_sort_key)


def _project(row: tuple, projection: Optional[List[int]]) -> tuple:
    return row if projection is None else tuple(row[i] for i in projection)


def _normal(row: tuple) -> tuple:
    return tuple(int(v) if isinstance(v, bool) else v for v in row)


def _sort_key(row: tuple) -> Tuple:
    return tuple((v is None, type(v).__name__, v if v is not None else 0) for v in row)


def _same(a, b) -> bool:
    """Exact: same type and value (a number that came back as text is a difference); NaN = NaN."""
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
