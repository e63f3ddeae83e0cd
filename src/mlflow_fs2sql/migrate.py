"""The orchestrator: ``migrate`` and ``verify`` as library functions returning a ``Report``.

walk (source) -> rows -> Writer -> Target; verify = a fresh walk + read back. Nothing here prints
or exits; the CLI renders the report and maps exceptions to exit codes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from .errors import VerificationFailed
from .model import Run
from .progress import NULL_PROGRESS, Progress
from .report import Report
from . import kinds  # noqa: F401  (registers every entity kind)
from .rows import rows_for, table_order
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
    batch_rows: int = DEFAULT_BATCH_ROWS


def migrate(source: str, target: str, options: Optional[MigrateOptions] = None,
            progress: Progress = NULL_PROGRESS) -> Report:
    """Migrate the FileStore at ``source`` into ``target``; all or nothing.

    Raises ``Fs2sqlError`` subclasses for problems the user can fix (nothing is written then),
    ``VerificationFailed`` when ``options.verify`` finds differences (nothing is published).
    """
    options = options or MigrateOptions()
    started = time.perf_counter()
    root = locate_store(source)
    tgt = open_target(target, overwrite=options.overwrite, revision=options.revision)
    report = Report("migrate", source=root, target=tgt.display, dry_run=options.dry_run)
    if not options.dry_run:
        tgt.prepare()
    try:
        conn = tgt.begin() if not options.dry_run else None
        report.revision, report.mlflow_skinny_version = tgt.revision, tgt.mlflow_skinny_version
        columns = tgt.columns() if conn is not None else None
        walk = Walk(root, skip_invalid=options.skip_invalid,
                    check=columns.check if columns is not None else None)
        writer = Writer(tgt, columns, options.batch_rows) if columns is not None else None
        progress.start("Migrating runs" if writer else "Reading runs", walk.count_runs())
        for entity in walk:
            rows = rows_for(entity)
            for table, table_rows in rows.items():
                report.found[table] = report.found.get(table, 0) + len(table_rows)
            if writer is not None:
                writer.add(rows)
            if isinstance(entity, Run):
                progress.advance()
        _record_walk(report, walk)
        if writer is None:
            return _finish(report, started, progress)
        writer.flush()
        report.written = dict(writer.written)

        def verify_before_publish() -> None:
            if not options.verify:
                return
            progress.start("Verifying runs", walk.count_runs())
            check = Walk(root, skip_invalid=options.skip_invalid, check=columns.check)
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
    except BaseException:
        progress.stop()
        tgt.abort()
        raise
    return _finish(report, started, progress)


def verify(source: str, target: str, *, skip_invalid: bool = False,
           progress: Progress = NULL_PROGRESS) -> Report:
    """Compare the store at ``source`` with the database ``target``; never writes."""
    from .schema import read_target_columns
    from .targets.sqlite import open_sqlite_readonly, sqlite_path
    from .verify import verify_walk

    started = time.perf_counter()
    root = locate_store(source)
    engine = open_sqlite_readonly(target)
    report = Report("verify", source=root, target=sqlite_path(target))
    try:
        with engine.connect() as conn:
            columns = read_target_columns(conn)
            report.revision = conn.exec_driver_sql(
                "SELECT version_num FROM alembic_version").scalar() or ""
            walk = Walk(root, skip_invalid=skip_invalid, check=columns.check)
            progress.start("Verifying runs", walk.count_runs())
            verifier = verify_walk(walk, conn, columns, progress)
            _record_walk(report, walk)
            report.found = dict(verifier.expected_total)
            _record_verify(report, verifier)
    finally:
        engine.dispose()
    return _finish(report, started, progress)


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


def _record_verify(report: Report, verifier) -> None:
    report.verified = {t: verifier.verified.get(t, 0) for t in table_order()}
    report.mismatches = list(verifier.mismatches)
    report.mismatch_count = verifier.mismatch_count


def _finish(report: Report, started: float, progress: Progress) -> Report:
    progress.stop()
    report.elapsed_s = time.perf_counter() - started
    return report
