"""``sync``: keep a database up to date with FileStores that are still being written.

For each source, in the order given:

1. Without any lock (``plan.read_source``): recognise the store in the state, stat every run,
   trace and logged model folder, read only those that changed, and spool the units whose rows
   changed. The server keeps working; so do other syncs.
2. Under the database's sync lock, in ONE transaction (``commit.apply_plan``): check that no
   other sync of this source committed meanwhile (else phase 1 again), give new experiments
   their database IDs, merge each changed unit with the database three ways, apply removals,
   write the state, (``--verify``) compare, commit -- or, ``--dry-run``, roll back.

A target that does not exist yet, or an empty database, gets the first source by a migration
(``first.Recorder``); when several first syncs race, exactly one creates it (the SQLite lock
file, the servers' migration lock) and the others become incremental syncs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from .. import kinds  # noqa: F401  (registers every entity kind)
from ..errors import SchemaError, TargetBusy, TargetError
from ..progress import NULL_PROGRESS, Progress
from ..report import Report
from ..walk import locate_store
from . import state
from .plan import read_source

DEFAULT_LOCK_TIMEOUT_S = 900.0
MAX_ROUNDS = 3


@dataclass
class SyncOptions:
    verify: bool = False
    dry_run: bool = False
    skip_invalid: bool = False
    experiment_ids: Optional[str] = None  # None: what the database was first synced with
    mlflow_version: Optional[str] = None  # the first sync's schema; later ones keep it
    rename_conflicts: bool = False
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S
    full: bool = False  # read every unit, trusting no signature
    artifacts: Optional[object] = None  # artifacts.ArtifactOptions: copy + rewrite URIs
    io_threads: Optional[int] = None  # threads reading files (walk.DEFAULT_IO_THREADS)


def sync(sources: List[str], target: str, options: Optional[SyncOptions] = None,
         progress: Progress = NULL_PROGRESS,
         on_wait: Callable[[str], None] = lambda line: None) -> Report:
    """Bring ``target`` up to date with every store in ``sources``; see the module docstring."""
    from ..targets.live import open_live

    options = options or SyncOptions()
    started = time.perf_counter()
    roots = _roots(sources)
    live = open_live(target)
    report = Report("sync", source=", ".join(roots), target=live.display,
                    dry_run=options.dry_run)
    report.changes = {}
    try:
        todo = list(roots)
        if not live.exists():
            if _create(live, todo[0], target, options, report, progress, on_wait):
                todo = todo[1:]
        elif options.mlflow_version:
            report.notes.append("--mlflow-version applies to the first sync only: the database "
                                "keeps its schema revision (a sync never changes it).")
        synced = {s["source_id"] for s in report.sources}
        for root in todo:
            _sync_one(live, root, options, report, progress, on_wait, synced)
    finally:
        progress.stop()
        live.close()
    report.elapsed_s = time.perf_counter() - started
    return report


def _roots(sources: List[str]) -> List[str]:
    roots = []
    for source in sources:
        root = locate_store(source)
        if any(os.path.realpath(r) == os.path.realpath(root) for r in roots):
            raise TargetError(f"{source} is given twice (as {root}).",
                              hint="Give each store once.")
        roots.append(root)
    return roots


# -- the first sync: a migration ----------------------------------------------------------------
def _create(live, root: str, target: str, options: SyncOptions, report: Report, progress,
            on_wait) -> bool:
    """Migrate ``root`` into the empty target, recording the sync state; False when another
    sync created the target meanwhile (this one then syncs into it)."""
    from ..migrate import MigrateOptions, migrate
    from .first import Recorder

    server = live.dialect != "sqlite"
    if not server:  # the migration does not lock an SQLite file that does not exist yet
        live.lock(options.lock_timeout, on_wait)
    try:
        for attempt in range(MAX_ROUNDS + 2):
            if live.exists():
                return False
            recorder = Recorder(root, time.time())
            recorder.artifacts = options.artifacts
            mopts = MigrateOptions(
                verify=options.verify, dry_run=options.dry_run,
                skip_invalid=options.skip_invalid,
                overwrite=not server and os.path.exists(live.path),  # an empty file
                mlflow_version=options.mlflow_version,
                experiment_ids=options.experiment_ids or "keep",
                rename_conflicts=options.rename_conflicts, recorder=recorder,
                artifacts=options.artifacts, io_threads=options.io_threads)
            try:
                done = migrate(root, target, mopts, progress)
                break
            except TargetBusy:
                if not server or attempt == MAX_ROUNDS + 1:
                    raise
                # Another sync is creating it (its migration holds the lock): wait for it,
                # then sync into what it made (or, if it failed, try to create it again).
                live.lock(options.lock_timeout, on_wait)
                live.unlock()
    finally:
        if not server:
            live.unlock()
    _absorb_migration(report, done, recorder)
    return True


def _absorb_migration(report: Report, done: Report, recorder) -> None:
    for name in ("revision", "mlflow_skinny_version", "opens_in", "experiment_ids",
                 "start_command", "start_requires", "verified", "mismatches",
                 "mismatch_count"):
        setattr(report, name, getattr(done, name))
    report.found = dict(done.found)
    report.written = dict(done.written) if done.written is not None else None
    report.skipped += done.skipped
    report.ignored += done.ignored
    report.not_migrated.update(done.not_migrated)
    report.warnings += done.warnings
    report.notes += done.notes
    for table, n in (done.written or done.found).items():
        if n:
            report.changes[table] = {"inserted": n, "updated": 0, "deleted": 0}
    report.sources.append({"path": recorder.root, "source_id": recorder.source.source_id,
                           "first_sync": True, "units_read": recorder.units,
                           "units_unchanged": 0, "pending": len(recorder.pending)})
    _note_pending(report, recorder.pending)


# -- an incremental sync of one source ----------------------------------------------------------
def _sync_one(live, root: str, options: SyncOptions, report: Report, progress,
              on_wait, synced: set) -> None:
    from .. import artifacts as _artifacts
    from ..schema import read_target_columns
    from .commit import apply_plan

    conn = live.connect()
    columns = read_target_columns(conn)
    revision = _check_schema(conn, columns, live)
    artifact_options = options.artifacts
    if artifact_options is None and columns.has_table("fs2sql_meta"):
        artifact_options = state.load_artifacts(conn)  # what earlier syncs were given
    conn.commit()
    report.revision = revision
    for _ in range(MAX_ROUNDS):
        started = time.time()
        step = _artifacts.step_for(artifact_options, root)
        if step is not None and not options.dry_run:
            step.check_destination()  # SDK, bucket, DEST inside the store: refused first
        plan = read_source(root, conn, columns, skip_invalid=options.skip_invalid,
                           full=options.full, rename_conflicts=options.rename_conflicts,
                           started=started, progress=progress, artifacts=step,
                           io_threads=options.io_threads)
        progress.stop()
        if plan.source is not None and plan.source.source_id in synced:
            plan.spool.close()
            raise TargetError(
                "holds the same store as another SOURCE of this sync (a copy?): fs2sql "
                "recognises a store by its runs, so the two would overwrite each other. "
                "Nothing more was changed.", path=root, hint="Sync one copy of each store.")
        live.lock(options.lock_timeout, on_wait)
        try:
            if not _still_current(conn, plan):
                continue  # another sync of this very store committed meanwhile: look again
            if not state.exists(conn):
                state.create(conn, temporary=options.dry_run and live.dialect == "mysql")
                conn.commit()
            live.begin()
            source = plan.source or state.new_source(root)
            policy = options.experiment_ids or state.get_meta(conn, "experiment_ids") or "keep"
            outcome = apply_plan(live, plan, columns, source, policy=policy,
                                 rename_conflicts=options.rename_conflicts,
                                 skip_invalid=options.skip_invalid, artifacts=step,
                                 read_back=options.verify)
            if step is not None and not options.dry_run:
                step.copy(progress)  # every changed unit's files in place before the commit
            if options.artifacts is not None:
                state.save_artifacts(conn, options.artifacts)
            if state.get_meta(conn, "experiment_ids") is None:
                state.set_meta(conn, "experiment_ids", policy)
            if not _writes_nothing(plan):
                state.save_source(conn, source, root)
            if options.verify:
                if outcome.unwritten:
                    from ..errors import VerificationFailed

                    report.mismatches += ["FAILED: " + p for p in outcome.unwritten]
                    report.mismatch_count += len(outcome.unwritten)
                    raise VerificationFailed(
                        f"{len(outcome.unwritten)} of this sync's writes are not in the database "
                        f"as written (first: {outcome.unwritten[0]}), so the sync was rolled "
                        "back.", hint="Please report this with --json output; your source and "
                        "database are unchanged.")
                _verify_before_commit(live, root, source, report,
                                      _artifacts.step_for(artifact_options, root))
                if step is not None and artifact_options.check_files and not options.dry_run:
                    if step.check(progress).problem_count:
                        from ..errors import VerificationFailed

                        raise VerificationFailed(
                            "the copied artifacts differ from the store's "
                            f"({step.checked.problems[0]}), so the sync was rolled back.",
                            hint="Run it again: files that changed while being copied are "
                            "copied again.")
            if options.dry_run:
                live.rollback()
            else:
                live.commit()
        except BaseException:
            live.rollback()
            raise
        finally:
            live.unlock()
            plan.spool.close()
        _record(report, plan, outcome, source, live)
        if step is not None:
            step.record(report)
            report.start_command = live.start_command() + step.server_flags()
        synced.add(source.source_id)
        return
    raise TargetError(
        f"other syncs of this same store kept committing while this one read it ({MAX_ROUNDS} "
        "times); nothing was changed.", path=root,
        hint="Run one sync per store at a time (one cron line per store).")


def _writes_nothing(plan) -> bool:
    """Nothing new in a known store: the sync leaves even its own state as it is (a cron job
    every hour must not rewrite the database, nor bump its file's mtime, to say so)."""
    return (plan.source is not None and plan.source.moved_from is None
            and not plan.spool.count and not plan.removed and not plan.sig_only
            and not plan.new_experiments)


def _check_schema(conn, columns, live) -> str:
    if not columns.has_table("alembic_version") or not columns.has_table("experiments"):
        raise TargetError(
            "is not an MLflow database (it has no alembic_version and experiments tables).",
            path=live.display,
            hint="Give the database MLflow's server uses, or a new path to create one.")
    revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    if not revision or revision not in _shipped_revisions():
        raise SchemaError(
            f"the database's MLflow schema is at revision {revision!r}, which fs2sql's "
            "mlflow-skinny does not know (the server ran 'mlflow db upgrade' with a newer "
            "MLflow?). A sync never changes the schema, so it cannot write into it.",
            hint="Give fs2sql the MLflow the server runs: pipx inject fs2sql "
            "'mlflow-skinny==<the server's version>'.")
    return revision


def _shipped_revisions() -> set:
    """The Alembic revisions the installed mlflow-skinny ships, from its migration scripts'
    file names (importing MLflow to ask Alembic costs seconds; a sync may have nothing to do)."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return set()
    folder = os.path.join(spec.submodule_search_locations[0], "store", "db_migrations",
                          "versions")
    try:
        return {name.split("_", 1)[0] for name in os.listdir(folder) if name.endswith(".py")}
    except OSError:
        return set()


def _still_current(conn, plan) -> bool:
    if plan.source is None:
        if not state.exists(conn):
            return True
        from .plan import evidence

        found = state.identify(conn, plan.root, evidence(plan.root))
        conn.commit()
        return found is None
    now = state.generation(conn, plan.source.source_id)
    conn.commit()
    return now == plan.source.generation


def _verify_before_commit(live, root, source, report, artifacts=None) -> None:
    """``--verify``: this source against the database, inside the sync's transaction."""
    from .check import verify_source

    verify_source(live.conn, root, source, report, artifacts)


def _record(report: Report, plan, outcome, source, live) -> None:
    for table, per in outcome.counts.items():
        mine = report.changes.setdefault(table, {"inserted": 0, "updated": 0, "deleted": 0})
        for k, v in per.items():
            mine[k] += v
    report.conflicts += outcome.conflicts
    report.notes += outcome.notes
    w = plan.walk
    report.skipped += list(w.skipped)
    report.ignored += list(w.ignored)
    for kind, paths in w.not_migrated.items():
        report.not_migrated.setdefault(kind, []).extend(paths)
    report.warnings += list(w.warnings)
    for renamed in w.renamed:
        report.notes.append(f"Renamed a deleted experiment (--rename-conflicts): {renamed}.")
    from ..model import Skipped

    for kind, entity_id, path, what in outcome.skipped:
        report.skipped.append(Skipped(kind, entity_id, path, what))
    for x, a in outcome.assigned.items():
        if a.how == "joined":
            report.notes.append(f"Experiment {x} of {plan.root} joined database experiment "
                                f"{a.experiment_id} of the same name.")
        elif a.how == "renumbered":
            report.notes.append(f"Experiment {x} of {plan.root} got the database ID "
                                f"{a.experiment_id} (its own is taken or too large).")
        if a.renamed_in_db:
            report.notes.append(f"Renamed a deleted database experiment (--rename-conflicts): "
                                f"{a.renamed_in_db}.")
        if a.name:
            report.notes.append(f"Experiment {x} of {plan.root} is deleted and named like an "
                                f"active one: kept as {a.name!r} (--rename-conflicts).")
    entry = {"path": plan.root, "source_id": source.source_id, "first_sync": False,
             "new_source": plan.source is None, "units_read": plan.read,
             "units_unchanged": plan.not_read, "units_changed": plan.changed,
             "units_removed": len(plan.removed), "pending": len(plan.pending)}
    if plan.source is not None and plan.source.moved_from:
        entry["moved_from"] = plan.source.moved_from
        report.notes.append(f"{plan.root} is the store last synced from "
                            f"{plan.source.moved_from} (recognised by its runs): synced as "
                            "the same source.")
    report.sources.append(entry)
    _note_pending(report, plan.pending)
    if not report.start_command:
        report.start_command = live.start_command()


def _note_pending(report: Report, pending) -> None:
    if pending:
        first = pending[0]
        report.notes.append(
            f"{len(pending)} {'unit was' if len(pending) == 1 else 'units were'} being written "
            f"by MLflow while fs2sql read {'it' if len(pending) == 1 else 'them'} (first: "
            f"{first.kind} {first.unit_id}: {first.reason}); the next sync brings "
            f"{'it' if len(pending) == 1 else 'them'} in.")
