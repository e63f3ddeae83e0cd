"""Experiment IDs against 32-bit columns: ``--experiment-ids keep|renumber|widen``.

FileStore IDs made since MLflow 2.0 are random 18-digit numbers; MLflow's schema declares every
``experiment_id`` column ``Integer``, which is 32-bit on PostgreSQL and MySQL (SQLite stores 64
bits). Before anything is written, fs2sql reads every experiment's ``meta.yaml`` once and plans:

* ``keep`` (default): the exact IDs. Refused up front on a server when an ID does not fit,
  listing those experiments and the two other choices.
* ``renumber``: experiments whose ID does not fit get new IDs, in creation order (creation time,
  then the old ID), starting after the largest ID that is kept -- so never colliding with one.
  Every reference follows: each table's ``experiment_id`` column (runs, datasets, traces,
  assessments, logged models and their params/tags/metrics) and the prompt tag
  ``_mlflow_experiment_ids``. Run, trace and model IDs and artifact URIs do not change. The old
  ID stays in the database as the experiment tag ``fs2sql.source_experiment_id``; ``verify``
  reads the mapping back from it and compares each source experiment with its renumbered row.
* ``widen`` (PostgreSQL only): the exact IDs in BIGINT columns (see ``targets/postgresql.py``).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

from . import rows as _rows
from .errors import SchemaError, TargetError

POLICIES = ("keep", "renumber", "widen")
SOURCE_ID_TAG = "fs2sql.source_experiment_id"
PROMPT_EXPERIMENTS_TAG = "_mlflow_experiment_ids"
INT32_MAX = 2**31 - 1
_NUMERIC = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class SourceExperiment:
    experiment_id: int
    name: str
    creation_time: Optional[int]
    path: str


@dataclass
class IdPlan:
    policy: str
    mapping: Dict[int, int] = field(default_factory=dict)  # old ID -> new ID (renumbered only)
    names: Dict[int, str] = field(default_factory=dict)  # old ID -> experiment name

    def describe(self) -> List[str]:
        return [f"{old} → {new} ({self.names.get(old, '?')!r})"
                for old, new in sorted(self.mapping.items(), key=lambda kv: kv[1])]


def scan_experiments(root: str) -> List[SourceExperiment]:
    """Every experiment folder with a numeric name, with the name and creation time from its
    meta.yaml (unreadable ones are left to the walk, which reports them properly)."""
    import yaml

    found = []
    for base in (root, os.path.join(root, ".trash")):
        if not os.path.isdir(base):
            continue
        for entry in os.scandir(base):
            if not entry.is_dir() or not _NUMERIC.match(entry.name):
                continue
            name, created = "", None
            try:
                with open(os.path.join(entry.path, "meta.yaml"), "rb") as f:
                    meta = yaml.safe_load(f) or {}
                if isinstance(meta, dict):
                    name = str(meta.get("name") or "")
                    ct = meta.get("creation_time")
                    created = ct if isinstance(ct, int) and not isinstance(ct, bool) else None
            except (OSError, yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError,
                    RecursionError):  # e.g. an impossible date: the walk reports it
                pass
            found.append(SourceExperiment(int(entry.name), name, created, entry.path))
    return found


def plan(root: str, policy: str, target) -> IdPlan:
    """Check ``policy`` against the store and the target; raise before anything is written."""
    if policy not in POLICIES:
        raise SchemaError(f"--experiment-ids must be one of {', '.join(POLICIES)}, not "
                          f"{policy!r}.")
    limit = getattr(target, "experiment_id_limit", None)
    experiments = scan_experiments(root)
    names = {e.experiment_id: e.name for e in experiments}
    if policy == "widen":
        if not getattr(target, "can_widen", False):
            if limit is None:
                raise TargetError(
                    "--experiment-ids widen is for PostgreSQL: SQLite already stores every "
                    "experiment ID exactly (use the default, keep).", path=target.display)
            raise TargetError(
                "--experiment-ids widen is refused on MySQL/MariaDB: the columns can be widened, "
                "but the next 'mlflow db upgrade' then fails (errno 150 \"Foreign key constraint "
                "is incorrectly formed\") at the first MLflow revision that adds a table "
                "referencing experiments, leaving the database half-upgraded.",
                path=target.display,
                hint="Use --experiment-ids renumber (MLflow's own schema; upgrades just work).")
        target.widen = True
        return IdPlan("widen", names=names)
    too_big = sorted((e for e in experiments if e.experiment_id > INT32_MAX),
                     key=lambda e: e.experiment_id)
    if policy == "keep":
        if limit is not None and too_big:
            shown = "; ".join(f"{e.experiment_id} ({e.name!r})" for e in too_big[:10])
            more = f" and {len(too_big) - 10} more" if len(too_big) > 10 else ""
            widen = ("--experiment-ids widen keeps the exact IDs in BIGINT columns, but every "
                     "later MLflow upgrade must then go through 'fs2sql upgrade-schema URL'"
                     if getattr(target, "can_widen", False) else
                     "(widening the columns is not offered on MySQL/MariaDB: MLflow's later "
                     "upgrades fail on it)")
            raise SchemaError(
                f"{_experiments(len(too_big))} {'has an ID' if len(too_big) == 1 else 'have IDs'}"
                " that do not fit the 32-bit experiment_id "
                f"columns of MLflow's schema on this server: {shown}{more}. Nothing was "
                "written.",
                hint="Choose one: --experiment-ids renumber gives those experiments new small "
                "IDs in creation order (runs, traces, models and artifacts keep theirs; the old "
                f"ID stays as the experiment tag {SOURCE_ID_TAG}; MLflow's own schema, so "
                f"'mlflow db upgrade' just works); {widen}. Or migrate into SQLite, which keeps "
                "every ID.")
        return IdPlan("keep", names=names)
    # renumber
    kept = [e.experiment_id for e in experiments if e.experiment_id <= INT32_MAX]
    start = max(kept, default=0) + 1
    order = sorted(too_big, key=lambda e: (e.creation_time is None, e.creation_time or 0,
                                           e.experiment_id))
    if order and start + len(order) - 1 > INT32_MAX:
        raise SchemaError(
            f"there is no room to renumber {len(order)} experiments after the largest kept ID "
            f"{start - 1}.", hint="Use --experiment-ids widen (PostgreSQL) or SQLite.")
    mapping = {e.experiment_id: start + i for i, e in enumerate(order)}
    return IdPlan("renumber", mapping=mapping, names=names)


# -- the row transform -----------------------------------------------------------------------
class Renumbering:
    """Rewrites entity rows for a mapping old -> new (installed with ``applied``)."""

    def __init__(self, mapping: Dict[int, int]):
        self.mapping = dict(mapping)
        self._where: Dict[str, int] = {}

    def _index(self, table: str) -> int:
        at = self._where.get(table)
        if at is None:
            columns = _rows.SPECS[table].columns
            at = columns.index("experiment_id") if "experiment_id" in columns else -1
            self._where[table] = at
        return at

    def owner(self, column: str, value):
        if column == "experiment_id":
            return self.mapping.get(value, value)
        return value

    def __call__(self, entity, rows):
        from .model import Experiment

        mapping = self.mapping
        out = {}
        for table, table_rows in rows.items():
            at = self._index(table) if table in _rows.SPECS else -1
            if at >= 0 and table_rows:
                table_rows = [r if r[at] not in mapping else
                              r[:at] + (mapping[r[at]],) + r[at + 1:] for r in table_rows]
            if table == "registered_model_tags" and table_rows:
                table_rows = [self._prompt_tag(r) for r in table_rows]
            out[table] = table_rows
        if isinstance(entity, Experiment) and entity.experiment_id in mapping:
            new = mapping[entity.experiment_id]
            tags = [t for t in out.get("experiment_tags", ()) if t[0] != SOURCE_ID_TAG]
            out["experiment_tags"] = tags + [(SOURCE_ID_TAG, str(entity.experiment_id), new)]
        return out

    def _prompt_tag(self, row):
        key, value = row[0], row[1]
        if key != PROMPT_EXPERIMENTS_TAG or not isinstance(value, str):
            return row
        parts = value.split(",")
        mapped = [str(self.mapping.get(int(p), int(p))) if _NUMERIC.match(p) else p
                  for p in parts]
        return (key, ",".join(mapped)) + tuple(row[2:])


def install(mapping: Dict[int, int]) -> Callable[[], None]:
    """From now on rows (writer, size check, verify) follow ``mapping``; returns the undo."""
    if not mapping:
        return lambda: None
    return _rows.add_transform(Renumbering(mapping))


@contextmanager
def applied(mapping: Dict[int, int]) -> Iterator[None]:
    """Rows follow ``mapping`` inside the block."""
    restore = install(mapping)
    try:
        yield
    finally:
        restore()


def record(report, plan: IdPlan) -> None:
    """The plan in the report (notes and warnings, so also in --json, with the mapping as data)."""
    report.experiment_ids = {"policy": plan.policy,
                             "renumbered": {str(k): v for k, v in sorted(plan.mapping.items())}}
    if plan.mapping:
        report.notes.append(
            f"{_experiments(len(plan.mapping))} got "
            f"{'a new ID' if len(plan.mapping) == 1 else 'new IDs'} to fit MLflow's 32-bit "
            "experiment_id columns (--experiment-ids renumber; source ID → database ID): "
            + "; ".join(plan.describe())
            + f". Each keeps its source ID in the experiment tag {SOURCE_ID_TAG}; run, trace "
            "and model IDs are unchanged, and so are artifact URIs unless --artifacts-to "
            "rewrites them.")
    if plan.policy == "widen":
        report.warnings.append(
            "Experiment IDs are kept exactly in BIGINT columns (--experiment-ids widen). "
            "Upgrade this database for a newer MLflow ONLY with 'fs2sql upgrade-schema URL', "
            "never with 'mlflow db upgrade' alone: MLflow's migrations add new 32-bit "
            "experiment_id columns, after which logging models and feedback fails in large-ID "
            "experiments and trace spans silently go to the artifact store. MLflow must reach "
            "this database through psycopg2 (postgresql+psycopg2://): psycopg 3, SQLAlchemy "
            "2.1's default for postgresql://, casts every ID parameter to INTEGER and fails on "
            "large IDs.")


def plan_from_db(conn, root: str) -> IdPlan:
    """The plan a finished migration used, read back from the database (for ``verify``)."""
    mapping = mapping_from_db(conn)
    names = {e.experiment_id: e.name for e in scan_experiments(root)} if mapping else {}
    return IdPlan("renumber" if mapping else "keep", mapping=mapping, names=names)


def mapping_from_db(conn) -> Dict[int, int]:
    """old -> new, from the experiment tags a renumbering migration wrote."""
    from sqlalchemy import inspect

    if "experiment_tags" not in inspect(conn).get_table_names():
        return {}
    found = {}
    for new, old in conn.exec_driver_sql(
            "SELECT experiment_id, value FROM experiment_tags WHERE " + _key_column(conn)
            + " = '" + SOURCE_ID_TAG + "'"):
        if isinstance(old, str) and _NUMERIC.match(old.strip()):
            found[int(old.strip())] = int(new)
    return found


def _key_column(conn) -> str:
    return "`key`" if conn.dialect.name in ("mysql", "mariadb") else '"key"'


def _experiments(n: int) -> str:
    return f"{n} experiment" if n == 1 else f"{n} experiments"
