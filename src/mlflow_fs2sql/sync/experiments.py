"""Which database experiment a source's experiment becomes, the first time a sync meets it.

In this order (the answer is kept in ``fs2sql_experiments`` and never changes afterwards):

1. *Adopted*: the database already holds this very experiment -- the same ID, or the ID recorded
   in its ``fs2sql.source_experiment_id`` tag by a renumbering migration -- with the same name or
   the same creation time, and no other source owns it (``fs2sql migrate`` or another tool made
   the database from this store). The source owns it.
2. *Joined*: a database experiment has the same name and the same lifecycle (both active or
   both deleted): experiments of one name are one experiment, Default (0) included. Its row
   stays as its owner (the source or server that made it) keeps it; this source adds its runs,
   traces, models, datasets and tags.
3. A database experiment has the same name but the other lifecycle (MLflow's names are unique
   even among deleted experiments): refused, or with ``--rename-conflicts`` the deleted one is
   renamed ``NAME (deleted, from <id>)`` (in the database if it is the database's, in this
   source's rows if it is this source's) and the active one goes ahead.
4. *Kept*: the source's ID, if no database experiment has it and it fits the columns.
5. *Renumbered*: a new ID from the database (``next_experiment_id``), when the source's ID is
   taken (MLflow 1.x stores all count 0, 1, 2, ...) or does not fit 32-bit columns (refused
   unless the policy is ``renumber``, as for ``migrate``). The source's ID is kept in the
   experiment tags ``fs2sql.source_experiment_id`` and ``fs2sql.source_store``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Set

from ..errors import InvalidSource, SchemaError
from ..ids import SOURCE_ID_TAG, _key_column
from ..model import Experiment
from . import state

SOURCE_STORE_TAG = "fs2sql.source_store"
RENAMED = "{name} (deleted, from {id})"


@dataclass
class Assigned:
    experiment_id: int
    owner: bool
    how: str  # adopted | joined | kept | renumbered
    name: Optional[str] = None  # this source's experiment goes in under another name
    renamed_in_db: Optional[str] = None  # "old -> new" of a database experiment renamed


def _row(conn, where: str, params: dict):
    return conn.exec_driver_sql(
        "SELECT experiment_id, name, lifecycle_stage, creation_time FROM experiments WHERE "
        + where, params).fetchall()


def assign(conn, live, source_id: str, exp: Experiment, *, policy: str,
           rename_conflicts: bool, taken: Set[int]) -> Assigned:
    x = exp.experiment_id
    mark = "%s" if conn.dialect.name != "sqlite" else "?"
    candidates = list(_row(conn, f"experiment_id = {mark}", (x,)))
    tagged = conn.exec_driver_sql(
        f"SELECT experiment_id FROM experiment_tags WHERE {_key_column(conn)} = {mark} "
        f"AND value = {mark}", (SOURCE_ID_TAG, str(x))).fetchall()
    for (eid,) in tagged:
        candidates += _row(conn, f"experiment_id = {mark}", (eid,))
    for eid, name, _stage, created in candidates:
        same = name == exp.name or (exp.creation_time is not None and created == exp.creation_time)
        if same and eid not in taken and not state.owners_of(conn, eid):
            return Assigned(eid, True, "adopted")
    name = exp.name
    renamed_in_db = None
    found = _row(conn, f"name = {mark}", (name,))
    if found:
        eid, _, stage, _ = found[0]
        if stage == exp.lifecycle_stage:
            return Assigned(eid, False, "joined")
        if not rename_conflicts:
            raise InvalidSource(
                f"has the name {name!r}, which the database's {stage} experiment {eid} has; "
                "MLflow requires unique experiment names, also among deleted experiments.",
                path=exp.path, kind="experiment", entity_id=str(x),
                hint="Run again with --rename-conflicts (the deleted one becomes "
                f"'{RENAMED.format(name=name, id='<id>')}'), or with --skip-invalid to leave "
                "this experiment out.")
        if exp.lifecycle_stage == "deleted":
            name = RENAMED.format(name=name, id=x)
            if _row(conn, f"name = {mark}", (name,)):
                raise InvalidSource(f"cannot be renamed to {name!r}: that name is taken too.",
                                    path=exp.path, kind="experiment", entity_id=str(x))
        else:
            new = RENAMED.format(name=name, id=eid)
            conn.exec_driver_sql(f"UPDATE experiments SET name = {mark} WHERE experiment_id = "
                                 f"{mark}", (new, eid))
            renamed_in_db = f"{name!r} -> {new!r}"
    limit = live.experiment_id_limit
    fits = limit is None or x <= limit
    if fits and x not in taken and not _row(conn, f"experiment_id = {mark}", (x,)):
        live.reserve_experiment_ids(x)
        return Assigned(x, True, "kept", None if name == exp.name else name, renamed_in_db)
    if not fits and policy != "renumber":
        raise SchemaError(
            f"experiment {x} ({exp.name!r}) has an ID that does not fit the 32-bit "
            "experiment_id columns of MLflow's schema on this server. Nothing was written.",
            hint="Run the sync with --experiment-ids renumber (new small IDs; the source's ID "
            f"stays in the experiment tag {SOURCE_ID_TAG}), or sync into SQLite.")
    new_id = live.next_experiment_id()
    while new_id in taken:
        new_id += 1
    return Assigned(new_id, True, "renumbered", None if name == exp.name else name,
                    renamed_in_db)


class SyncTransform:
    """Rows of one source as the database holds them: experiment IDs mapped (``ids``'
    renumbering), joined experiments' rows left to their owner, renamed ones renamed."""

    def __init__(self, mapping: Dict[int, int], owners: Set[int], names: Dict[int, str],
                 source_id: str):
        from ..ids import Renumbering

        self.renumbering = Renumbering({k: v for k, v in mapping.items() if k != v})
        self.owners = owners  # source experiment IDs this source owns
        self.names = names  # source experiment ID -> name in the database
        self.source_id = source_id

    def owner(self, column: str, value):
        return self.renumbering.owner(column, value)

    def __call__(self, entity, rows):
        rows = self.renumbering(entity, rows)
        if not isinstance(entity, Experiment):
            return rows
        x = entity.experiment_id
        if x not in self.owners:
            rows = dict(rows)
            rows["experiments"] = []
            rows["experiment_tags"] = [t for t in rows.get("experiment_tags", ())
                                       if t[0] != SOURCE_ID_TAG]
            return rows
        if x in self.names:
            rows = dict(rows)
            rows["experiments"] = [(r[0], self.names[x]) + tuple(r[2:])
                                   for r in rows["experiments"]]
        if x in self.renumbering.mapping:
            rows = dict(rows)
            new = self.renumbering.mapping[x]
            rows["experiment_tags"] = list(rows.get("experiment_tags", ())) + [
                (SOURCE_STORE_TAG, self.source_id, new)]
        return rows
