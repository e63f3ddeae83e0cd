"""The command line: a Typer skin over ``migrate.migrate`` and ``migrate.verify``.

This is the one place that prints errors and chooses exit codes (table in ``errors.py`` and the
README). Heavy modules (SQLAlchemy, Alembic, MLflow) are imported inside the commands so that
``--help`` and ``--version`` stay fast.
"""

import gc
import os
import signal
import sys
from typing import Annotated, List, Optional

import typer

from . import __version__
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, Fs2sqlError

app = typer.Typer(
    name="fs2sql",
    help="Move an MLflow FileStore (./mlruns) into an SQL database, losslessly, and prove it.",
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        from .releases import version_lines

        typer.echo("\n".join([f"fs2sql {__version__}", *version_lines()]))
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version_callback, is_eager=True,
        help="Show the version and exit.")] = None,
) -> None:
    """fs2sql: migrate an MLflow FileStore into SQLite with MLflow's own schema."""


SourceArg = Annotated[Optional[str], typer.Argument(
    help="The mlruns folder (or the folder that contains it).", show_default=False,
    metavar="SOURCE")]
TargetArg = Annotated[Optional[str], typer.Argument(
    help="The database: a file path (out.db), an sqlite:/// URI, or a postgresql:// or mysql:// "
    "URL of an empty database (the password is never shown).", show_default=False,
    metavar="TARGET")]
ExampleOpt = Annotated[bool, typer.Option(
    "--example", help="Use the small sample store shipped with fs2sql as SOURCE (then give only "
    "TARGET): try fs2sql before pointing it at your own mlruns.")]
JsonOpt = Annotated[Optional[str], typer.Option(
    "--json", metavar="FILE", help="Also write the report as JSON to FILE ('-' for stdout).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no report "
                                        "table; errors still go to stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks of errors.")]
ArtifactsToOpt = Annotated[Optional[str], typer.Option(
    "--artifacts-to", metavar="DEST",
    help="Copy every artifact (runs, logged models, traces) into DEST, a folder or any URI "
    "MLflow's artifact repositories take (s3://, gs://, ...), in the layout 'mlflow server "
    "--artifacts-destination DEST' serves, and rewrite every artifact URI to match.")]
ArtifactUrisOpt = Annotated[str, typer.Option(
    "--artifact-uris", metavar="proxied|direct",
    help="With --artifacts-to: proxied (default) writes mlflow-artifacts:/<experiment>/... "
    "URIs the server resolves; direct writes DEST/<experiment>/... URIs clients open "
    "themselves.")]
WorkersOpt = Annotated[int, typer.Option(
    "--artifact-workers", metavar="N", min=1, max=64,
    help="Files copied at the same time (default 8).")]
RootMapOpt = Annotated[Optional[List[str]], typer.Option(
    "--artifact-root-map", metavar="OLD=NEW",
    help="Only rewrite: artifact URIs at or below OLD (any spelling: file://, plain, Windows, "
    "WSL, relative, %-escaped) point below NEW. For files you moved yourself. Repeatable.")]
RenameOpt = Annotated[bool, typer.Option(
    "--rename-conflicts", help="Keep a deleted experiment whose name an active one has, "
    "renamed 'NAME (deleted, from ID)', instead of refusing it (MLflow's names are unique "
    "among deleted experiments too).")]
SkipOpt = Annotated[bool, typer.Option(
    "--skip-invalid", help="Skip invalid entities (and what depends on them) instead of stopping;"
    " the report lists each one. Exit code 4 when anything was skipped.")]

# The default (8, ``walk.DEFAULT_IO_THREADS``) is not imported here: walk loads PyYAML.
IoThreadsOpt = Annotated[Optional[int], typer.Option(
    "--io-threads", metavar="N", min=1, max=256,
    help="Threads reading the store's files (default 8). 1 reads one file after the other. "
    "Raise it (16-64) for stores on NFS or network disks, where each read waits for the "
    "network; the output is the same for any N.")]


@app.command()
def migrate(
    source: SourceArg = None,
    target: TargetArg = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Compare the result with the source before publishing it.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Walk and count everything; write nothing.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", "-f", help="Replace an existing target file without asking.")] = False,
    skip_invalid: SkipOpt = False,
    mlflow_version: Annotated[Optional[str], typer.Option(
        "--mlflow-version", metavar="X.Y[.Z]",
        help="Make the schema of this MLflow release (the version your server runs), so it opens "
        "the database without 'mlflow db upgrade'. Default: the newest fs2sql has.")] = None,
    experiment_ids: Annotated[str, typer.Option(
        "--experiment-ids", metavar="keep|renumber|widen",
        help="PostgreSQL/MySQL hold 32-bit experiment IDs; FileStore IDs have 18 digits. keep "
        "(default): exact IDs, refused if one does not fit. renumber: new small IDs in creation "
        "order for those that do not fit (old ID kept as tag fs2sql.source_experiment_id). "
        "widen (PostgreSQL): exact IDs in BIGINT columns; upgrade later with fs2sql "
        "upgrade-schema.")] = "keep",
    rename_conflicts: RenameOpt = False,
    artifacts_to: ArtifactsToOpt = None,
    artifact_uris: ArtifactUrisOpt = "proxied",
    artifact_root_map: RootMapOpt = None,
    artifact_workers: WorkersOpt = 8,
    io_threads: IoThreadsOpt = None,
    example: ExampleOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    json_file: JsonOpt = None,
) -> None:
    """Migrate SOURCE (an MLflow FileStore) into TARGET (a new SQLite database)."""
    from .migrate import MigrateOptions
    from .migrate import migrate as run_migrate

    source, target = _source_and_target(source, target, example)
    artifacts = _artifact_options(artifacts_to, artifact_uris, artifact_root_map,
                                  artifact_workers)

    def run(progress):
        overwrite = force or _confirm_replace(target)
        options = MigrateOptions(verify=verify, dry_run=dry_run, overwrite=overwrite,
                                 skip_invalid=skip_invalid, mlflow_version=mlflow_version,
                                 experiment_ids=experiment_ids,
                                 rename_conflicts=rename_conflicts,
                                 artifacts=artifacts, io_threads=io_threads)
        return run_migrate(source, target, options, progress)

    _run(run, quiet=quiet, verbose=verbose, json_file=json_file,
         context=("migrate", source, target))


@app.command()
def verify(
    paths: Annotated[Optional[List[str]], typer.Argument(
        help="The mlruns folder (or the folder that contains it), then the database. For a "
        "database fs2sql sync keeps, every store synced into it may be given.",
        show_default=False, metavar="SOURCE... TARGET")] = None,
    skip_invalid: SkipOpt = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="(a database fs2sql sync keeps) also fail on what the server changed "
        "in synced entities since the last sync, instead of listing it.")] = False,
    artifacts_to: ArtifactsToOpt = None,
    artifact_uris: ArtifactUrisOpt = "proxied",
    artifact_root_map: RootMapOpt = None,
    no_artifacts: Annotated[bool, typer.Option(
        "--no-artifacts", help="With --artifacts-to/--artifact-root-map: check the rewritten "
        "URIs only, not the files behind them.")] = False,
    io_threads: IoThreadsOpt = None,
    example: ExampleOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    json_file: JsonOpt = None,
) -> None:
    """Compare SOURCE with TARGET field by field; exit 3 if anything differs. Give the
    --artifacts-to/--artifact-root-map of the migration: then the files are compared too."""
    from .migrate import verify as run_verify

    paths = list(paths or [])
    if len(paths) > 2 and not example:
        source, target = paths[:-1], paths[-1]
    else:
        source, target = _source_and_target(*(paths + [None, None])[:2], example)

    options = _artifact_options(artifacts_to, artifact_uris, artifact_root_map,
                                check_files=not no_artifacts)

    def run(progress):
        return run_verify(source, target, skip_invalid=skip_invalid, progress=progress,
                          artifacts_options=options, strict=strict,
                          io_threads=io_threads)

    _run(run, quiet=quiet, verbose=verbose, json_file=json_file,
         context=("verify", source, target))


@app.command()
def sync(
    paths: Annotated[Optional[List[str]], typer.Argument(
        help="One or more mlruns folders, then the database (a file path, sqlite:///, "
        "postgresql:// or mysql:// URL). A missing or empty database is created by the first "
        "sync.", show_default=False, metavar="SOURCE... TARGET")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Compare every synced entity with its store before committing.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would change; write nothing.")] = False,
    skip_invalid: SkipOpt = False,
    mlflow_version: Annotated[Optional[str], typer.Option(
        "--mlflow-version", metavar="X.Y[.Z]",
        help="(first sync only) the schema of this MLflow release.")] = None,
    experiment_ids: Annotated[Optional[str], typer.Option(
        "--experiment-ids", metavar="keep|renumber|widen",
        help="As for migrate; later syncs keep what the first one chose unless given.")] = None,
    rename_conflicts: RenameOpt = False,
    lock_timeout: Annotated[float, typer.Option(
        "--lock-timeout", metavar="SECONDS",
        help="How long to wait for another sync of the same database (then exit 5).")] = 900.0,
    full: Annotated[bool, typer.Option(
        "--full", help="Read every file again instead of trusting size and mtime.")] = False,
    artifacts_to: ArtifactsToOpt = None,
    artifact_uris: ArtifactUrisOpt = "proxied",
    artifact_root_map: RootMapOpt = None,
    artifact_workers: WorkersOpt = 8,
    io_threads: IoThreadsOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    json_file: JsonOpt = None,
) -> None:
    """Bring TARGET up to date with SOURCE(s); run it as often as you like (e.g. from cron)."""
    from .sync import SyncOptions
    from .sync import sync as run_sync

    if not paths or len(paths) < 2:
        raise typer.BadParameter("give at least one SOURCE and the TARGET",
                                 param_hint="SOURCE... TARGET")
    *sources, target = paths
    artifacts = _artifact_options(artifacts_to, artifact_uris, artifact_root_map,
                                  artifact_workers)

    def run(progress):
        from rich.console import Console

        err = Console(stderr=True)
        options = SyncOptions(verify=verify, dry_run=dry_run, skip_invalid=skip_invalid,
                              mlflow_version=mlflow_version, experiment_ids=experiment_ids,
                              rename_conflicts=rename_conflicts, lock_timeout=lock_timeout,
                              full=full, artifacts=artifacts, io_threads=io_threads)
        return run_sync(sources, target, options, progress,
                        on_wait=lambda line: err.print(line, markup=False, soft_wrap=True))

    _run(run, quiet=quiet, verbose=verbose, json_file=json_file,
         context=("sync", ", ".join(sources), target))


@app.command("upgrade-schema")
def upgrade_schema(
    target: Annotated[str, typer.Argument(
        help="postgresql:// URL of a database fs2sql migrated with --experiment-ids widen.",
        metavar="URL")],
    verbose: VerboseOpt = False,
) -> None:
    """Run MLflow's schema migrations on a widened PostgreSQL database, then widen the new
    experiment_id columns again (one transaction). Use it instead of 'mlflow db upgrade'."""

    def run(_progress):
        from .targets.postgresql import upgrade_widened_schema
        from .targets.server import is_server_url, parse_server_url

        if not is_server_url(target) or parse_server_url(target).dialect != "postgresql":
            raise Fs2sqlError("upgrade-schema is for PostgreSQL databases that fs2sql widened "
                              "(--experiment-ids widen).",
                              hint="Upgrade other databases with: mlflow db upgrade <URL>.")
        before, after, n = upgrade_widened_schema(target)
        typer.echo(f"Upgraded MLflow's schema from {before} to {after}; {n} experiment_id "
                   "columns are BIGINT.")
        return None

    _run(run, quiet=True, verbose=verbose, json_file=None)


def _artifact_options(to, style, maps, workers=8, check_files=True):
    """ArtifactOptions from the flags, or None when no artifact flag was given; a wrong
    combination is a usage error (exit 2)."""
    from .artifacts import ArtifactOptions, parse_root_maps
    from .artifacts.plan import URI_STYLES

    if style not in URI_STYLES:
        raise typer.BadParameter(f"must be proxied or direct, not {style!r}",
                                 param_hint="--artifact-uris")
    if not to and not maps:
        if style != "proxied":
            raise typer.BadParameter("needs --artifacts-to DEST", param_hint="--artifact-uris")
        return None
    try:
        root_maps = parse_root_maps(maps or ())
    except Fs2sqlError as exc:
        raise typer.BadParameter(exc.paragraph(), param_hint="--artifact-root-map") from None
    return ArtifactOptions(to=to, uris=style, root_maps=root_maps, workers=workers,
                           check_files=check_files)


def _source_and_target(source, target, example):
    if example:
        if target is not None or source is None:
            raise typer.BadParameter("with --example give only TARGET", param_hint="TARGET")
        from pathlib import Path

        return str(Path(__file__).with_name("data") / "example-mlruns"), source
    if source is None or target is None:
        raise typer.BadParameter("SOURCE and TARGET are both required (or --example TARGET)",
                                 param_hint="SOURCE TARGET")
    return source, target


def _confirm_replace(target: str) -> bool:
    """Ask on a terminal before replacing an existing file; without one, refuse (no --force)."""
    from .targets.sqlite import describe_sqlite_file, sqlite_path

    try:
        path = sqlite_path(target)
    except Fs2sqlError:
        return False
    if not os.path.isfile(path) or not sys.stdin.isatty():
        return False
    return typer.confirm(
        f"{path} exists ({describe_sqlite_file(path)}). Replace it with the migrated database?",
        default=False, err=True)


def _run(action, *, quiet: bool, verbose: bool, json_file: Optional[str],
         context: tuple = ()) -> None:
    """Run ``action(progress)``; print its report or its error; exit with the code. ``context``
    (command, source, target) names a failed command in its ``--json`` report."""
    from rich.console import Console

    from .progress import NULL_PROGRESS
    from .report import RichProgress, render, summary_line

    err = Console(stderr=True)
    out = Console()
    progress = NULL_PROGRESS if quiet or not err.is_terminal else RichProgress(err)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = action(progress)
    except KeyboardInterrupt as exc:
        err.print("Interrupted: nothing was written (the target is as it was).", markup=False)
        _write_failure_json(json_file, context, exc, EXIT_INTERRUPTED)
        if verbose:
            raise
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Fs2sqlError as exc:
        if verbose:
            err.print_exception()
        err.print(f"Error: {exc.paragraph()}", markup=False, highlight=False, soft_wrap=True)
        _write_failure_json(json_file, context, exc, exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # a bug or an environment problem: still one paragraph
        _write_failure_json(json_file, context, exc, EXIT_FAILED)
        if verbose:
            err.print_exception()
        err.print(f"Error: fs2sql failed unexpectedly ({type(exc).__name__}: {exc}). Nothing was "
                  "written. Run again with --verbose for the traceback, and please report it.",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if report is None:  # upgrade-schema: no report, its one line is printed
        return
    if json_file == "-":
        import json

        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        if json_file:
            report.write_json(json_file)
        if not quiet:
            render(report, out)
    line = summary_line(report) if quiet or json_file == "-" else None
    if line:  # the table is not shown: say on stderr why the exit code is not 0
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _write_failure_json(json_file: Optional[str], context: tuple, exc: BaseException,
                        exit_code: int) -> None:
    """``--json`` gets a report on failures too: ok false, the exit code, the error's text."""
    if not json_file or not context:
        return
    import json

    from .report import failure_report
    from .targets.server import display_target

    command, source, target = context
    report = failure_report(command, source or "", display_target(target or ""), exc, exit_code)
    if json_file == "-":
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    try:
        report.write_json(json_file)
    except OSError as error:  # the paragraph above already explains the failure
        typer.echo(f"(--json {json_file} could not be written: {error.strerror})", err=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# The walk makes millions of small objects (entities, rows) that live a moment and hold no
# cycles; with Python's default first threshold (700) the collector ran ~2,100 times per 20k
# runs and took ~8% of verify's time on the many-runs shape. Collections still run (cycles are
# still freed), 70x less often; peak memory stayed the same (bench/RESULTS.md, twelfth pass).
GC_THRESHOLDS = (50_000, 20, 10)


def main() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    app()


if __name__ == "__main__":
    main()
