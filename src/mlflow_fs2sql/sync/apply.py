"""Reading a batch's rows from the database and writing its changes, dialect-neutral.

Statements are SQLAlchemy Core on lightweight table clauses of the columns the target has; only
``insert_ignore`` (and locking) differ by database and live in ``targets/live_*.py``. Reads by
primary key go in chunks of ``_CHUNK`` keys; where the database can, they lock the rows read
(``FOR NO KEY UPDATE`` on PostgreSQL, ``FOR UPDATE`` on MySQL), so that the server cannot
change a row between this sync reading it and writing it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Sequence, Tuple

from ..rows import SPECS, table_order
from .merge import Ops
from .units import TableShape

_CHUNK = 300


class Tables:
    """Table clauses and shapes of the target's tables (as ``TargetColumns`` has them)."""

    def __init__(self, columns):
        from sqlalchemy import column
        from sqlalchemy import table as table_clause

        self.columns = columns
        self.shapes: Dict[str, TableShape] = {}
        self.clauses = {}
        for name in table_order():
            if not columns.has_table(name):
                continue
            spec = SPECS[name]
            names, projection, _ = columns.insert_columns(spec)
            names = [c for c in names if c in spec.columns]
            self.shapes[name] = TableShape(name, names)
            have = set(columns.columns[name])
            self.clauses[name] = table_clause(name, *[column(c) for c in have])
        self._projection = {n: columns.insert_columns(SPECS[n])[1] for n in self.shapes}
        self._consts = {n: columns.insert_columns(SPECS[n])[2] for n in self.shapes}

    def project(self, table: str, rows: Iterable[tuple]) -> List[tuple]:
        p = self._projection.get(table)
        return list(rows) if p is None else [tuple(r[i] for i in p) for r in rows]

    def insert_columns(self, table: str) -> List[str]:
        return self.shapes[table].names + [c for c, _ in self._consts[table]]

    def with_constants(self, table: str, rows: List[tuple]) -> List[tuple]:
        consts = tuple(v for _, v in self._consts[table])
        return [r + consts for r in rows] if consts else rows


def read_rows(conn, tables: Tables, table: str, keys: Sequence[tuple],
              for_update: bool) -> Dict[tuple, tuple]:
    """{pk: row} of the rows with these keys (row in the shape's column order)."""
    from sqlalchemy import select, tuple_

    if not keys:
        return {}
    shape = tables.shapes[table]
    t = tables.clauses[table]
    cols = [t.c[c] for c in shape.names]
    pk_cols = [t.c[shape.names[i]] for i in shape.pk]
    out = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), _CHUNK):
        chunk = unique[i:i + _CHUNK]
        if len(pk_cols) == 1:
            where = pk_cols[0].in_([k[0] for k in chunk])
        else:
            where = tuple_(*pk_cols).in_(chunk)
        stmt = select(*cols).where(where)
        if for_update:
            # PostgreSQL: FOR NO KEY UPDATE (a sync never changes a key). FOR UPDATE would also
            # block the foreign-key checks of the server's inserts below these rows (a tag set
            # in the UI on a run this sync updates waits for the whole sync); MySQL ignores it.
            stmt = stmt.with_for_update(key_share=True)
        for r in conn.execute(stmt):
            row = tuple(r)
            out[shape.key(row)] = row
    return out


def apply(live, tables: Tables, ops: Ops, counts: Dict[str, Dict[str, int]]) -> None:
    """Write ``ops``: deletes children first, then inserts parents first, then updates."""
    conn = live.conn
    order = [t for t in table_order() if t in tables.shapes]
    for table in reversed(order):
        keys = ops.deletes.get(table)
        if keys:
            delete_keys(conn, tables, table, keys)
            _count(counts, table, "deleted", len(keys))
    for table in order:
        rows = ops.inserts.get(table)
        if rows:
            shape = tables.shapes[table]
            pk = [shape.names[i] for i in shape.pk]
            n = live.insert_ignore(table, tables.insert_columns(table),
                                   tables.with_constants(table, rows), pk)
            _count(counts, table, "inserted", n)
    for table in order:
        changes = ops.updates.get(table)
        if changes:
            update_rows(conn, tables, table, changes)
            _count(counts, table, "updated", len(changes))


def update_rows(conn, tables: Tables, table: str,
                changes: List[Tuple[tuple, Dict[str, object]]]) -> None:
    from sqlalchemy import and_, bindparam, update

    shape = tables.shapes[table]
    t = tables.clauses[table]
    pk_names = [shape.names[i] for i in shape.pk]
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for key, values in changes:
        cols = tuple(sorted(values))
        params = {f"k_{c}": v for c, v in zip(pk_names, key)}
        params.update({f"v_{c}": values[c] for c in cols})
        groups[cols].append(params)
    for cols, params in groups.items():
        stmt = update(t).where(and_(*[t.c[c] == bindparam(f"k_{c}") for c in pk_names])) \
            .values({c: bindparam(f"v_{c}") for c in cols})
        conn.execute(stmt, params)


def delete_keys(conn, tables: Tables, table: str, keys: Sequence[tuple]) -> None:
    from sqlalchemy import and_, bindparam, delete

    shape = tables.shapes[table]
    t = tables.clauses[table]
    pk_names = [shape.names[i] for i in shape.pk]
    stmt = delete(t).where(and_(*[t.c[c] == bindparam(f"k_{c}") for c in pk_names]))
    conn.execute(stmt, [{f"k_{c}": v for c, v in zip(pk_names, key)} for key in keys])


def read_back(conn, tables: Tables, ops: Ops, limit: int = 1000) -> List[str]:
    """``sync --verify``: the rows as this sync meant to leave them -- every insert and update
    there with its values, every delete gone -- read back inside the transaction."""
    from .units import field_hash

    problems: List[str] = []
    for table, rows in ops.inserts.items():
        shape = tables.shapes[table]
        wanted = {shape.key(r): r for r in rows}
        have = read_rows(conn, tables, table, list(wanted), False)
        for key, row in wanted.items():
            got = have.get(key)
            if got is None:
                problems.append(f"{table} row {key}: inserted, but not in the database")
            elif table != "latest_metrics" and shape.hashes(got) != shape.hashes(row):
                problems.append(f"{table} row {key}: holds {got!r}, the sync wrote {row!r}")
    for table, changes in ops.updates.items():
        shape = tables.shapes[table]
        have = read_rows(conn, tables, table, [k for k, _ in changes], False)
        for key, values in changes:
            got = have.get(key)
            for column, value in values.items():
                if got is None or field_hash(got[shape.names.index(column)]) != field_hash(value):
                    problems.append(f"{table} row {key} field '{column}': the sync wrote "
                                    f"{value!r}, the database holds "
                                    f"{None if got is None else got[shape.names.index(column)]!r}")
    for table, keys in ops.deletes.items():
        for key in read_rows(conn, tables, table, keys, False):
            problems.append(f"{table} row {key}: deleted, but still in the database")
    return problems[:limit]


# -- whole entities, with whatever the server hung below them ------------------------------------
class Cascade:
    """Deletes rows with every row that references them (foreign keys, read from the
    database), children first: what MLflow itself deletes when it deletes the entity."""

    def __init__(self, conn):
        from sqlalchemy import inspect

        insp = inspect(conn)
        self._pk = {t: list(insp.get_pk_constraint(t)["constrained_columns"])
                    for t in insp.get_table_names()}
        self.children: Dict[str, List[Tuple[str, List[str], List[str]]]] = defaultdict(list)
        for name in insp.get_table_names():
            if name.startswith("fs2sql_"):
                continue
            for fk in insp.get_foreign_keys(name):
                self.children[fk["referred_table"]].append(
                    (name, fk["constrained_columns"], fk["referred_columns"]))

    def delete(self, conn, table: str, columns: Sequence[str], keys: Sequence[tuple],
               counts: Dict[str, Dict[str, int]], depth: int = 0) -> None:
        from sqlalchemy import column, delete, select, tuple_
        from sqlalchemy import table as table_clause

        if not keys or depth > 8:
            return
        for child, child_cols, parent_cols in self.children.get(table, ()):
            # The parent's values of the referenced columns, then the child rows pointing there.
            t = table_clause(table, *[column(c) for c in set(columns) | set(parent_cols)])
            values = _select_in(conn, select(*[t.c[c] for c in parent_cols]), t, columns, keys)
            if not values:
                continue
            ct = table_clause(child, *[column(c) for c in child_cols])
            pk = self._pk.get(child)
            if pk and child in self.children:
                ct2 = table_clause(child, *[column(c) for c in set(child_cols) | set(pk)])
                grand = _select_in(conn, select(*[ct2.c[c] for c in pk]), ct2, child_cols,
                                   values)
                self.delete(conn, child, pk, grand, counts, depth + 1)
            for i in range(0, len(values), _CHUNK):
                chunk = values[i:i + _CHUNK]
                where = ct.c[child_cols[0]].in_([v[0] for v in chunk]) if len(child_cols) == 1 \
                    else tuple_(*[ct.c[c] for c in child_cols]).in_(chunk)
                n = conn.execute(delete(ct).where(where)).rowcount
                _count(counts, child, "deleted", max(n, 0))
        t = table_clause(table, *[column(c) for c in columns])
        for i in range(0, len(keys), _CHUNK):
            chunk = list(keys[i:i + _CHUNK])
            where = t.c[columns[0]].in_([k[0] for k in chunk]) if len(columns) == 1 \
                else tuple_(*[t.c[c] for c in columns]).in_(chunk)
            n = conn.execute(delete(t).where(where)).rowcount
            _count(counts, table, "deleted", max(n, 0))


def _select_in(conn, stmt, t, columns, keys) -> List[tuple]:
    from sqlalchemy import tuple_

    out = []
    for i in range(0, len(keys), _CHUNK):
        chunk = list(keys[i:i + _CHUNK])
        where = t.c[columns[0]].in_([k[0] for k in chunk]) if len(columns) == 1 \
            else tuple_(*[t.c[c] for c in columns]).in_(chunk)
        out.extend(tuple(r) for r in conn.execute(stmt.where(where)))
    return list(dict.fromkeys(out))


def _count(counts, table: str, what: str, n: int) -> None:
    per = counts.setdefault(table, {"inserted": 0, "updated": 0, "deleted": 0})
    per[what] += n
