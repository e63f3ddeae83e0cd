"""The orchestrator: ``migrate`` and ``verify`` as library functions returning a ``Report``.

walk (source) -> rows -> Writer -> Target; verify = a fresh walk + read back. Nothing here prints
or exits; the CLI renders the report and maps exceptions to exit codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from . import (
    ids,
    kinds,  # noqa: F401  (registers every entity kind)
)
from .errors import SchemaError, VerificationFailed
from .model import Run
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
    restore_rows = ids.install(id_plan.mapping)
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
        walk = Walk(root, skip_invalid=options.skip_invalid, check=columns.check,
                    io_threads=options.io_threads)
        writer = Writer(tgt, columns, options.batch_rows) if conn is not None else None
        progress.start("Migrating runs" if writer else "Reading runs", walk.count_runs())
        for entity in walk:
            rows = rows_for(entity)  # built once: the walk's check made and kept them
            for table, table_rows in rows.items():
                report.found[table] = report.found.get(table, 0) + len(table_rows)
            if writer is not None:
                writer.add(rows)
            if isinstance(entity, Run):
                progress.advance()
        _record_walk(report, walk)
        _refuse_unsupported(columns, report)
        if writer is None:
            return _finish(report, started, progress)
        writer.flush()
        report.written = dict(writer.written)

        def verify_before_publish() -> None:
            if not options.verify:
                return
            progress.start("Verifying runs", walk.count_runs())
            check = Walk(root, skip_invalid=options.skip_invalid, check=columns.check,
                         io_threads=options.io_threads)
            from .verify import verify_walk

            verifier = verify_walk(check, conn, columns, progress)
            _record_verify(report, verifier)
            if not report.ok:
                raise VerificationFailed(
                    f"verification found {report.mismatch_count} differences between the store "
                    f"and the new database, so it was not published. First: "
                    f"{report.mismatches[0]}",
                    hint="Please report this with --json output; your source is unchanged.")

        tgt.publish(before=verify_before_publish)
        report.start_command = tgt.start_command()
        report.start_requires = tgt.start_requires()
    except BaseException:
        progress.stop()
        tgt.abort()
        raise
    finally:
        restore_rows()
    return _finish(report, started, progress)


def verify(source: str, target: str, *, skip_invalid: bool = False,
           io_threads: Optional[int] = None, progress: Progress = NULL_PROGRESS) -> Report:
    """Compare the store at ``source`` with the database ``target``; never writes."""
    from .schema import read_target_columns
    from .targets import connect_for_reading, open_for_reading
    from .verify import verify_walk

    started = time.perf_counter()
    root = locate_store(source)
    engine, display = open_for_reading(target)
    report = Report("verify", source=root, target=display)
    try:
        with connect_for_reading(target, engine) as conn:
            columns = read_target_columns(conn)
            report.revision = conn.exec_driver_sql(
                "SELECT version_num FROM alembic_version").scalar() or ""
            id_plan = ids.plan_from_db(conn, root)  # renumbered experiments pair by source ID
            ids.record(report, id_plan)
            walk = Walk(root, skip_invalid=skip_invalid, check=columns.check,
                        io_threads=io_threads)
            progress.start("Verifying runs", walk.count_runs())
            with ids.applied(id_plan.mapping):
                verifier = verify_walk(walk, conn, columns, progress)
            _record_walk(report, walk)
            report.found = dict(verifier.expected_total)
            _record_verify(report, verifier)
    finally:
        engine.dispose()
    return _finish(report, started, progress)


def schema_revision_for(mlflow_version: str) -> str:
    """The Alembic revision MLflow ``mlflow_version`` needs, checked against the installed
    mlflow-skinny's migration scripts (it can only build revisions it ships)."""
    from .releases import revision_for, table
    from .schema import mlflow_skinny_version

    revision, release = revision_for(mlflow_version)
    first = table()["revisions"].get(revision, {}).get("first_release")
    installed = mlflow_skinny_version()

    def key(v):
        return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())

    if first and key(first) > key(installed):
        raise SchemaError(
            f"MLflow {release} needs the schema revision {revision}, which fs2sql's "
            f"mlflow-skinny {installed} does not ship (it first came with MLflow {first}).",
            hint=f"Give fs2sql a newer mlflow-skinny: pipx inject fs2sql "
            f"'mlflow-skinny=={release}' (or pip install it into fs2sql's environment).")
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
            "this store, migrate again once it has finished.")
    report.warnings.extend(getattr(walk, "warnings", ()))  # files changed during the walk


def _record_verify(report: Report, verifier) -> None:
    report.verified = {t: verifier.verified.get(t, 0) for t in table_order()}
    report.mismatches = list(verifier.mismatches)
    report.mismatch_count = verifier.mismatch_count


def _finish(report: Report, started: float, progress: Progress) -> Report:
    progress.stop()
    report.elapsed_s = time.perf_counter() - started
    return report
