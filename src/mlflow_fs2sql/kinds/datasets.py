"""Datasets and dataset inputs: ``<exp>/datasets/<dir>/meta.yaml`` and ``<run>/inputs/<id>/``.

Tables ``datasets``, ``inputs`` (the dataset rows; run <-> logged-model links are in
``logged_models.py``) and ``input_tags``, filled the way ``SqlAlchemyStore._log_inputs_impl``
fills them:

* one ``datasets`` row per (experiment, name, digest) -- the primary key; the YAML's name and
  digest count, not the directory name (``md5(name + digest)`` has no separator, so two
  different datasets could share a directory name; MLflow would reuse the first one's folder);
* one ``inputs`` row ``DATASET -> RUN`` per dataset a run used, ``source_id`` = the dataset's
  ``dataset_uuid``, ``destination_id`` = the run (taken from the run folder: the files'
  ``destination_id`` is a copy of ``source_id``, a FileStore writer bug), ``step`` 0;
* one ``input_tags`` row per entry of the input's ``tags`` (``mlflow.data.context`` ...).

IDs the FileStore does not keep are derived, so migrating twice gives the same rows: MLflow uses
``uuid4().hex``; fs2sql uses ``uuid5`` of the experiment, name and digest (the dataset directory
name repeats across experiments, so it alone is not enough) and of the run and input folder.

An input whose dataset folder is missing is left out, as MLflow's FileStore leaves it out of
``get_run`` ("Failed to find dataset ... Skipping."): the run is migrated as MLflow shows it, and
the input file is listed in the report under "Not migrated". A dataset folder that exists but
cannot be read makes the runs using it unreadable for MLflow too (``get_run`` raises), so such a
run is invalid (skipped with ``--skip-invalid``).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .. import walk as walk_module
from ..errors import InvalidSource
from ..model import Experiment
from ..parse import field_str, is_junk, read_yaml_mapping
from ..rows import TableSpec, owner_value, register_builder, register_tables

# Fixed namespace of fs2sql's derived IDs (never change it: IDs must be stable across releases).
FS2SQL_NAMESPACE = uuid.UUID("6f1d2c3e-8a4b-5c6d-9e0f-1a2b3c4d5e6f")

# FileStore's InputVertexType names (``mlflow/protos/service.proto``).
INPUT_SOURCE_TYPES = ("RUN", "DATASET", "MODEL")

NOT_MIGRATED_MISSING_DATASET = "dataset inputs whose dataset folder is missing (MLflow skips them)"
NOT_MIGRATED_DUPLICATE_INPUT = "dataset inputs repeating a dataset the run already uses"
NOT_MIGRATED_RUN_VERTEX = "run inputs of source_type RUN (MLflow's FileStore ignores them)"


def derived_id(*parts: str) -> str:
    """A stable 32-hex ID for something the FileStore keeps no ID for (JSON: no ambiguity)."""
    return uuid.uuid5(FS2SQL_NAMESPACE, json.dumps(parts, ensure_ascii=False)).hex


def dataset_uuid(experiment_id: int, name: str, digest: str) -> str:
    return derived_id("dataset", str(experiment_id), name, digest)


@dataclass(frozen=True)
class Dataset:
    KIND = "dataset"

    experiment_id: int
    dir_name: str
    name: str
    digest: str
    source_type: str
    source: str
    schema: Optional[str]
    profile: Optional[str]
    path: str

    @property
    def dataset_uuid(self) -> str:
        # From the experiment ID the database holds (renumbered, or joined by sync), so that the
        # same dataset of one database experiment has one ID whichever store brought it in.
        return dataset_uuid(owner_value(self, "experiment_id"), self.name, self.digest)

    @property
    def identity(self) -> str:
        return f"{self.experiment_id}/{self.dir_name}"


@dataclass(frozen=True)
class DatasetInput:
    """A run's use of a dataset (attached to the run)."""

    KIND = "dataset input"

    run_id: str
    input_uuid: str
    experiment_id: int  # the dataset's: its ID is derived from it (``Dataset.dataset_uuid``)
    dataset_name: str
    dataset_digest: str
    tags: Tuple[Tuple[str, str], ...]
    path: str

    @property
    def dataset_uuid(self) -> str:
        return dataset_uuid(owner_value(self, "experiment_id"), self.dataset_name,
                            self.dataset_digest)

    @property
    def identity(self) -> str:
        return f"{self.run_id}/{os.path.basename(self.path)}"


# -- parsing ------------------------------------------------------------------------------------
def parse_dataset(meta_path: str, experiment_id: int, dir_name: str, kind: str = "dataset",
                  entity_id: str = "") -> Dataset:
    """A dataset's meta.yaml (``Dataset.from_dictionary`` needs name, digest, source_type and
    source; schema and profile may be null). ``kind``/``entity_id`` name who is invalid."""
    entity_id = entity_id or f"{experiment_id}/{dir_name}"
    meta = read_yaml_mapping(meta_path, kind, entity_id)

    def text(key: str, required: bool) -> Optional[str]:
        value = field_str(meta, key, meta_path, kind, entity_id)
        if value is None and required:
            raise InvalidSource(
                f"has no '{key}'; MLflow's datasets table requires it (NOT NULL).",
                path=meta_path, kind=kind, entity_id=entity_id)
        return value

    return Dataset(
        experiment_id=experiment_id, dir_name=dir_name, name=text("name", True),
        digest=text("digest", True), source_type=text("source_type", True),
        source=text("source", True), schema=text("schema", False),
        profile=text("profile", False), path=os.path.dirname(meta_path))


def input_tags(meta: Dict[str, Any], path: str, run_id: str) -> Tuple[Tuple[str, str], ...]:
    """The ``tags`` mapping of an input file, as (name, value) text pairs."""
    tags = meta.get("tags")
    if tags is None:
        return ()
    if not isinstance(tags, dict):
        raise InvalidSource(f"field 'tags' should be a mapping but is {tags!r}.", path=path,
                            kind="run", entity_id=run_id)
    out = []
    for key, value in tags.items():
        if value is None or isinstance(value, (dict, list)):
            raise InvalidSource(
                f"input tag {key!r} has the value {value!r}; MLflow stores input tags as text "
                "(input_tags.value is NOT NULL).", path=path, kind="run", entity_id=run_id)
        out.append((str(key), field_str({"v": value}, "v", path, "run", run_id)))
    return tuple(sorted(out))


def read_input_files(walk, run_dir: str, run_id: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(input folder, parsed meta.yaml) of every ``<run>/inputs/<id>``, in name order.

    Shared by the dataset reader here and the model-link reader (``logged_models.py``); the last
    run's result is kept on the walk so the files are parsed once. Raises ``InvalidSource`` for
    the run: MLflow's ``get_run`` fails on an unreadable input file.
    """
    cache = walk.__dict__.setdefault("_fs2sql_input_files", {})
    if run_dir in cache:
        return cache[run_dir]
    folder = os.path.join(run_dir, "inputs")
    found: List[Tuple[str, Dict[str, Any]]] = []
    if os.path.isdir(folder):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if is_junk(entry.name) or not entry.is_dir():
                walk.ignored.append(entry.path)
                continue
            meta_path = os.path.join(entry.path, "meta.yaml")
            meta = read_yaml_mapping(meta_path, "run", run_id)
            source_type = meta.get("source_type")
            if source_type not in INPUT_SOURCE_TYPES:
                raise InvalidSource(
                    f"field 'source_type' is {source_type!r}; MLflow writes one of "
                    f"{', '.join(INPUT_SOURCE_TYPES)} and cannot read this run otherwise.",
                    path=meta_path, kind="run", entity_id=run_id)
            if source_type == "RUN":
                walk.not_migrated.setdefault(NOT_MIGRATED_RUN_VERTEX, []).append(meta_path)
                continue
            if not isinstance(meta.get("source_id"), str) or not meta["source_id"]:
                raise InvalidSource("has no 'source_id'.", path=meta_path, kind="run",
                                    entity_id=run_id)
            found.append((entry.path, meta))
    cache.clear()
    cache[run_dir] = found
    return found


def read_dataset_inputs(walk, run_dir: str, run_id: str,
                        experiment: Experiment) -> Tuple[DatasetInput, ...]:
    """``walk.RUN_READERS`` hook: the run's dataset inputs (``source_type: DATASET``)."""
    datasets_dir = os.path.join(experiment.path, "datasets")
    inputs: List[DatasetInput] = []
    used = set()
    for input_dir, meta in read_input_files(walk, run_dir, run_id):
        if meta["source_type"] != "DATASET":
            continue
        meta_path = os.path.join(input_dir, "meta.yaml")
        dir_name = meta["source_id"]
        dataset_meta = os.path.join(datasets_dir, dir_name, "meta.yaml")
        # MLflow matches the input's source_id against the dataset folder names.
        if os.sep in dir_name or dir_name in (".", "..") or not os.path.isdir(
                os.path.dirname(dataset_meta)):
            walk.not_migrated.setdefault(NOT_MIGRATED_MISSING_DATASET, []).append(meta_path)
            continue
        dataset = parse_dataset(dataset_meta, experiment.experiment_id, dir_name, kind="run",
                                entity_id=run_id)
        if dataset.dataset_uuid in used:
            walk.not_migrated.setdefault(NOT_MIGRATED_DUPLICATE_INPUT, []).append(meta_path)
            continue
        used.add(dataset.dataset_uuid)
        inputs.append(DatasetInput(
            run_id=run_id,
            input_uuid=derived_id("input", run_id, os.path.basename(input_dir)),
            experiment_id=dataset.experiment_id, dataset_name=dataset.name,
            dataset_digest=dataset.digest,
            tags=input_tags(meta, meta_path, run_id),
            path=input_dir))
    return tuple(inputs)


def walk_datasets(walk, experiment: Experiment, folder: str) -> Iterator[object]:
    """``walk.EXPERIMENT_WALKERS["datasets"]``: one ``Dataset`` per folder (or its error)."""
    seen: Dict[Tuple[str, str], str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if is_junk(entry.name) or not entry.is_dir():
            walk.ignored.append(entry.path)
            continue
        try:
            dataset = parse_dataset(os.path.join(entry.path, "meta.yaml"),
                                    experiment.experiment_id, entry.name)
            first = seen.get((dataset.name, dataset.digest))
            if first is not None:
                raise InvalidSource(
                    f"holds the same name {dataset.name!r} and digest {dataset.digest!r} as "
                    f"dataset folder {first}; MLflow's database keeps one dataset per name and "
                    "digest in an experiment.", path=entry.path, kind="dataset",
                    entity_id=dataset.identity,
                    hint="Remove the copy, or run again with --skip-invalid to keep the first.")
            seen[(dataset.name, dataset.digest)] = entry.name
        except InvalidSource as exc:
            yield exc
            continue
        yield dataset


# -- rows ---------------------------------------------------------------------------------------
def _dataset_rows(d: Dataset):
    return {"datasets": [(d.dataset_uuid, d.experiment_id, d.name, d.digest, d.source_type,
                          d.source, d.schema, d.profile)]}


def _dataset_input_rows(i: DatasetInput):
    return {
        "inputs": [(i.input_uuid, "DATASET", i.dataset_uuid, "RUN", i.run_id, 0)],
        "input_tags": [(i.input_uuid, k, v) for k, v in i.tags],
    }


INPUT_COLUMNS = ("input_uuid", "source_type", "source_id", "destination_type", "destination_id",
                 "step")

register_tables(
    TableSpec("datasets", "Datasets",
              ("dataset_uuid", "experiment_id", "name", "digest", "dataset_source_type",
               "dataset_source", "dataset_schema", "dataset_profile"),
              ("experiment_id", "name", "digest")),
    after="experiment_tags",
)
register_tables(
    TableSpec("inputs", "Run inputs/outputs", INPUT_COLUMNS,
              ("source_type", "source_id", "destination_type", "destination_id"),
              defaults=(("step", 0),)),  # schemas before 3.0 have no step: 0 loses nothing
    TableSpec("input_tags", "Input tags", ("input_uuid", "name", "value"), ("input_uuid", "name")),
    after="latest_metrics",
)
register_builder(Dataset, _dataset_rows)
register_builder(DatasetInput, _dataset_input_rows)
walk_module.EXPERIMENT_WALKERS["datasets"] = walk_datasets
walk_module.RUN_READERS.append(read_dataset_inputs)
