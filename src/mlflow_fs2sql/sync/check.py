"""Verification of a database that ``sync`` keeps: every synced entity must hold what its store
holds, except where the state says why not.

Each store is walked in full (no quick check) and every unit's rows are compared with the
database, row by row and field by field, as ``verify`` does for a migration. A difference is a
failure (exit 3) unless the sync state explains it, in which case it is listed:

* *changed in the database* -- the source still holds what the last sync wrote (``base``) and
  the database differs: the server changed it (or kept it in a conflict);
* *written by the server* -- a row of a synced entity (a tag, metric points) or a whole entity
  (runs logged to the server, experiments made in its UI) that no store holds;
* *not synced yet* -- the unit's files changed since the last sync (its signature differs), or
  the unit is new: the next sync brings it;
* *kept* -- runs and logged models that left the store without being deleted in MLflow.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from .. import rows as _rows
from ..errors import SourceError
from ..model import Experiment, Run, Unchanged
from ..rows import entity_identity, rows_for
from ..walk import Walk
from . import state
from .apply import Tables, read_rows
from .experiments import SyncTransform
from .merge import APPEND_ONLY
from .plan import evidence
from .units import digest, field_hash, key_of, read_base, unit_key

BATCH = 300
MAX_LISTED = 1000


class Findings:
    # ``--strict``: what the server changed in synced entities fails too
    STRICT = ("changed in the database since the last sync",
              "deleted in the database since the last sync")

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.failures: List[str] = []
        self.failure_count = 0
        self.listed: Dict[str, List[str]] = {}
        self.verified: Dict[str, int] = {}
        self.found: Dict[str, int] = {}

    def fail(self, text: str) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_LISTED:
            self.failures.append("FAILED: " + text)

    def list(self, what: str, text: str) -> None:
        if self.strict and what in self.STRICT:
            self.fail(f"{text} ({what})")
            return
        items = self.listed.setdefault(what, [])
        if len(items) < MAX_LISTED:
            items.append(text)
        else:
            items.append("")  # counted, not shown

    def ok(self, table: str, n: int = 1) -> None:
        self.verified[table] = self.verified.get(table, 0) + n


def check_source(conn, columns, root: str, findings: Findings, started: float,
                 source: Optional[state.Source] = None, artifacts=None) -> state.Source:
    """Compare one store with the database it was synced into."""
    if source is None:
        source = state.identify(conn, root, evidence(root))
        if source is None:
            raise SourceError(
                "was never synced into this database (fs2sql's sync state knows no store "
                "holding its runs).", path=root,
                hint="Sync it first (fs2sql sync SOURCE TARGET), or check the target.")
    units = state.load_units(conn, source.source_id)
    mapped = state.load_experiments(conn, source.source_id)
    tables = Tables(columns)
    undo = _rows.add_transform(SyncTransform(
        {x: m.experiment_id for x, m in mapped.items()},
        {x for x, m in mapped.items() if m.owner},
        {x: m.name for x, m in mapped.items() if m.name}, source.source_id))
    undo_uris = artifacts.install() if artifacts is not None else (lambda: None)
    seen = set()
    try:
        walk = Walk(root, skip_invalid=True, check=columns.check)
        batch = []
        for entity in walk:
            if isinstance(entity, Unchanged):
                continue
            seen.add(key_of(entity))
            batch.append(entity)
            if artifacts is not None:
                artifacts.observe(entity)
            if len(batch) >= BATCH:
                _check_batch(conn, tables, units, source, batch, findings, started)
                batch = []
        _check_batch(conn, tables, units, source, batch, findings, started)
    finally:
        undo_uris()
        undo()
    for skipped in walk.skipped:
        findings.list("skipped in the source (invalid)",
                      f"{skipped.kind} {skipped.entity_id}: {skipped.path}: {skipped.reason}")
        seen.add(unit_key(skipped.kind, skipped.entity_id))
    for key in units:
        if key not in seen:
            findings.list("no longer in the source, kept in the database",
                          f"{key} ({units[key].path})")
    return source


def _check_batch(conn, tables: Tables, units, source, batch, findings: Findings,
                 started: float) -> None:
    if not batch:
        return
    bases = state.load_bases(conn, source.source_id, [key_of(e) for e in batch
                                                      if key_of(e) in units])
    prepared = []
    wanted: Dict[str, list] = {}
    for entity in batch:
        key = key_of(entity)
        projected = {t: tables.project(t, r) for t, r in rows_for(entity).items()
                     if t in tables.shapes}
        base = read_base(bases.get(key, {}).get("rows"))
        for table, rows in projected.items():
            shape = tables.shapes[table]
            findings.found[table] = findings.found.get(table, 0) + len(rows)
            wanted.setdefault(table, []).extend(shape.key(r) for r in rows)
        for table, old in base.items():
            if table in tables.shapes:
                wanted.setdefault(table, []).extend(old)
        prepared.append((entity, key, projected, base))
    wanted.pop("metrics", None)
    db = {t: read_rows(conn, tables, t, keys, False) for t, keys in wanted.items()}
    for entity, key, projected, base in prepared:
        kind, unit_id = entity_identity(entity)
        label = f"{kind.capitalize()} {unit_id}"
        known = units.get(key)
        pending = known is None or _changed_since(entity, known, started)
        if pending:
            findings.list("not synced yet (changed in the source since the last sync)",
                          f"{label} ({getattr(entity, 'path', '')})")
        for table, rows in projected.items():
            if table in APPEND_ONLY:
                continue
            _compare(tables.shapes[table], label, rows, base.get(table, {}),
                     db.get(table, {}), pending, findings)
        for table, old in base.items():
            if table not in projected and table in tables.shapes:
                _compare(tables.shapes[table], label, [], old, db.get(table, {}), pending,
                         findings)
        if isinstance(entity, Run):
            _check_metrics(conn, tables, entity, projected, db.get("latest_metrics", {}),
                           pending, findings)


def _changed_since(entity, known: state.UnitState, started: float) -> bool:
    """Did the unit change in the source since the last sync? By content, which verify reads
    anyway: its rows' digest, and for a run the length of each metric file."""
    if digest(rows_for(entity)) != known.digest:
        return True
    if isinstance(entity, Run):
        old = known.offsets or {}
        return any(key not in old or old[key][0] != end for key, end, _ in entity.metric_files)
    return False


def _compare(shape, label, rows, base, db, pending: bool, findings: Findings) -> None:
    table = shape.table
    mine = {shape.key(r): r for r in rows}
    for k, row in mine.items():
        have = db.get(k)
        was = base.get(k)
        if have is None:
            if pending:
                continue
            if was is not None and shape.hashes(row) == was:
                findings.list("deleted in the database since the last sync",
                              f"{label}: {table} {k}")
                continue
            findings.fail(f"{label} — {table} row {k}: missing in target")
            continue
        diffs = [n for n, i in enumerate(shape.fields)
                 if field_hash(row[i]) != field_hash(have[i])]
        if not diffs:
            findings.ok(table)
            continue
        for n in diffs:
            i = shape.fields[n]
            what = f"{label} — {table} {k} field '{shape.names[i]}': source={row[i]!r}, " \
                f"target={have[i]!r}"
            if was is not None and was[n] == field_hash(row[i]):
                findings.list("changed in the database since the last sync", what)
            elif pending:
                continue
            else:
                findings.fail(what)
    for k, was in base.items():
        if k in mine or k not in db:
            continue
        if pending:
            continue
        if tuple(shape.hashes(db[k])) == tuple(was):
            findings.fail(f"{label} — {table} row {k}: no longer in the source but still in "
                          "the target")
        else:
            findings.list("changed in the database since the last sync",
                          f"{label}: {table} {k} (removed from the source, kept)")


def _check_metrics(conn, tables, run: Run, projected, db_latest, pending: bool,
                   findings: Findings) -> None:
    from sqlalchemy import select

    shape = tables.shapes["metrics"]
    t = tables.clauses["metrics"]
    got = {shape.key(tuple(r)): tuple(r) for r in conn.execute(
        select(*[t.c[c] for c in shape.names]).where(t.c.run_uuid == run.run_uuid))}
    want = {shape.key(r): r for r in projected.get("metrics", ())}
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    label = f"Run {run.run_uuid}"
    if missing and not pending:
        findings.fail(f"{label} — {len(missing)} metric points missing in target (first: "
                      f"{missing[0]})")
    findings.ok("metrics", len(want) - len(missing))
    if extra:
        findings.list("written by the server", f"{label}: {len(extra)} metric points")
    # latest_metrics must be the greatest point the database holds, as MLflow's store keeps it
    lshape = tables.shapes["latest_metrics"]
    names = shape.names
    at = [names.index(c) for c in ("step", "timestamp", "value")]
    best: Dict[str, tuple] = {}
    for row in got.values():
        k = row[names.index("key")]
        if k not in best or tuple(row[i] for i in at) > tuple(best[k][i] for i in at):
            best[k] = row
    lt = tables.clauses["latest_metrics"]
    latest = {tuple(r)[lshape.names.index("key")]: tuple(r) for r in conn.execute(
        select(*[lt.c[c] for c in lshape.names]).where(lt.c.run_uuid == run.run_uuid))}
    lat = [lshape.names.index(c) for c in ("step", "timestamp", "value")]
    for k, row in best.items():
        have = latest.get(k)
        if have is None or tuple(have[i] for i in lat) != tuple(row[i] for i in at):
            findings.fail(f"{label} — latest metric {k!r}: target={have!r} is not the "
                          "greatest point the target holds")
        else:
            findings.ok("latest_metrics")


def server_only(conn, columns) -> Dict[str, int]:
    """Entities no synced store holds (the server wrote them): counts per kind."""
    from sqlalchemy import String, column, func, literal, select
    from sqlalchemy import table as table_clause

    units = state.table("fs2sql_units")
    ex = state.table("fs2sql_experiments")
    out = {}
    for kind, table, col in (("run", "runs", "run_uuid"), ("trace", "trace_info", "request_id"),
                             ("logged model", "logged_models", "model_id")):
        if not columns.has_table(table):
            continue
        t = table_clause(table, column(col))
        key = literal(f"{kind}:", String) + t.c[col]
        n = conn.execute(select(func.count()).select_from(t).where(
            ~select(units.c.unit).where(units.c.unit == key).exists())).scalar()
        if n:
            out[table] = n
    et = table_clause("experiments", column("experiment_id"))
    n = conn.execute(select(func.count()).select_from(et).where(
        ~select(ex.c.experiment_id).where(ex.c.experiment_id == et.c.experiment_id).exists())
    ).scalar()
    if n:
        out["experiments"] = n
    return out


def verify_synced(conn, columns, roots, report, progress, strict: bool = False,
                  artifacts_options=None) -> None:
    """``fs2sql verify SOURCE... TARGET`` on a database kept by ``sync``."""
    import time

    findings = Findings(strict)
    started = time.time()
    if artifacts_options is None:
        artifacts_options = state.load_artifacts(conn)  # as the syncs rewrote the URIs
    for root in roots:
        progress.start(f"Verifying {root}", 0)
        from .. import artifacts

        step = artifacts.step_for(artifacts_options, root)
        check_source(conn, columns, root, findings, started, artifacts=step)
        if step is not None:
            if artifacts_options.check_files:
                step.check(progress)
            step.record(report)
    for table, n in server_only(conn, columns).items():
        findings.list("written by the server", f"{n} rows of {table} that no synced store holds")
    apply_findings(report, findings)


def verify_source(conn, root, source, report, artifacts=None) -> None:
    """``sync --verify``: the source just synced, inside the sync's transaction."""
    import time

    from ..schema import read_target_columns

    findings = Findings()
    check_source(conn, read_target_columns(conn), root, findings, time.time(), source,
                 artifacts)
    apply_findings(report, findings)
    if findings.failure_count:
        from ..errors import VerificationFailed

        raise VerificationFailed(
            f"verification found {findings.failure_count} differences between the store and "
            f"the database, so the sync was rolled back. First: {findings.failures[0]}",
            hint="Please report this with --json output; your source and database are "
            "unchanged.")


def apply_findings(report, findings: Findings) -> None:
    report.verified = dict(findings.verified)
    report.found = dict(findings.found)
    report.mismatches += findings.failures
    report.mismatch_count += findings.failure_count
    for what, items in findings.listed.items():
        shown = [i for i in items if i]
        report.notes.append(f"{len(items)} {what}" + (f", e.g. {shown[0]}" if shown else "")
                            + ".")
        report.listed[what] = shown


__all__ = ["Experiment", "Findings", "apply_findings", "check_source", "server_only",
           "verify_source"]
