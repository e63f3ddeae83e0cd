"""The report: what was found, written and verified -- as data, as JSON, and as a Rich table.

``Report`` is plain data returned by the library. ``render`` and ``RichProgress`` are the only
places that import Rich; they write to the console they are given (stderr for progress).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .errors import EXIT_OK, EXIT_SKIPPED, EXIT_VERIFY_FAILED
from .model import Skipped
from .progress import Progress

JSON_SCHEMA_VERSION = 1
# The start command names the password by this variable instead of showing it (servers.py).
PASSWORD_VARIABLE = "MLFLOW_DB_PASSWORD"
PASSWORD_PLACEHOLDER = "${" + PASSWORD_VARIABLE + "}"



def kinds():
    """Report rows: (label, table), in the order rows are written."""
    from .rows import SPECS

    return [(spec.label, name) for name, spec in SPECS.items()]


MAX_MISMATCHES_SHOWN = 20


@dataclass
class Report:
    command: str  # "migrate" or "verify"
    source: str
    target: str
    dry_run: bool = False
    mlflow_skinny_version: str = ""
    revision: str = ""
    opens_in: str = ""  # which MLflow releases open the result as it is
    # {"policy": keep|renumber|widen, "renumbered": {source ID: database ID}}
    experiment_ids: Dict[str, object] = field(default_factory=dict)
    found: Dict[str, int] = field(default_factory=dict)
    written: Optional[Dict[str, int]] = None
    verified: Optional[Dict[str, int]] = None
    mismatches: List[str] = field(default_factory=list)
    mismatch_count: int = 0
    skipped: List[Skipped] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    not_migrated: Dict[str, List[str]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    start_command: str = ""
    start_requires: str = ""  # what MLflow's environment needs for it (a database driver)
    # sync: {table: {inserted, updated, deleted}}, conflicts kept as the database has them,
    # and per source what was read (see sync/core.py)
    changes: Optional[Dict[str, Dict[str, int]]] = None
    conflicts: List[str] = field(default_factory=list)
    sources: List[dict] = field(default_factory=list)
    # verify of a synced database: differences the sync state explains, by what explains them
    listed: Dict[str, List[str]] = field(default_factory=dict)
    artifacts: Optional[Dict[str, object]] = None  # --artifacts-to / --artifact-root-map
    # Set when the command failed with an error (exit 1, 130): the paragraph, its parts, the code
    error: Optional[Dict[str, object]] = None

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0 and self.error is None

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return int(self.error["exit_code"])
        if not self.ok:
            return EXIT_VERIFY_FAILED
        if self.skipped and self.command in ("migrate", "sync"):
            # verify --skip-invalid expects the same skips: no difference, so it passes (0)
            return EXIT_SKIPPED
        return EXIT_OK

    @property
    def changed(self) -> int:
        """sync: rows inserted, updated and deleted, all tables together."""
        return sum(sum(per.values()) for per in (self.changes or {}).values())

    @property
    def total_rows(self) -> int:
        counts = self.written if self.written is not None else self.found
        return sum(counts.values())

    def to_dict(self) -> dict:
        return {
            "fs2sql_report": JSON_SCHEMA_VERSION,
            "command": self.command,
            "source": self.source,
            "target": self.target,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "schema": {"revision": self.revision, "mlflow_skinny": self.mlflow_skinny_version,
                       "opens_in": self.opens_in},
            "kinds": [] if self.error is not None else [  # a failed command counted nothing
                {
                    "kind": label,
                    "table": table,
                    "found": self.found.get(table, 0),
                    "written": None if self.written is None else self.written.get(table, 0),
                    "verified": None if self.verified is None else self.verified.get(table, 0),
                    **({} if self.changes is None else self._changes_of(table)),
                }
                for label, table in kinds()
            ],
            "experiment_ids": self.experiment_ids,
            "mismatch_count": self.mismatch_count,
            "mismatches": self.mismatches,
            "skipped": [vars(s) for s in self.skipped],
            "ignored": self.ignored,
            "not_migrated": self.not_migrated,
            "warnings": self.warnings,
            "notes": self.notes,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.total_rows / self.elapsed_s) if self.elapsed_s else None,
            "start_command": self.start_command,
            "start_requires": self.start_requires,
            **({"listed": self.listed} if self.listed else {}),
            **({} if self.changes is None else {
                "changed_rows": self.changed, "conflicts": self.conflicts,
                "sources": self.sources}),
            "artifacts": self.artifacts,
            "error": None if self.error is None else {
                k: v for k, v in self.error.items() if k != "exit_code"},
        }

    def _changes_of(self, table: str) -> dict:
        per = (self.changes or {}).get(table, {})
        return {k: per.get(k, 0) for k in ("inserted", "updated", "deleted")}

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")


def failure_report(command: str, source: str, target: str, exc: BaseException,
                   exit_code: int) -> Report:
    """The report of a command that stopped with an error, for ``--json``: ``ok`` false, the
    exit code, and the error's paragraph (``message``), ``what``, ``path`` and ``hint``."""
    from .errors import Fs2sqlError

    report = Report(command, source=source, target=target)
    if isinstance(exc, Fs2sqlError):
        message, what, path, hint = exc.paragraph(), exc.what, exc.path, exc.hint
    elif isinstance(exc, KeyboardInterrupt):
        message = what = "Interrupted: nothing was written (the target is as it was)."
        path = hint = None
    else:
        message = what = f"fs2sql failed unexpectedly ({type(exc).__name__}: {exc})"
        path, hint = None, "Run again with --verbose for the traceback, and please report it."
    report.error = {"type": type(exc).__name__, "message": message, "what": what, "path": path,
                    "hint": hint, "exit_code": exit_code}
    return report


def summary_line(report: Report) -> Optional[str]:
    """One line for stderr when the report table is not shown (``-q``, ``--json -``) but the
    exit code says something went wrong; None when it did not."""
    if report.mismatch_count:
        first = f" First: {report.mismatches[0]}" if report.mismatches else ""
        return (f"Verification FAILED: {_count(report.mismatch_count, 'difference')} between "
                f"the store and the database (exit 3).{first}")
    if report.exit_code and report.skipped:
        return (f"Migrated, but --skip-invalid skipped {_count(len(report.skipped), 'entity')} "
                "(exit 4); --json or a run without -q lists them.")
    return None


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n:,} {noun if n == 1 else plural}"


def render(report: Report, console) -> None:
    """The final table and notes, on ``console`` (stdout)."""
    from rich.table import Table

    if report.command == "sync":
        return render_sync(report, console)
    title = {"migrate": "fs2sql migrate", "verify": "fs2sql verify"}[report.command]
    if report.dry_run:
        title += " (dry run: nothing written)"
    # The title on its own line: as the table's title Rich wraps it to the table's width.
    console.print(title, markup=False, soft_wrap=True)
    table = Table()
    table.add_column("Kind")
    table.add_column("Found", justify="right")
    if report.written is not None:
        table.add_column("Written", justify="right")
    if report.verified is not None:
        table.add_column("Verified", justify="right")
    for label, key in kinds():
        row = [label, f"{report.found.get(key, 0):,}"]
        if report.written is not None:
            row.append(f"{report.written.get(key, 0):,}")
        if report.verified is not None:
            row.append(f"{report.verified.get(key, 0):,}")
        table.add_row(*row)
    console.print(table)
    rate = f", {report.total_rows / report.elapsed_s:,.0f} rows/s" if report.elapsed_s else ""
    # Paths, URLs and commands are never wrapped (soft_wrap): they are copied whole.
    console.print(f"Source: {report.source}", markup=False, soft_wrap=True)
    if report.target:
        console.print(f"Target: {report.target}", markup=False, soft_wrap=True)
    if report.revision:
        made_by = (f" (mlflow-skinny {report.mlflow_skinny_version})"
                   if report.mlflow_skinny_version else "")
        console.print(f"Schema: Alembic revision {report.revision}{made_by}", soft_wrap=True)
    if report.opens_in and report.command == "migrate":
        console.print(f"Opens in: {report.opens_in} as it is; newer MLflow after `mlflow db "
                      "upgrade`; for an older MLflow, migrate again with --mlflow-version X.Y",
                      markup=False, soft_wrap=True)
    console.print(f"Elapsed: {report.elapsed_s:.2f} s{rate}")
    if report.artifacts:
        from .artifacts.report import artifact_lines

        for line in artifact_lines(report.artifacts, report.dry_run):
            console.print(line, markup=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"Note: {note}", markup=False, soft_wrap=True)
    for kind, paths in sorted(report.not_migrated.items()):
        console.print(f"Not migrated ({kind}): {len(paths)}, e.g. {paths[0]}", markup=False,
                      soft_wrap=True)
    if report.ignored:
        console.print(f"Ignored (not MLflow data): {len(report.ignored)}, e.g. "
                      f"{report.ignored[0]}", markup=False, soft_wrap=True)
    for skipped in report.skipped:
        console.print(f"SKIPPED {skipped.kind} {skipped.entity_id}: {skipped.path}: "
                      f"{skipped.reason}", markup=False, soft_wrap=True)
    for warning in report.warnings:
        console.print(f"Warning: {warning}", markup=False, style="yellow", soft_wrap=True)
    for line in report.mismatches[:MAX_MISMATCHES_SHOWN]:
        console.print(line, markup=False, style="red", soft_wrap=True)
    if report.mismatch_count > MAX_MISMATCHES_SHOWN:
        console.print(f"... and {report.mismatch_count - MAX_MISMATCHES_SHOWN} more differences "
                      "(all of them are in --json).", markup=False, soft_wrap=True)
    if report.command == "verify" or report.verified is not None:
        verdict = ("Verified: the database holds exactly what the store holds." if report.ok else
                   f"Verification FAILED: {_count(report.mismatch_count, 'difference')}.")
        if report.ok and report.listed:
            verdict = ("Verified: every synced entity holds what its store holds, apart from "
                       "the differences the sync state explains (notes above; --strict fails "
                       "on them).")
        console.print(verdict, style="green" if report.ok else "bold red")
    if report.start_command and report.ok and not report.dry_run:
        console.print(f"Start MLflow on it: {report.start_command}", markup=False,
                      soft_wrap=True)
        if PASSWORD_PLACEHOLDER in report.start_command:
            console.print(f"(Put the database password, URL-encoded as in your URL, into "
                          f"{PASSWORD_VARIABLE} first, e.g. read -rs {PASSWORD_VARIABLE} && "
                          f"export {PASSWORD_VARIABLE}; fs2sql never shows it.)", markup=False,
                          soft_wrap=True)
        if report.start_requires:
            console.print(f"(MLflow's environment needs the database driver: "
                          f"{report.start_requires})", markup=False, soft_wrap=True)


def render_sync(report: Report, console) -> None:
    """One line when nothing changed (cron mails stay short); else the changes per kind."""
    from rich.table import Table

    units = sum(s.get("units_read", 0) + s.get("units_unchanged", 0) for s in report.sources)
    if not report.changed and not report.conflicts and not report.skipped \
            and report.ok:
        console.print(f"Up to date: nothing to change in {report.target} "
                      f"({len(report.sources)} source{'s' if len(report.sources) != 1 else ''},"
                      f" {units:,} units checked, {report.elapsed_s:.2f} s)."
                      + (" (dry run)" if report.dry_run else ""),
                      markup=False, soft_wrap=True)
        _render_lines(report, console)
        return
    title = "fs2sql sync" + (" (dry run: nothing written)" if report.dry_run else "")
    table = Table(title=title, title_justify="left")
    for column in ("Kind", "Inserted", "Updated", "Deleted"):
        table.add_column(column, justify="left" if column == "Kind" else "right")
    for label, key in kinds():
        per = (report.changes or {}).get(key)
        if per and any(per.values()):
            table.add_row(label, *(f"{per.get(k, 0):,}" for k in
                                   ("inserted", "updated", "deleted")))
    console.print(table)
    for src in report.sources:
        what = "first sync (a migration)" if src.get("first_sync") else (
            f"{src.get('units_changed', 0):,} changed, {src.get('units_read', 0):,} read, "
            f"{src.get('units_unchanged', 0):,} unchanged by their files")
        console.print(f"Source: {src['path']}: {what}", markup=False, soft_wrap=True)
    console.print(f"Target: {report.target}", markup=False, soft_wrap=True)
    console.print(f"Elapsed: {report.elapsed_s:.2f} s")
    _render_lines(report, console)


def _render_lines(report: Report, console) -> None:
    for line in report.conflicts[:MAX_MISMATCHES_SHOWN]:
        console.print(f"Conflict: {line}", markup=False, style="yellow", soft_wrap=True)
    if len(report.conflicts) > MAX_MISMATCHES_SHOWN:
        console.print(f"... and {len(report.conflicts) - MAX_MISMATCHES_SHOWN} more conflicts "
                      "(all of them are in --json).", markup=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"Note: {note}", markup=False, soft_wrap=True)
    for skipped in report.skipped:
        console.print(f"SKIPPED {skipped.kind} {skipped.entity_id}: {skipped.path}: "
                      f"{skipped.reason}", markup=False, soft_wrap=True)
    for warning in report.warnings:
        console.print(f"Warning: {warning}", markup=False, style="yellow", soft_wrap=True)
    for line in report.mismatches[:MAX_MISMATCHES_SHOWN]:
        console.print(line, markup=False, style="red", soft_wrap=True)
    if report.verified is not None:
        verdict = ("Verified: every synced entity holds what its store holds." if report.ok
                   else f"Verification FAILED: {report.mismatch_count} differences.")
        console.print(verdict, style="green" if report.ok else "bold red")


class RichProgress(Progress):
    """A transient Rich bar on stderr; off the terminal it draws nothing."""

    def __init__(self, console):
        self._console = console
        self._progress = _bar(console, "")
        self._unit = ""
        self._task = None

    def start(self, description: str, total: Optional[int], unit: str = "") -> None:
        """A new phase; ``total`` None: a phase without steps to count (a pulsing bar);
        ``unit="bytes"``: a byte count, shown as sizes and speed."""
        if unit == "bytes" or self._unit == "bytes":  # another bar: sizes and speed
            self.stop()
            self._progress = _bar(self._console, unit)
        self._unit = unit
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(description, total=total)
        elif total is None:  # Rich's reset() reads total=None as "keep the old total"
            self._progress.remove_task(self._task)
            self._task = self._progress.add_task(description, total=None)
        else:
            self._progress.reset(self._task, total=total, description=description)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def stop(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None


def _bar(console, unit: str):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as _P

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else \
        (MofNCompleteColumn(),)
    return _P(TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
              console=console, transient=True)
