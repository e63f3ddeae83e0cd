"""The orchestrator: ``migrate`` and ``verify`` as library functions returning a ``Report``.

walk (source) -> rows -> Writer -> Target; verify = a fresh walk + read back. Nothing here prints
or exits; the CLI renders the report and maps exceptions to exit codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from . import (
    artifacts,
    ids,
    kinds,  # noqa: F401  (registers every entity kind)
)
from .errors import SchemaError, SourceError, VerificationFailed
from .model import Run, Unchanged
from .progress import NULL_PROGRESS, Progress
from .releases import describe_releases
from .report import Report
from .rows import rows_for, table_order
from .schema import cached_schema_columns
from .targets import open_target
from .walk import Walk, locate_store
from .write import DEFAULT_BATCH_ROWS, Writer


@dataclass
class MigrateOptions:
    verify: bool = False
    dry_run: bool = False
    overwrite: bool = False  # replace an existing target file (--force or a confirmed prompt)
    skip_invalid: bool = False
    revision: Optional[str] = None  # Alembic revision; None = head of the installed mlflow-skinny
    mlflow_version: Optional[str] = None  # X.Y[.Z]: the revision that release shipped as head
    batch_rows: int = DEFAULT_BATCH_ROWS
    experiment_ids: str = "keep"  # keep | renumber | widen: IDs vs 32-bit columns (ids.py)
    rename_conflicts: bool = False  # a deleted experiment named like another: renamed, kept
    # ``sync``'s first run into an empty target (sync/first.py): records the sync state
    recorder: Optional[object] = None
    artifacts: Optional[object] = None  # artifacts.ArtifactOptions: copy + rewrite URIs
    io_threads: Optional[int] = None  # threads reading files; None = walk.DEFAULT_IO_THREADS


def migrate(source: str, target: str, options: Optional[MigrateOptions] = None,
            progress: Progress = NULL_PROGRESS) -> Report:
    """Migrate the FileStore at ``source`` into ``target``; all or nothing.

    Raises ``Fs2sqlError`` subclasses for problems the user can fix (nothing is written then),
    ``VerificationFailed`` when ``options.verify`` finds differences (nothing is published).
    """
    options = options or MigrateOptions()
    started = time.perf_counter()
    root = locate_store(source)
    revision = options.revision
    if options.mlflow_version:
        revision = schema_revision_for(options.mlflow_version)
    tgt = open_target(target, overwrite=options.overwrite, revision=revision)
    report = Report("migrate", source=root, target=tgt.display, dry_run=options.dry_run)
    if not options.dry_run:
        tgt.prepare()  # server down, wrong password, data already there: refused first
    id_plan = ids.plan(root, options.experiment_ids, tgt)  # may refuse: nothing written yet
    ids.record(report, id_plan)
    step = artifacts.step_for(options.artifacts, root)
    if step is not None and not options.dry_run:
        step.check_destination()  # SDK, bucket, DEST inside the store: refused first
    restore_rows = ids.install(id_plan.mapping)
    restore_uris = step.install() if step is not None else (lambda: None)  # after the IDs
    try:
        if options.dry_run:  # check sizes against the same (cached) schema, write nothing
            conn, columns, info = None, *cached_schema_columns(revision)
            report.revision, report.mlflow_skinny_version = info.revision, \
                info.mlflow_skinny_version
        else:
            conn = tgt.begin()
            report.revision, report.mlflow_skinny_version = tgt.revision, \
                tgt.mlflow_skinny_version
            columns = tgt.columns()
        report.opens_in = describe_releases(report.revision)
        recorder = options.recorder
        walk = Walk(root, skip_invalid=options.skip_invalid, check=columns.check,
                    selector=recorder.selector if recorder else None,
                    pending_window_s=recorder.pending_window_s if recorder else None,
                    rename_conflicts=options.rename_conflicts,
                    io_threads=options.io_threads)
        writer = Writer(tgt, columns, options.batch_rows) if conn is not None else None
        if recorder is not None and conn is not None:
            recorder.begin(conn, columns)
        progress.start("Migrating runs" if writer else "Reading runs", walk.count_runs())
        for entity in walk:
            if isinstance(entity, Unchanged):  # sync: being written right now; next time
                recorder.pending.append(entity)
                continue
            rows = rows_for(entity)  # built once: the walk's check made and kept them
            if recorder is not None:
                recorder.observe(entity, rows)
            for table, table_rows in rows.items():
                report.found[table] = report.found.get(table, 0) + len(table_rows)
            if writer is not None:
                writer.add(rows)
            if step is not None:
                step.observe(entity)
            if isinstance(entity, Run):
                progress.advance()
        _record_walk(report, walk)
        _refuse_unsupported(columns, report)
        if writer is None:
            if step is not None:
                step.record(report)
            return _finish(report, started, progress)
        writer.flush()
        report.written = dict(writer.written)
        if step is not None:  # every file in place before the database is published
            step.copy(progress)

        def verify_before_publish() -> None:
            if not options.verify:
                return
            progress.start("Verifying runs", walk.count_runs())
            check = Walk(root, skip_invalid=options.skip_invalid, check=columns.check,
                         io_threads=options.io_threads)
            from .verify import verify_walk

            verifier = verify_walk(check, conn, columns, progress)
            _record_verify(report, verifier)
            if step is not None and options.artifacts.check_files:
                step.check(progress)
                step.record(report)
            if not report.ok:
                raise VerificationFailed(
                    f"verification found {report.mismatch_count} "
                    f"difference{'' if report.mismatch_count == 1 else 's'} between the store "
                    f"and the new database, so it was not published. First: "
                    f"{report.mismatches[0]}",
                    hint="Please report this with --json output; your source is unchanged.")

        if recorder is not None:
            recorder.finish(id_plan.policy)
        # The database builds its indexes and checks its keys: seconds, with no runs to count.
        progress.start("Building indexes and checking keys", None)
        tgt.publish(before=verify_before_publish)
        report.start_command = tgt.start_command()
        report.start_requires = tgt.start_requires()
        if step is not None:
            if report.artifacts is None:  # else recorded by --verify
                step.record(report)
            report.start_command += step.server_flags()
    except BaseException:
        progress.stop()
        tgt.abort()
        raise
    finally:
        restore_uris()
        restore_rows()
    return _finish(report, started, progress)


def verify(source, target: str, *, skip_invalid: bool = False,
           io_threads: Optional[int] = None, progress: Progress = NULL_PROGRESS,
           strict: bool = False, artifacts_options=None) -> Report:
    """Compare the store at ``source`` (or, for a database ``sync`` keeps, each store of a
    list) with the database ``target``; never writes.

    ``artifacts_options`` (``artifacts.ArtifactOptions``): the URIs are expected as that
    migration rewrote them, and (unless ``check_files`` is off) every file at its new place."""
    from .schema import read_target_columns
    from .targets import connect_for_reading, open_for_reading
    from .targets.readable import check_mlflow_database
    from .verify import verify_walk

    started = time.perf_counter()
    roots = [locate_store(s) for s in ([source] if isinstance(source, str) else source)]
    root = roots[0]
    engine, display = open_for_reading(target)
    report = Report("verify", source=", ".join(roots), target=display)
    try:
        with connect_for_reading(target, engine) as conn:
            report.revision, warnings, if_different = check_mlflow_database(conn, display, root)
            report.warnings.extend(warnings)
            columns = read_target_columns(conn)
            if columns.has_table("fs2sql_units"):  # kept by sync: its state explains changes
                from .sync.check import verify_synced

                verify_synced(conn, columns, roots, report, progress, strict,
                              artifacts_options)
                return _finish(report, started, progress)
            if len(roots) > 1:
                raise SourceError(
                    "several stores can only be verified against a database that fs2sql sync "
                    "keeps; this one was made by a migration of one store.", path=display,
                    hint="Verify it with the one store it was migrated from.")
            id_plan = ids.plan_from_db(conn, root)  # renumbered experiments pair by source ID
            ids.record(report, id_plan)
            walk = Walk(root, skip_invalid=skip_invalid, check=columns.check,
                        io_threads=io_threads)
            progress.start("Verifying runs", walk.count_runs())
            step = artifacts.step_for(artifacts_options, root)
            with ids.applied(id_plan.mapping):
                undo = step.install() if step is not None else (lambda: None)
                try:
                    verifier = verify_walk(walk, conn, columns, progress,
                                           observe=step.observe if step else None)
                finally:
                    undo()
            _record_walk(report, walk)
            report.found = dict(verifier.expected_total)
            _record_verify(report, verifier)
            if step is not None:
                if artifacts_options.check_files:
                    step.check(progress)
                step.record(report)
            if not report.ok and if_different:  # e.g. a database MLflow only initialised
                report.warnings.append(if_different)
    finally:
        engine.dispose()
    return _finish(report, started, progress)


def schema_revision_for(mlflow_version: str) -> str:
    """The Alembic revision MLflow ``mlflow_version`` needs, checked against the installed
    mlflow-skinny's migration scripts (it can only build revisions it ships)."""
    from .releases import check_buildable, revision_for

    revision, release = revision_for(mlflow_version)
    check_buildable(revision, release)
    return revision


def _refuse_unsupported(columns, report: Report) -> None:
    """The chosen (older) schema has no place for some of the data: refuse, with counts."""
    if not columns.unsupported:
        return
    listed = "; ".join(f"{name}: {n} {'values' if '.' in name else 'rows'}"
                       for name, n in sorted(columns.unsupported.items()))
    raise SchemaError(
        f"The schema at revision {report.revision} ({report.opens_in or 'the chosen MLflow'}) "
        f"cannot hold everything in the store, so nothing was written. Missing tables or "
        f"columns, with what the store holds for them: {listed}.",
        hint="Choose a newer --mlflow-version (the MLflow you will run), or leave it out to "
        "use the newest schema fs2sql has.")


def _record_walk(report: Report, walk: Walk) -> None:
    report.skipped = list(walk.skipped)
    report.ignored = list(walk.ignored)
    report.not_migrated = {k: list(v) for k, v in walk.not_migrated.items()}
    if walk.duplicate_metric_lines:
        report.notes.append(
            f"{walk.duplicate_metric_lines} identical metric lines were kept once, as MLflow's "
            "SQL store keeps them.")
    for template, n in walk.notes.items():  # counts from kinds/*.py
        report.notes.append(template.format(n=n))
    if walk.running_runs:
        report.warnings.append(
            f"{walk.running_runs} runs are still RUNNING: if something is still logging to "
            "this store, `fs2sql sync` brings in what it logs later (or migrate again once it "
            "has finished).")
    report.warnings.extend(getattr(walk, "warnings", ()))  # files changed during the walk
    for renamed in getattr(walk, "renamed", ()):
        report.notes.append(f"Renamed a deleted experiment (--rename-conflicts): {renamed}.")


def _record_verify(report: Report, verifier) -> None:
    report.verified = {t: verifier.verified.get(t, 0) for t in table_order()}
    report.mismatches = list(verifier.mismatches)
    report.mismatch_count = verifier.mismatch_count


def _finish(report: Report, started: float, progress: Progress) -> Report:
    progress.stop()
    report.elapsed_s = time.perf_counter() - started
    return report
