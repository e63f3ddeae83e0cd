"""Entities to table rows: the one mapping that both the writer and ``verify`` use.

Each table has a spec: its columns in the order rows are built, its primary key, and constant
columns (``workspace``). Only columns the target schema has are written, so an older MLflow
revision (no ``deleted_time``, no ``workspace``) takes the same rows. Values are checked against
the target's column sizes before anything is written: SQLite would store an over-long value
silently and PostgreSQL/MySQL would reject it half-way, so fs2sql refuses it up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import InvalidSource
from .model import Experiment, Run


@dataclass(frozen=True)
class TableSpec:
    """One target table as fs2sql fills it.

    ``owner``: the column(s) tying a row to its entity; ``verify`` reads a run's rows of the large
    per-run tables (``per_entity``) with it, and compares every other table whole, keyed by ``pk``.
    """

    name: str
    label: str  # the report's "kind" row
    columns: Tuple[str, ...]
    pk: Tuple[str, ...]
    constants: Tuple[Tuple[str, object], ...] = ()
    owner: Tuple[str, ...] = ()
    per_entity: bool = False
    # Column values an older schema without that column loses nothing by (e.g. step 0).
    defaults: Tuple[Tuple[str, object], ...] = ()
    # Columns computed from other data (copies, aggregates): a schema without them loses nothing.
    derived: Tuple[str, ...] = ()


_WORKSPACE = (("workspace", "default"),)
_METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")

# Every table fs2sql writes, parents before children (foreign keys hold at every flush).
SPECS: Dict[str, TableSpec] = {}
# Entity type -> function returning its rows per table.
_BUILDERS: Dict[type, Callable[[object], "Rows"]] = {}


def register_tables(*specs: TableSpec, after: Optional[str] = None) -> None:
    """Add tables of an entity kind (``kinds/*.py``); ``after`` keeps parent-first order."""
    global SPECS
    items = list(SPECS.items())
    at = len(items) if after is None else [k for k, _ in items].index(after) + 1
    items[at:at] = [(sp.name, sp) for sp in specs]
    SPECS.clear()
    SPECS.update(items)


def register_builder(entity_type: type, builder: Callable[[object], "Rows"]) -> None:
    _BUILDERS[entity_type] = builder


# The schema the current migration/verify writes to: builders whose rows depend on the revision
# (e.g. trace columns added in 3.17) ask ``target_has``. Set by ``TargetColumns.activate``.
_ACTIVE: Optional["TargetColumns"] = None


def target_has(table: str, column: Optional[str] = None) -> bool:
    """Does the active target schema have this table (and column)? True when none is active."""
    if _ACTIVE is None:
        return True
    cols = _ACTIVE.columns.get(table)
    return cols is not None and (column is None or column in cols)


def table_order() -> Tuple[str, ...]:
    return tuple(SPECS)


Rows = Dict[str, Sequence[tuple]]


# An optional rewrite of every entity's rows: fn(entity, rows) -> rows. ``ids.applied`` installs
# one for ``--experiment-ids renumber`` (new experiment IDs); the writer, the size check and
# ``verify`` all see the rewritten rows, and ``owner_value`` the rewritten owner keys. Several
# transforms chain in the order they were added (``add_transform``): renumbering, then
# artifact URIs (``artifacts.UriRewriter``), which reads the new IDs from the rows.
ROW_TRANSFORM: Optional[Callable[[object, "Rows"], "Rows"]] = None


class TransformChain:
    """Transforms applied one after the other; ``owner`` maps a key through each of them."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, entity, rows: "Rows") -> "Rows":
        for transform in self.transforms:
            rows = transform(entity, rows)
        return rows

    def owner(self, column: str, value):
        for transform in self.transforms:
            value = transform.owner(column, value)
        return value


def add_transform(transform) -> Callable[[], None]:
    """Apply ``transform`` (``fn(entity, rows) -> rows`` with an ``owner(column, value)``
    method) after the ones installed already; returns the undo (call undos in reverse order)."""
    global ROW_TRANSFORM, _LAST
    previous = ROW_TRANSFORM
    ROW_TRANSFORM = transform if previous is None else TransformChain(previous, transform)
    _LAST = (None, {})

    def restore() -> None:
        global ROW_TRANSFORM, _LAST
        ROW_TRANSFORM = previous
        _LAST = (None, {})

    return restore


def owner_value(entity, column: str):
    """The value of an owner column for ``entity`` as the target holds it."""
    value = getattr(entity, column)
    return value if ROW_TRANSFORM is None else ROW_TRANSFORM.owner(column, value)


def rows_for(entity) -> Rows:
    """Every row an entity becomes, per table, in ``TableSpec.columns`` order (with the rows of
    entities attached to it, such as a run's inputs)."""
    global _LAST
    if _LAST[0] is entity:  # the walk's check just built them; the writer asks again
        return _LAST[1]
    try:
        builder = _BUILDERS[type(entity)]
    except KeyError:
        raise TypeError(f"no rows for {type(entity).__name__}") from None
    rows = builder(entity)
    for sub in getattr(entity, "attached", ()):
        for table, sub_rows in rows_for(sub).items():
            rows[table] = list(rows.get(table, ())) + list(sub_rows)
    if ROW_TRANSFORM is not None:
        rows = ROW_TRANSFORM(entity, rows)
    _LAST = (entity, rows)
    return rows


_LAST: Tuple[object, Rows] = (None, {})


def _experiment_rows(e: Experiment) -> Rows:
    return {
        "experiments": [(e.experiment_id, e.name, e.artifact_location, e.lifecycle_stage,
                         e.creation_time, e.last_update_time)],
        "experiment_tags": [(k, v, e.experiment_id) for k, v in e.tags],
    }


def _run_rows(r: Run) -> Rows:
    rid = r.run_uuid
    return {
        "runs": [(rid, r.name, r.source_type, r.source_name, r.entry_point_name, r.user_id,
                  r.status, r.start_time, r.end_time, r.deleted_time, r.source_version,
                  r.lifecycle_stage, r.artifact_uri, r.experiment_id)],
        "params": [(k, v, rid) for k, v in r.params],
        "tags": [(k, v, rid) for k, v in r.tags],
        "metrics": [p + (rid,) for p in r.metrics],
        "latest_metrics": [p + (rid,) for p in r.latest_metrics],
    }


register_tables(
    TableSpec("experiments", "Experiments",
              ("experiment_id", "name", "artifact_location", "lifecycle_stage", "creation_time",
               "last_update_time"),
              ("experiment_id",), _WORKSPACE, owner=("experiment_id",), per_entity=True),
    TableSpec("experiment_tags", "Experiment tags", ("key", "value", "experiment_id"),
              ("experiment_id", "key"), owner=("experiment_id",), per_entity=True),
    TableSpec("runs", "Runs",
              ("run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id",
               "status", "start_time", "end_time", "deleted_time", "source_version",
               "lifecycle_stage", "artifact_uri", "experiment_id"),
              ("run_uuid",), owner=("run_uuid",), per_entity=True),
    TableSpec("params", "Params", ("key", "value", "run_uuid"), ("run_uuid", "key"),
              owner=("run_uuid",), per_entity=True),
    TableSpec("tags", "Run tags", ("key", "value", "run_uuid"), ("run_uuid", "key"),
              owner=("run_uuid",), per_entity=True),
    TableSpec("metrics", "Metric points", _METRIC_COLUMNS,
              ("run_uuid", "key", "timestamp", "step", "value", "is_nan"),
              owner=("run_uuid",), per_entity=True),
    TableSpec("latest_metrics", "Latest metrics", _METRIC_COLUMNS, ("run_uuid", "key"),
              owner=("run_uuid",), per_entity=True),
)
register_builder(Experiment, _experiment_rows)
register_builder(Run, _run_rows)


class TargetColumns:
    """What the target schema has: column names and string sizes per table."""

    def __init__(self, columns: Dict[str, Dict[str, Optional[int]]]):
        # table -> {column: max length or None}
        self.columns = columns
        # What the source holds that this schema (an older MLflow's) has no place for:
        # "table" or "table.column" -> number of rows/values. ``migrate`` refuses if non-empty.
        self.unsupported: Dict[str, int] = {}

    def activate(self) -> "TargetColumns":
        """Make this the schema ``target_has`` answers for (see there)."""
        global _ACTIVE
        _ACTIVE = self
        return self

    def has_table(self, table: str) -> bool:
        return table in self.columns

    def insert_columns(self, spec: TableSpec) -> Tuple[List[str], Optional[List[int]], List[tuple]]:
        """(columns to insert, indices to project rows with or None, constant (name, value))."""
        have = self.columns[spec.name]
        keep = [i for i, c in enumerate(spec.columns) if c in have]
        names = [spec.columns[i] for i in keep]
        consts = [(c, v) for c, v in spec.constants if c in have]
        projection = None if len(keep) == len(spec.columns) else keep
        return names + [c for c, _ in consts], projection, consts

    def check(self, entity) -> None:
        """Raise ``InvalidSource`` if a value does not fit its column (never cut silently);
        count in ``unsupported`` what the schema has no table or column for."""
        kind, entity_id = entity_identity(entity)
        for table, rows in rows_for(entity).items():
            if table == "metrics" or not rows:
                continue  # metrics: same strings as latest_metrics, checked there once per key
            if table not in self.columns:
                self.unsupported[table] = self.unsupported.get(table, 0) + len(rows)
                continue
            spec = SPECS[table]
            have = self.columns[table]
            defaults = dict(spec.defaults)
            for i, column in enumerate(spec.columns):
                if column not in have and column not in spec.derived:
                    default = defaults.get(column)
                    n = sum(1 for row in rows if row[i] is not None and row[i] != default)
                    if n:
                        name = f"{table}.{column}"
                        self.unsupported[name] = self.unsupported.get(name, 0) + n
            self._check_rows(have, spec, rows, entity, kind, entity_id)

    @staticmethod
    def _check_rows(sizes, spec, rows: Iterable[tuple], entity, kind, entity_id) -> None:
        limited = [(i, c, sizes[c]) for i, c in enumerate(spec.columns) if sizes.get(c)]
        for row in rows:
            for i, column, size in limited:
                value = row[i]
                if isinstance(value, str) and len(value) > size:
                    what = _describe(spec.name, row)
                    raise InvalidSource(
                        f"{what}: column {spec.name}.{column} holds at most {size} characters "
                        f"but the value has {len(value)}; fs2sql never cuts values.",
                        path=entity.path, kind=kind, entity_id=entity_id,
                        hint="Shorten the value in the file (MLflow would truncate it to "
                        f"{size}), or run again with --skip-invalid to leave this {kind} out.",
                    )


def _describe(table: str, row: tuple) -> str:
    if table in ("params", "tags", "experiment_tags", "latest_metrics"):
        return f"{table.rstrip('s').replace('_', ' ')} '{row[0][:80]}'"
    return f"{table} row"


def entity_identity(entity) -> Tuple[str, str]:
    """(kind, id) of an entity, for messages and the skip list."""
    if isinstance(entity, Run):
        return "run", entity.run_uuid
    if isinstance(entity, Experiment):
        return "experiment", str(entity.experiment_id)
    return getattr(entity, "KIND", type(entity).__name__.lower()), str(entity.identity)
