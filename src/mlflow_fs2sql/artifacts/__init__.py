"""Artifacts for a team server: copy them where the server serves them, rewrite every URI.

``fs2sql migrate … --artifacts-to DEST`` copies the artifacts of every run, logged model and
trace into DEST in the layout ``mlflow server --artifacts-destination DEST`` serves, and
rewrites every artifact URI in the rows (proxied ``mlflow-artifacts:/<exp>/<run>/artifacts`` by
default, or direct ``DEST/<exp>/…``), with the experiment IDs the database holds.
``--artifact-root-map OLD=NEW`` only rewrites (the user moved the files). The database is
published only after every file is in place (and checked, with ``--verify``).

The library API (what ``migrate``/``verify`` use, and what ``sync`` can call on the changed
units only):

``ArtifactOptions``  (``plan.py``) the options: ``to`` (DEST), ``uris`` (``proxied``|``direct``),
    ``root_maps`` (``uris.parse_root_maps(["OLD=NEW", ...])``), ``workers``, ``retries``,
    ``check_files``.
``UriRewriter(options, store_root, experiment_ids=None)``  a row transform
    ``(entity, rows) -> rows``; install it with ``rows.add_transform`` *after* any ID
    transform: it reads the database's experiment ID from the rows it is given. It learns
    source -> database experiment IDs from experiment rows (model versions have none); pass
    ``experiment_ids`` when experiments are not walked again.
``ArtifactPlanner(options, store_root).add(entity, rows) -> Unit | None``  one folder of
    files: ``source_dir``, ``dest`` (a URI), ``files`` [(path, size, mtime_ns)], ``copy``.
    ``planner.summary`` counts rewritten and kept URIs and lists what the source lacks.
``Copier(options, progress=…).run(units) -> CopyStats``  parallel, resumable (size and, in
    folders, mtime), retrying, through ``mlflow.store.artifact``; raises ``ArtifactCopyError``
    listing the files that failed after every other file was copied.
``Checker(options, progress=…).run(units) -> CheckStats``  size and MD5 of every file at its
    destination; ``stats.problems`` lists what differs.
``check_destination(options, store_root)``  refuse DEST inside the store, a missing SDK,
    unreachable buckets -- before anything is written.
``ArtifactStep``  (below) all of it for one migration or verification, with the report.

Nothing here prints; MLflow is imported only when a repository is opened.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from ..progress import NULL_PROGRESS, Progress
from .check import Checker, CheckStats
from .copy import (
    ArtifactCopyError,
    ArtifactError,
    Copier,
    CopyStats,
    Destinations,
    check_destination,
)
from .plan import ArtifactOptions, ArtifactPlanner, Unit, UriRewriter
from .uris import RootMap, parse_root_maps

__all__ = ["ArtifactCopyError", "ArtifactError", "ArtifactOptions", "ArtifactPlanner",
           "ArtifactStep", "CheckStats", "Checker", "Copier", "CopyStats", "RootMap", "Unit",
           "UriRewriter", "check_destination", "parse_root_maps"]


class ArtifactStep:
    """The artifact part of one ``migrate`` or ``verify`` run."""

    def __init__(self, options: ArtifactOptions, store_root: str,
                 factory: Optional[Callable[[str], object]] = None):
        self.options = options
        self.store_root = store_root
        self.rewriter = UriRewriter(options, store_root)
        self.planner = ArtifactPlanner(options, store_root)
        self.destinations = Destinations(options, factory)
        self._factory = factory
        self.units: List[Unit] = []
        self.copied: Optional[CopyStats] = None
        self.checked: Optional[CheckStats] = None

    def check_destination(self) -> None:
        check_destination(self.options, self.store_root, self._factory)

    def install(self) -> Callable[[], None]:
        from ..rows import add_transform

        return add_transform(self.rewriter)

    def observe(self, entity) -> None:
        from ..rows import rows_for

        unit = self.planner.add(entity, rows_for(entity))
        if unit is not None:
            self.units.append(unit)

    def copy(self, progress: Progress = NULL_PROGRESS) -> Optional[CopyStats]:
        if not self.options.to:
            return None  # --artifact-root-map only: the files were moved by the user
        self.copied = Copier(self.options, self.destinations, progress).run(self.units)
        return self.copied

    def check(self, progress: Progress = NULL_PROGRESS) -> CheckStats:
        self.checked = Checker(self.options, self.destinations, progress).run(self.units)
        return self.checked

    def server_flags(self) -> str:
        """What ``mlflow server`` needs to serve the artifacts where they now are."""
        if not self.options.to:
            return ""
        flag = ("--artifacts-destination" if self.options.uris == "proxied"
                else "--default-artifact-root")
        return f" {flag} {_quoted(self.options.dest_uri)}"

    def record(self, report) -> None:
        """The plan, the copy and the check in the report (``report.artifacts``)."""
        s = self.planner.summary
        data: Dict[str, object] = {
            "destination": self.options.dest_uri, "uris": self.options.uris if
            self.options.to else None,
            "root_maps": [f"{m.old}={m.new}" for m in self.options.root_maps],
            "rewritten": dict(s.rewritten), "kept": dict(s.kept),
            "files": s.files, "bytes": s.bytes, "examples": list(s.examples),
            "missing_in_source": list(s.missing), "missing_count": s.missing_count,
            "copy": self.copied.as_dict() if self.copied else None,
            "check": self.checked.as_dict() if self.checked else None,
        }
        report.artifacts = data
        if s.missing_count:
            report.warnings.append(
                f"{s.missing_count} artifact location(s) named in the store have no files in "
                f"the source (not a loss fs2sql caused), e.g. {s.missing[0]}")
        if self.copied and self.copied.vanished:
            report.warnings.append(
                f"{len(self.copied.vanished)} artifact files disappeared from the source while "
                f"fs2sql copied them, e.g. {self.copied.vanished[0]}: is something deleting "
                "from the store?")
        if self.checked:
            for problem in self.checked.problems:
                report.mismatches.append("FAILED: " + problem)
            report.mismatch_count += self.checked.problem_count
        if self.checked and self.checked.unchecked:
            report.notes.append(
                f"The files of {self.checked.unchecked} artifact folders were not checked: their "
                "new mlflow-artifacts:/ URIs resolve only through an MLflow server. Run fs2sql "
                "verify with MLFLOW_TRACKING_URI=http://<your server> to check them through it, "
                "or give --artifacts-to DEST.")
        kept_local = s.kept.get("file", 0)
        if kept_local and self.options.active:
            report.notes.append(
                f"{kept_local} local artifact URIs were left as they are: they name no run's "
                "or logged model's artifacts in this store and match no --artifact-root-map.")


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


def step_for(options: Optional[ArtifactOptions], store_root: str) -> Optional[ArtifactStep]:
    return ArtifactStep(options, store_root) if options is not None and options.active else None
