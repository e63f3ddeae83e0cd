"""Logged models (MLflow >= 3.0) and the run <-> logged-model links.

``<exp>/models/<model_id>/`` (meta.yaml, params/, tags/, metrics/) becomes ``logged_models``,
``logged_model_params``, ``logged_model_tags`` and ``logged_model_metrics``; a run's model inputs
(``<run>/inputs/<id>`` with ``source_type: MODEL``) and outputs (``<run>/outputs/<model_id>``)
become ``inputs`` rows with the direction reversed, as ``SqlAlchemyStore.log_inputs`` /
``log_outputs`` write them: ``RUN_INPUT <run> -> MODEL_INPUT <model>`` (step 0) and
``RUN_OUTPUT <run> -> MODEL_OUTPUT <model>`` (the output's step). The run ID comes from the run
folder, never from the files (their ``destination_id`` is a copy of ``source_id``).

Decisions, each following MLflow 3.17.2's code:

* ``lifecycle_stage`` absent means active (``finalize_logged_model`` rewrites meta.yaml without
  it); ``status`` is the integer ``LoggedModelStatus.to_int`` wrote, stored as is (absent: 2,
  READY, the ``LoggedModel`` default).
* Metric lines are ``ts value step run_id [dataset_name dataset_digest]``; a dataset name may
  contain spaces (the digest is the last field). Values are stored as
  ``SqlAlchemyStore._log_model_metrics`` stores them: ``sanitize_metric_value`` with the NaN flag
  dropped, so NaN becomes 0.0 and +-Inf +-1.7976931348623157e308 (the SQL store cannot return
  NaN/Inf here; MLflow's own SQL store reads back the same). ``dataset_uuid`` stays NULL, as
  MLflow writes it.
* The primary key (model, name, timestamp, step, run) has no value or dataset: identical lines
  are kept once, and of lines that differ only there the first is kept (both counted in a note).
* ``run_id`` references ``runs``: a line from a run that is not migrated (absent, or skipped as
  invalid) makes the model invalid (skipped with ``--skip-invalid``).
* A ``models/<id>`` folder without meta.yaml is not a model for MLflow (``_list_models`` skips
  it); it is listed under "Not migrated". MLflow writes one when a run logs a metric for a model
  of another experiment (the metric lands under the run's experiment).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Tuple

from .. import walk as walk_module
from ..errors import InvalidSource
from ..model import Experiment, KeyValue, Unchanged
from ..parse import (
    MAX_DOUBLE,
    decode_text,
    field_int,
    field_str,
    is_junk,
    read_bytes,
    read_key_values,
    read_yaml_mapping,
    walk_key_files,
)
from ..rows import TableSpec, register_builder, register_tables
from . import datasets as _datasets  # noqa: F401  (its ``inputs`` table comes first)
from .datasets import derived_id, read_input_files

KIND = "logged model"
LIFECYCLE = ("active", "deleted")
STATUS = {"UNSPECIFIED": 0, "PENDING": 1, "READY": 2, "FAILED": 3}

NOT_MIGRATED_NO_META = "logged model folders without meta.yaml (MLflow ignores them)"
NOT_MIGRATED_DUPLICATE_MODEL_INPUT = "model inputs repeating a model the run already lists"
NOT_MIGRATED_RUN_OUTPUT = "run outputs that are not MODEL_OUTPUT (MLflow's FileStore ignores them)"
NOTE_IDENTICAL = ("{n} identical logged-model metric lines were kept once, as MLflow's SQL store "
                  "keeps them.")
NOTE_COLLIDING = ("{n} logged-model metric lines repeat an earlier line's model, name, timestamp, "
                  "step and run with another value or dataset; MLflow's table is keyed on those "
                  "columns only, so the first line was kept.")

# One row of logged_model_metrics without model_id/experiment_id:
# (name, timestamp, step, stored value, run_id, dataset_name, dataset_digest)
ModelMetric = Tuple[str, int, int, float, str, object, object]


@dataclass(frozen=True)
class LoggedModel:
    KIND = KIND

    model_id: str
    experiment_id: int
    name: str
    artifact_location: str
    creation_timestamp_ms: int
    last_updated_timestamp_ms: int
    status: int
    lifecycle_stage: str
    model_type: object
    source_run_id: object
    status_message: object
    params: Tuple[KeyValue, ...]
    tags: Tuple[KeyValue, ...]
    metrics: Tuple[ModelMetric, ...]
    path: str
    identical_metric_lines: int = 0
    colliding_metric_lines: int = 0

    @property
    def identity(self) -> str:
        return self.model_id


@dataclass(frozen=True)
class ModelLink:
    """A run's model input or output (attached to the run)."""

    KIND = "model link"

    run_id: str
    direction: str  # "input" or "output"
    model_id: str
    step: int
    path: str

    @property
    def identity(self) -> str:
        return f"{self.run_id}/{self.direction}/{self.model_id}"


def add_note(walk, template: str, n: int) -> None:
    """Count something for the report's notes (``walk.notes``: template -> count; the report
    shows ``template.format(n=count)``)."""
    if n:
        notes = walk.notes
        notes[template] = notes.get(template, 0) + n


# -- run <-> model links ------------------------------------------------------------------------
def read_model_links(walk, run_dir: str, run_id: str, experiment: Experiment):
    """``walk.RUN_READERS`` hook: the run's model inputs and outputs."""
    links: List[ModelLink] = []
    models_used = set()
    for input_dir, meta in read_input_files(walk, run_dir, run_id):
        if meta["source_type"] != "MODEL":
            continue
        # Read as FileStore._get_model_inputs does: the model is the source_id. Its folder name
        # is md5(model_id + run_id), so a run lists a model once unless a file was copied by
        # hand; SqlAlchemyStore.log_inputs merges repeats into one row (session.merge).
        if meta["source_id"] in models_used:
            walk.not_migrated.setdefault(NOT_MIGRATED_DUPLICATE_MODEL_INPUT, []).append(input_dir)
            continue
        models_used.add(meta["source_id"])
        links.append(ModelLink(run_id, "input", meta["source_id"], 0, input_dir))
    folder = os.path.join(run_dir, "outputs")
    if os.path.isdir(folder):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if is_junk(entry.name) or not entry.is_dir():
                walk.ignored.append(entry.path)
                continue
            link = _read_output(walk, entry.path, run_id)
            if link is not None:
                links.append(link)
    return tuple(links)


def _read_output(walk, output_dir: str, run_id: str):
    meta_path = os.path.join(output_dir, "meta.yaml")
    meta = read_yaml_mapping(meta_path, "run", run_id)
    model_id = os.path.basename(output_dir)

    def bad(what: str) -> InvalidSource:
        return InvalidSource(what, path=meta_path, kind="run", entity_id=run_id)

    if meta.get("destination_type") not in ("MODEL_OUTPUT", "RUN_OUTPUT"):
        raise bad(f"field 'destination_type' is {meta.get('destination_type')!r}; MLflow writes "
                  "MODEL_OUTPUT and cannot read this run otherwise.")
    if meta["destination_type"] != "MODEL_OUTPUT":
        walk.not_migrated.setdefault(NOT_MIGRATED_RUN_OUTPUT, []).append(meta_path)
        return None
    # FileStore.log_outputs names the folder after the model and writes the model ID into both
    # source_id and destination_id; a file that disagrees was changed by hand.
    for key in ("source_id", "destination_id"):
        if meta.get(key) is not None and meta.get(key) != model_id:
            raise bad(f"says {key} {meta.get(key)!r} but lies in folder '{model_id}'.")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise bad(f"field 'step' should be an integer but is {step!r}.")
    return ModelLink(run_id, "output", model_id, step, output_dir)


# -- logged models ------------------------------------------------------------------------------
def walk_logged_models(walk, experiment: Experiment, folder: str) -> Iterator[object]:
    """``walk.EXPERIMENT_WALKERS["models"]``: one ``LoggedModel`` per folder (or its error)."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if is_junk(entry.name) or not entry.is_dir():
            walk.ignored.append(entry.path)
            continue
        if not os.path.exists(os.path.join(entry.path, "meta.yaml")):
            walk.not_migrated.setdefault(NOT_MIGRATED_NO_META, []).append(entry.path)
            continue
        if walk.select(KIND, entry.name, entry.path) is False:
            yield Unchanged(KIND, entry.name, entry.path)
            continue
        try:
            model = read_logged_model(walk, experiment, entry.path)
        except InvalidSource as exc:
            yield walk.pending(exc, KIND, entry.name, entry.path) or exc
            continue
        from .id_checks import note_ids

        note_ids(walk, None, os.path.basename(entry.path))
        add_note(walk, NOTE_IDENTICAL, model.identical_metric_lines)
        add_note(walk, NOTE_COLLIDING, model.colliding_metric_lines)
        yield model


def read_logged_model(walk, experiment: Experiment, model_dir: str) -> LoggedModel:
    mid = os.path.basename(model_dir)
    meta_path = os.path.join(model_dir, "meta.yaml")
    meta = read_yaml_mapping(meta_path, KIND, mid)

    def bad(what: str) -> InvalidSource:
        return InvalidSource(what, path=meta_path, kind=KIND, entity_id=mid)

    if str(meta.get("model_id")) != mid:
        raise bad(f"says model_id {meta.get('model_id')!r} but lies in folder '{mid}'.")
    if str(meta.get("experiment_id")) != str(experiment.experiment_id):
        # FileStore._list_models: "Wrong experiment ID ... Model will be ignored."
        raise bad(f"says experiment_id {meta.get('experiment_id')!r} but lies in experiment "
                  f"folder {experiment.experiment_id}.")

    def required(value, key):
        if value is None:
            raise bad(f"has no '{key}'; MLflow's logged_models table requires it (NOT NULL).")
        return value

    lifecycle = meta.get("lifecycle_stage") or "active"
    if lifecycle not in LIFECYCLE:
        raise bad(f"field 'lifecycle_stage' is {lifecycle!r}; MLflow knows active and deleted.")
    def text(key):
        return field_str(meta, key, meta_path, KIND, mid)

    def number(key):
        return field_int(meta, key, meta_path, KIND, mid)

    metrics, identical, colliding = read_model_metrics(walk, model_dir, mid)
    return LoggedModel(
        model_id=mid,
        experiment_id=experiment.experiment_id,
        name=required(text("name"), "name"),
        artifact_location=required(text("artifact_location"), "artifact_location"),
        creation_timestamp_ms=required(number("creation_timestamp"), "creation_timestamp"),
        last_updated_timestamp_ms=required(number("last_updated_timestamp"),
                                           "last_updated_timestamp"),
        status=_status(meta.get("status"), bad),
        lifecycle_stage=lifecycle,
        model_type=text("model_type"),
        source_run_id=text("source_run_id"),
        status_message=text("status_message"),
        params=read_key_values(os.path.join(model_dir, "params"), KIND, mid, walk.ignored),
        tags=read_key_values(os.path.join(model_dir, "tags"), KIND, mid, walk.ignored),
        metrics=metrics,
        path=model_dir,
        identical_metric_lines=identical,
        colliding_metric_lines=colliding,
    )


def _status(value, bad) -> int:
    """``LoggedModel(status=...)`` takes the int written by ``to_int`` (0-3)."""
    if value is None:
        return STATUS["READY"]
    if isinstance(value, int) and not isinstance(value, bool) and value in STATUS.values():
        return value
    if isinstance(value, str) and value in STATUS:
        return STATUS[value]
    raise bad(f"field 'status' has the unknown value {value!r}; MLflow writes 0-3 "
              "(UNSPECIFIED, PENDING, READY, FAILED).")


def read_model_metrics(walk, model_dir: str, mid: str):
    """(rows, identical lines, colliding lines) of a model's metrics/ folder."""
    rows: List[ModelMetric] = []
    keys = set()
    seen = set()
    identical = colliding = 0
    for name, path in sorted(walk_key_files(os.path.join(model_dir, "metrics"), walk.ignored)):
        for row in parse_model_metric_lines(read_bytes(path, KIND, mid), name, path, mid):
            if not walk.has_run(row[4]):
                raise InvalidSource(
                    f"has a line logged by run {row[4]}, which is not migrated (it is not in the "
                    "store, or it was skipped as invalid); MLflow's logged_model_metrics.run_id "
                    "must name a run in the database.", path=path, kind=KIND, entity_id=mid,
                    hint="Run again with --skip-invalid to leave this logged model out.")
            ident = (row[0], row[1], row[2], row[4])
            if ident in keys:
                if _same_line(row, seen):
                    identical += 1
                else:
                    colliding += 1
                continue
            keys.add(ident)
            seen.add(_line_key(row))
            rows.append(row)
    return tuple(rows), identical, colliding


def _line_key(row: ModelMetric):
    value = row[3]
    return row[:3] + (repr(value),) + row[4:]


def _same_line(row: ModelMetric, seen) -> bool:
    return _line_key(row) in seen


def parse_model_metric_lines(data: bytes, name: str, path: str, mid: str) -> List[ModelMetric]:
    """Lines ``ts value step run_id [dataset_name dataset_digest]``, stripped and split on single
    spaces as FileStore._get_model_metric_from_line does; a dataset name may contain spaces
    (then the digest is the last field and the name everything between)."""
    text = decode_text(data, path, KIND, mid)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise InvalidSource("is an empty metric file (MLflow treats it as malformed).",
                            path=path, kind=KIND, entity_id=mid)
    rows = []
    for number, line in enumerate(lines, 1):
        parts = line.strip().split(" ")
        try:
            if len(parts) != 4 and len(parts) < 6:
                raise ValueError(f"has {len(parts)} fields; MLflow writes 'timestamp value step "
                                 "run_id [dataset_name dataset_digest]'")
            ts, raw, step, run_id = int(parts[0]), float(parts[1]), int(parts[2]), parts[3]
            if not run_id:
                raise ValueError("has no run ID")
        except ValueError as exc:
            detail = str(exc) if "fields" in str(exc) or "run ID" in str(exc) \
                else f"cannot be parsed ({exc})"
            raise InvalidSource(f"line {number} {detail}: {line[:80]!r}.", path=path, kind=KIND,
                                entity_id=mid) from None
        dataset_name = " ".join(parts[4:-1]) if len(parts) >= 6 else None
        dataset_digest = parts[-1] if len(parts) >= 6 else None
        rows.append((name, ts, step, sanitize_model_metric(raw), run_id, dataset_name,
                     dataset_digest))
    return rows


def sanitize_model_metric(value: float) -> float:
    """``SqlAlchemyStore._log_model_metrics``: ``_, value = sanitize_metric_value(v)`` -- NaN is
    stored as 0 (no is_nan column here), +-Inf as +-max double."""
    if math.isnan(value):
        return 0.0
    if math.isinf(value):
        return MAX_DOUBLE if value > 0 else -MAX_DOUBLE
    return value


# -- rows ---------------------------------------------------------------------------------------
def _model_rows(m: LoggedModel):
    mid, eid = m.model_id, m.experiment_id
    return {
        "logged_models": [(mid, eid, m.name, m.artifact_location, m.creation_timestamp_ms,
                           m.last_updated_timestamp_ms, m.status, m.lifecycle_stage,
                           m.model_type, m.source_run_id, m.status_message)],
        "logged_model_params": [(mid, eid, k, v) for k, v in m.params],
        "logged_model_tags": [(mid, eid, k, v) for k, v in m.tags],
        "logged_model_metrics": [(mid, name, ts, step, value, eid, run_id, None, ds_name,
                                  ds_digest)
                                 for name, ts, step, value, run_id, ds_name, ds_digest
                                 in m.metrics],
    }


def _link_rows(link: ModelLink):
    source_type, destination_type = (("RUN_INPUT", "MODEL_INPUT") if link.direction == "input"
                                     else ("RUN_OUTPUT", "MODEL_OUTPUT"))
    input_uuid = derived_id(source_type, link.run_id, link.model_id)
    return {"inputs": [(input_uuid, source_type, link.run_id, destination_type, link.model_id,
                        link.step)]}


register_tables(
    TableSpec("logged_models", "Logged models",
              ("model_id", "experiment_id", "name", "artifact_location", "creation_timestamp_ms",
               "last_updated_timestamp_ms", "status", "lifecycle_stage", "model_type",
               "source_run_id", "status_message"),
              ("model_id",)),
    TableSpec("logged_model_params", "Logged model params",
              ("model_id", "experiment_id", "param_key", "param_value"),
              ("model_id", "param_key")),
    TableSpec("logged_model_tags", "Logged model tags",
              ("model_id", "experiment_id", "tag_key", "tag_value"), ("model_id", "tag_key")),
    TableSpec("logged_model_metrics", "Logged model metrics",
              ("model_id", "metric_name", "metric_timestamp_ms", "metric_step", "metric_value",
               "experiment_id", "run_id", "dataset_uuid", "dataset_name", "dataset_digest"),
              ("model_id", "metric_name", "metric_timestamp_ms", "metric_step", "run_id")),
    after="input_tags",
)
register_builder(LoggedModel, _model_rows)
register_builder(ModelLink, _link_rows)
walk_module.EXPERIMENT_WALKERS["models"] = walk_logged_models
walk_module.RUN_READERS.append(read_model_links)
