"""What moves where: the new URI of every artifact location, and the files behind it.

``UriRewriter`` is a row transform (``rows.add_transform``): it rewrites the URI columns of the
rows an entity becomes, reading the experiment ID the database will hold from the rows
themselves, so it composes with renumbering installed before it. ``ArtifactPlanner`` turns an
entity and its (rewritten) rows into a ``Unit``: one folder of files to copy or check.

The layout is MLflow's own (``SqlAlchemyStore`` and ``FileStore`` in 3.17.2 both use
``append_to_uri_path`` on the experiment's location):

==================  =======================================================  ==============
entity              URI (column)                                             files
==================  =======================================================  ==============
experiment          ``<root>/<experiment id>`` (experiments.artifact_location)  --
run                 ``<exp>/<run id>/artifacts`` (runs.artifact_uri)          the run's files
logged model        ``<exp>/models/<model id>/artifacts`` (logged_models)     the model files
trace               ``<exp>/traces/<trace id>/artifacts`` (trace tag          ``traces.json``
                    ``mlflow.artifactLocation``)
model version       ``source``/``storage_location`` inside a run's or a        (the run's or
                    logged model's artifacts keep their place below it         model's)
==================  =======================================================  ==============

``<root>`` is ``mlflow-artifacts:/`` (proxied, the server's default root) or DEST itself
(direct); ``<experiment id>`` is the database's, so runs MLflow creates later land beside them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import uris

TRACE_ARTIFACT_TAG = "mlflow.artifactLocation"  # mlflow.utils.mlflow_tags.MLFLOW_ARTIFACT_LOCATION
TRACE_DATA_FILE = "traces.json"  # mlflow.tracing.utils.artifact_utils.TRACE_DATA_FILE_NAME
URI_STYLES = ("proxied", "direct")
# A location inside a run's or a logged model's artifacts (for model-version sources).
_IN_RUN = re.compile(r"(?:^|/)(\d+)/([0-9a-f]{32})/artifacts(?:/(.*))?$")
_IN_MODEL = re.compile(r"(?:^|/)(\d+)/models/(m-[0-9a-f]{32})/artifacts(?:/(.*))?$")
MAX_LISTED = 1000


@dataclass(frozen=True)
class ArtifactOptions:
    """``--artifacts-to`` / ``--artifact-uris`` / ``--artifact-root-map`` / ``--no-artifacts``."""

    to: Optional[str] = None  # DEST: a folder or any URI MLflow's artifact repositories take
    uris: str = "proxied"  # proxied: mlflow-artifacts:/...; direct: DEST/...
    root_maps: Tuple[uris.RootMap, ...] = ()
    workers: int = 8
    retries: int = 4  # per file, after the first try
    check_files: bool = True  # verify: compare the files too (--no-artifacts: only the URIs)

    @property
    def active(self) -> bool:
        return bool(self.to or self.root_maps)

    @property
    def dest_uri(self) -> Optional[str]:
        return uris.to_uri(self.to) if self.to else None

    @property
    def new_root(self) -> Optional[str]:
        if not self.to:
            return None
        return uris.PROXIED_ROOT if self.uris == "proxied" else self.dest_uri


@dataclass
class Unit:
    """One folder of artifacts: ``files`` (path below the folder, size, mtime in ns) read from
    ``source_dir`` and found at ``dest`` (a URI MLflow's artifact repositories open).
    ``copy`` is False for URIs only rewritten (``--artifact-root-map``): then the files are
    checked, never written."""

    kind: str
    entity_id: str
    source_dir: str
    dest: str
    files: List[Tuple[str, int, int]]
    copy: bool = True

    @property
    def size(self) -> int:
        return sum(f[1] for f in self.files)


def physical(uri: str, options: ArtifactOptions) -> str:
    """Where a (new) URI's files really are: ``mlflow-artifacts:/x`` is ``DEST/x`` when DEST
    is known (the server maps it so), else it stays (MLflow then asks MLFLOW_TRACKING_URI)."""
    p = uris.place(uri)
    if p.space == "mlflow-artifacts://" and options.to:
        return uris.join(options.dest_uri, p.path.lstrip("/"))
    return uri


class UriRewriter:
    """The row transform: every artifact URI column, as the options say (see module doc)."""

    def __init__(self, options: ArtifactOptions, store_root: str,
                 experiment_ids: Optional[Dict[int, int]] = None):
        from .. import rows as _rows

        self.options = options
        self.store_root = store_root
        # source experiment ID -> database ID, learnt from experiment rows as they pass (model
        # versions carry no experiment); a caller that rewrites without them may pass it.
        self.experiment_ids: Dict[int, int] = dict(experiment_ids or {})
        self._col = {t: {c: i for i, c in enumerate(_rows.SPECS[t].columns)}
                     for t in ("experiments", "runs", "logged_models", "trace_info",
                               "model_versions") if t in _rows.SPECS}

    def owner(self, column: str, value):
        return value  # URIs are never owner keys

    def new_uri(self, old: Optional[str], *layout: str) -> Optional[str]:
        """``old`` rewritten: a root map first, else (local URIs only, with DEST) the server's
        layout below the new root. None means unchanged."""
        if not old:
            return None
        mapped = uris.rewrite(old, self.options.root_maps)
        if mapped is not None:
            return mapped if mapped != old else None
        if self.options.to and uris.is_local(old) and layout:
            return uris.join(self.options.new_root, *layout)
        return None

    def __call__(self, entity, rows):
        out = dict(rows)
        if "experiments" in rows:
            out["experiments"] = [self._experiment(entity, r) for r in rows["experiments"]]
        if "runs" in rows:
            c = self._col["runs"]
            out["runs"] = [self._set(r, c["artifact_uri"], r[c["experiment_id"]],
                                     r[c["run_uuid"]], "artifacts") for r in rows["runs"]]
        if "logged_models" in rows:
            c = self._col["logged_models"]
            out["logged_models"] = [self._set(r, c["artifact_location"], r[c["experiment_id"]],
                                              "models", r[c["model_id"]], "artifacts")
                                    for r in rows["logged_models"]]
        if rows.get("trace_tags") and rows.get("trace_info"):
            c = self._col["trace_info"]
            info = rows["trace_info"][0]
            out["trace_tags"] = [
                self._set(r, 1, info[c["experiment_id"]], "traces", info[c["request_id"]],
                          "artifacts") if r[0] == TRACE_ARTIFACT_TAG else r
                for r in rows["trace_tags"]]
        if "model_versions" in rows:
            c = self._col["model_versions"]
            out["model_versions"] = [self._version(r, c) for r in rows["model_versions"]]
        return out

    def _experiment(self, entity, row):
        db_id = row[0]
        source_id = getattr(entity, "experiment_id", db_id)
        self.experiment_ids[source_id] = db_id
        return self._set(row, self._col["experiments"]["artifact_location"], db_id)

    def _set(self, row, at: int, experiment_id, *rest):
        new = self.new_uri(row[at], str(experiment_id), *rest)
        return row if new is None else row[:at] + (new,) + row[at + 1:]

    def _version(self, row, c):
        for name in ("source", "storage_location"):
            at = c[name]
            new = self.version_uri(row[at])
            if new is not None:
                row = row[:at] + (new,) + row[at + 1:]
        return row

    def version_uri(self, old: Optional[str]) -> Optional[str]:
        """A model version's ``source``/``storage_location``: a root map, or (with DEST) the
        new place of the run or logged model it lies in. ``runs:/`` and ``models:/`` URIs
        resolve through the server and stay."""
        if not old:
            return None
        mapped = uris.rewrite(old, self.options.root_maps)
        if mapped is not None:
            return mapped if mapped != old else None
        if not (self.options.to and uris.is_local(old)):
            return None
        path = uris.place(old).path
        for pattern, middle in ((_IN_RUN, None), (_IN_MODEL, "models")):
            m = pattern.search(path)
            if m and int(m.group(1)) in self.experiment_ids:
                db_id = self.experiment_ids[int(m.group(1))]
                parts = [str(db_id)] + ([middle] if middle else []) + [m.group(2), "artifacts"]
                return uris.join(self.options.new_root, *parts, m.group(3) or "")
        return None


@dataclass
class PlanSummary:
    rewritten: Dict[str, int] = field(default_factory=dict)  # kind -> URIs rewritten
    kept: Dict[str, int] = field(default_factory=dict)  # scheme -> URIs left as they were
    missing: List[str] = field(default_factory=list)  # artifacts absent in the source
    missing_count: int = 0
    examples: List[str] = field(default_factory=list)  # "old -> new", a few
    files: int = 0
    bytes: int = 0

    def count(self, table: Dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def miss(self, message: str) -> None:
        self.missing_count += 1
        if len(self.missing) < MAX_LISTED:
            self.missing.append(message)


class ArtifactPlanner:
    """Entities (with their rows from ``rows.rows_for``) -> ``Unit``s, and what it saw."""

    def __init__(self, options: ArtifactOptions, store_root: str):
        self.options = options
        self.store_root = store_root
        self.base = os.path.dirname(store_root)  # relative URIs were relative to mlruns' parent
        self.summary = PlanSummary()

    def add(self, entity, rows) -> Optional[Unit]:
        """The unit of ``entity`` (None: nothing to copy or check). Counts every URI."""
        from ..kinds.logged_models import LoggedModel
        from ..kinds.registry import ModelVersion
        from ..kinds.traces import Trace
        from ..model import Experiment, Run

        if isinstance(entity, Experiment):
            self._uri("experiment", entity.artifact_location,
                      _value(rows, "experiments", "artifact_location"))
        elif isinstance(entity, Run):
            new = _value(rows, "runs", "artifact_uri")
            return self._unit("run", entity.run_uuid, entity.artifact_uri, new,
                              os.path.join(entity.path, "artifacts"), required=False)
        elif isinstance(entity, LoggedModel):
            new = _value(rows, "logged_models", "artifact_location")
            return self._unit("logged model", entity.model_id, entity.artifact_location, new,
                              os.path.join(entity.path, "artifacts"), required=True)
        elif isinstance(entity, Trace):
            old = dict(entity.tags).get(TRACE_ARTIFACT_TAG)
            new = dict((r[0], r[1]) for r in rows.get("trace_tags", ())).get(TRACE_ARTIFACT_TAG)
            return self._unit("trace", entity.request_id, old, new,
                              os.path.join(entity.path, "artifacts"), required=True,
                              expect=TRACE_DATA_FILE)
        elif isinstance(entity, ModelVersion):
            self._uri("model version", entity.source,
                      _value(rows, "model_versions", "source"))
            self._uri("model version", entity.storage_location,
                      _value(rows, "model_versions", "storage_location"))
            self._check_version_source(entity)
        return None

    def _uri(self, kind: str, old: Optional[str], new: Optional[str]) -> bool:
        if not old:
            return False
        if new != old:
            self.summary.count(self.summary.rewritten, kind)
            if len(self.summary.examples) < 5:
                self.summary.examples.append(f"{kind}: {old} → {new}")
            return True
        self.summary.count(self.summary.kept, uris.scheme_of(old))
        return False

    def _unit(self, kind, entity_id, old, new, in_store, *, required, expect=None):
        if not self._uri(kind, old, new):
            return None
        source = self.source_dir(old, in_store)
        label = f"{kind} {entity_id}"
        if source is None:
            if required:
                self.summary.miss(f"{label}: its artifacts ({old}) are not in the source "
                                  f"(nor in {in_store})")
            return None
        files = list_files(source)
        if expect and not any(rel == expect for rel, _, _ in files):
            self.summary.miss(f"{label}: {os.path.join(source, expect)} is missing in the "
                              "source")
        mapped = uris.rewrite(old, self.options.root_maps) is not None
        unit = Unit(kind, entity_id, source, physical(new, self.options), files,
                    copy=not mapped)
        self.summary.files += len(files)
        self.summary.bytes += unit.size
        return unit

    def source_dir(self, uri: Optional[str], in_store: str) -> Optional[str]:
        """Where an entity's files are on this machine: the folder its URI names, if it
        exists; else the folder beside its metadata in the store (the store was moved or
        copied from another machine); else None. Remote URIs (s3://, mlflow-artifacts:/, ...)
        are never read: their files are not in this store."""
        if not uri or not uris.is_local(uri):
            return None
        path = uris.local_path(uri, self.base)
        if path and os.path.isdir(path):
            return path
        return in_store if os.path.isdir(in_store) else None

    def _check_version_source(self, v) -> None:
        """A local ``source`` that names nothing on this machine or in the store: a warning
        (prompts hold the placeholder ``dummy-source``, which is not a path)."""
        uri = v.source
        if not uri or not (uri.startswith("file:") or uris.place(uri).path.startswith("/")):
            return
        if not uris.is_local(uri):
            return
        path = uris.local_path(uri, self.base)
        if path and os.path.exists(path):
            return
        rel = uris.place(uri).path
        for pattern in (_IN_RUN, _IN_MODEL):
            m = pattern.search(rel)
            if m:
                tail = m.group(0).lstrip("/")
                if any(os.path.exists(os.path.join(self.store_root, t, tail))
                       for t in ("", ".trash")):
                    return
        self.summary.miss(f"model version {v.name}/{v.version}: its source {uri} is not in the "
                          "source")


def _value(rows, table: str, column: str):
    """``column`` of the (single) row of ``table`` an entity became."""
    from ..rows import SPECS

    return rows[table][0][SPECS[table].columns.index(column)]


def list_files(folder: str) -> List[Tuple[str, int, int]]:
    """Every file below ``folder``: (POSIX path below it, size, mtime in ns), sorted. Links to
    files count as files (their content is copied); links to folders are not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # a dangling link or a file removed meanwhile
            rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
            found.append((rel, st.st_size, st.st_mtime_ns))
    found.sort()
    return found
