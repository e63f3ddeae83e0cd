"""The model registry (``mlruns/models/``): registered models, versions, tags, aliases, prompts.

Source layout (``mlflow/store/model_registry/file_store.py``)::

    models/<name>/meta.yaml                 registered model
    models/<name>/tags/<key>                registered model tags (keys with '/' nest)
    models/<name>/aliases/<alias>           alias -> version number (file content)
    models/<name>/version-<n>/meta.yaml     model version
    models/<name>/version-<n>/tags/<key>    model version tags

Three entity kinds, so ``--skip-invalid`` drops no more than it must:

* ``RegisteredModel`` (with its tags): a model that cannot be read, or does not fit the target,
  is skipped together with its versions and aliases (they would violate the composite foreign
  keys ``(workspace, name)``).
* ``ModelVersion`` (with its tags): skipped alone; aliases pointing to it are skipped with it.
* ``ModelAlias``: an alias whose version is missing or deleted is invalid on its own (MLflow's
  stores cannot resolve it, and ``SqlAlchemyStore.set_registered_model_alias`` would refuse it),
  so only that alias is skipped.

Decisions (MLflow 3.17.2's code is the reference):

* ``workspace`` is always ``'default'`` (table constant), whatever a 3.10+ ``meta.yaml`` says.
* Deleted versions (``current_stage: Deleted_Internal``) are kept as rows, as the SQL store
  keeps them (``SqlAlchemyStore.delete_model_version`` only sets the stage; every read path
  filters ``current_stage != 'Deleted_Internal'``, and ``create_model_version`` numbers new
  versions ``max(version) + 1`` over all rows, deleted ones included). The SQL store also
  *redacts* a version when deleting it (``description``/``user_id``/``status_message`` -> NULL,
  ``source`` -> ``REDACTED-SOURCE-PATH``, ``run_id`` -> ``REDACTED-RUN-ID``, ``run_link`` ->
  ``REDACTED-RUN-LINK``). fs2sql does NOT redact by default (``REDACT_DELETED_VERSIONS``): the
  FileStore still holds those values, no MLflow read path shows them in either store, and a
  migration must not destroy data it cannot give back; the upstream migrator
  (``mlflow/store/fs2db/_registry.py``) copies them verbatim too. ``storage_location`` is not
  redacted by MLflow either. Version tags are kept (the SQL store keeps them on delete).
* Prompts are registered models and versions marked by tags; MLflow 3.17.2's SQL store keeps
  them exactly so (``AbstractStore.create_prompt``/``create_prompt_version`` write the same
  tags through ``create_registered_model``/``create_model_version`` for every store), so the
  tags are copied verbatim. 2.2x prompts carry ``mlflow.prompt.run_ids`` where 3.x writes
  ``mlflow.prompt.associatedRunIds``; no Alembic migration renames it (an upgraded 2.2x SQL
  database keeps the old key) and 3.x's FileStore shows it verbatim too, so it is not mapped.
  ``_mlflow_experiment_ids`` holds experiment IDs, which fs2sql never renumbers.
* Alias files hold the version as text; MLflow's readers accept what ``int()`` accepts
  (``_validate_model_version``), the SQL column is INTEGER. Anything but digits (with optional
  surrounding whitespace) is invalid.
* YAML keys without SQL columns (``model_id``, ``metrics``, ``params``, ``aliases`` snapshot,
  ``deployment_job_*``, ``workspace``) are not migrated: ``SqlModelVersion`` has no column for
  them (its ``to_mlflow_entity`` returns no ``model_id``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from .. import rows, walk
from ..errors import InvalidSource
from ..model import KeyValue, Skipped
from ..parse import (
    decode_text,
    field_int,
    field_str,
    is_junk,
    read_bytes,
    read_key_values,
    read_yaml_mapping,
    walk_key_files,
)

MODEL = "registered model"
VERSION = "model version"
ALIAS = "model alias"

STAGE_DELETED_INTERNAL = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages
VERSION_PREFIX = "version-"
META = "meta.yaml"
TAGS = "tags"
ALIASES = "aliases"

# See the module docstring: MLflow's SQL store redacts deleted versions, fs2sql keeps the values.
REDACT_DELETED_VERSIONS = False
_REDACTED = {"description": None, "user_id": None, "status_message": None,
             "source": "REDACTED-SOURCE-PATH", "run_id": "REDACTED-RUN-ID",
             "run_link": "REDACTED-RUN-LINK"}

_ALIAS_VERSION = re.compile(r"^\s*([0-9]+)\s*$")
_WORKSPACE = (("workspace", "default"),)


@dataclass(frozen=True)
class RegisteredModel:
    KIND: ClassVar[str] = MODEL
    name: str
    creation_time: int | None
    last_updated_time: int | None
    description: str | None
    tags: tuple[KeyValue, ...]
    path: str

    @property
    def identity(self) -> str:
        return self.name


@dataclass(frozen=True)
class ModelVersion:
    KIND: ClassVar[str] = VERSION
    name: str
    version: int
    creation_time: int | None
    last_updated_time: int | None
    description: str | None
    user_id: str | None
    current_stage: str | None
    source: str | None
    storage_location: str | None
    run_id: str | None
    run_link: str | None
    status: str | None
    status_message: str | None
    tags: tuple[KeyValue, ...]
    path: str

    @property
    def identity(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def deleted(self) -> bool:
        return self.current_stage == STAGE_DELETED_INTERNAL


@dataclass(frozen=True)
class ModelAlias:
    KIND: ClassVar[str] = ALIAS
    name: str
    alias: str
    version: int
    path: str

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.alias}"


# -- reading ---------------------------------------------------------------------------------------
def read_model(model_dir: str, ignored) -> RegisteredModel:
    dir_name = os.path.basename(model_dir)
    meta_path = os.path.join(model_dir, META)
    meta = read_yaml_mapping(meta_path, MODEL, dir_name)
    name = field_str(meta, "name", meta_path, MODEL, dir_name)
    if name != dir_name:
        # FileStore finds a model by its folder (get_registered_model) but shows the meta name
        # (search_registered_models): the two views disagree, so which name is real is unknown.
        raise InvalidSource(
            f"says name {name!r} but lies in folder {dir_name!r}; MLflow finds a registered model "
            "by its folder name, so the two must be equal.",
            path=meta_path, kind=MODEL, entity_id=dir_name,
            hint="Rename the folder or fix the name in meta.yaml, or run again with "
            "--skip-invalid to leave this model (with its versions and aliases) out.")
    return RegisteredModel(
        name=name,
        creation_time=field_int(meta, "creation_timestamp", meta_path, MODEL, name),
        last_updated_time=field_int(meta, "last_updated_timestamp", meta_path, MODEL, name),
        description=field_str(meta, "description", meta_path, MODEL, name),
        tags=read_key_values(os.path.join(model_dir, TAGS), MODEL, name, ignored),
        path=model_dir,
    )


def read_version(model: str, version_dir: str, ignored) -> ModelVersion:
    suffix = os.path.basename(version_dir)[len(VERSION_PREFIX):]
    ident = f"{model}/{suffix}"
    meta_path = os.path.join(version_dir, META)

    def bad(what: str) -> InvalidSource:
        return InvalidSource(what, path=meta_path, kind=VERSION, entity_id=ident)

    meta = read_yaml_mapping(meta_path, VERSION, ident)
    number = field_int(meta, "version", meta_path, VERSION, ident)
    if number is None or str(number) != suffix:
        raise bad(f"says version {meta.get('version')!r} but lies in folder "
                  f"'{VERSION_PREFIX}{suffix}'; MLflow finds a version by its folder, so the two "
                  "must be equal.")
    name = field_str(meta, "name", meta_path, VERSION, ident)
    if name != model:
        raise bad(f"says name {name!r} but lies in registered model folder {model!r}.")

    def text(key: str) -> str | None:
        return field_str(meta, key, meta_path, VERSION, ident)

    def number_field(key: str) -> int | None:
        return field_int(meta, key, meta_path, VERSION, ident)

    fields = {key: text(key) for key in (
        "description", "user_id", "current_stage", "source", "storage_location", "run_id",
        "run_link", "status", "status_message")}
    if REDACT_DELETED_VERSIONS and fields["current_stage"] == STAGE_DELETED_INTERNAL:
        fields.update(_REDACTED)
    return ModelVersion(
        name=name,
        version=number,
        creation_time=number_field("creation_timestamp"),
        last_updated_time=number_field("last_updated_timestamp"),
        tags=read_key_values(os.path.join(version_dir, TAGS), VERSION, ident, ignored),
        path=version_dir,
        **fields,
    )


def read_alias(model: str, alias: str, path: str) -> ModelAlias:
    ident = f"{model}@{alias}"
    content = decode_text(read_bytes(path, ALIAS, ident), path, ALIAS, ident)
    match = _ALIAS_VERSION.match(content)
    if match is None:
        raise InvalidSource(
            f"should hold a version number but holds {content[:80]!r}.",
            path=path, kind=ALIAS, entity_id=ident,
            hint="Write the version number into the file or delete it, or run again with "
            "--skip-invalid to leave only this alias out.")
    return ModelAlias(name=model, alias=alias, version=int(match.group(1)), path=path)


def _alias_target_error(a: ModelAlias, versions: dict[int, ModelVersion]) -> str | None:
    """Why an alias cannot be kept (``None``: it points to a live version)."""
    target = versions.get(a.version)
    if target is None:
        return (f"points to version {a.version}, which does not exist; MLflow cannot resolve "
                "the alias (and its SQL store never holds one without its version).")
    if target.deleted:
        return (f"points to version {a.version}, which was deleted (current_stage "
                f"{STAGE_DELETED_INTERNAL}); MLflow removes a version's aliases when deleting it, "
                "so this alias cannot be resolved.")
    return None


# -- the walk --------------------------------------------------------------------------------------
def _version_dirs(model_dir: str, ignored) -> list:
    """``version-*`` folders (as FileStore lists them) ordered by number; stray entries ignored."""
    found = []
    for entry in os.scandir(model_dir):
        if entry.name == META or (entry.name in (TAGS, ALIASES) and entry.is_dir()):
            continue
        if entry.is_dir() and entry.name.startswith(VERSION_PREFIX) and not is_junk(entry.name):
            found.append(entry.path)
        else:
            ignored.append(entry.path)

    def order(path: str):
        suffix = os.path.basename(path)[len(VERSION_PREFIX):]
        return (not suffix.isdigit(), int(suffix) if suffix.isdigit() else 0, suffix)

    return sorted(found, key=order)


def _checked(w, read, *args) -> object:
    """The entity ``read(*args)`` returns, already checked against the target, or its InvalidSource.

    Checked here (``Walk._checked`` checks again) so the walker knows which models and versions
    go in and can leave out what depends on a skipped one.
    """
    try:
        entity = read(*args)
        w.check(entity)
        return entity
    except InvalidSource as exc:
        return exc


def walk_registry(w, folder: str) -> Iterator[object]:
    ignored = w.ignored
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if is_junk(entry.name) or not entry.is_dir():
            ignored.append(entry.path)
            continue
        model_name = entry.name
        version_dirs = _version_dirs(entry.path, ignored)
        alias_files = sorted(walk_key_files(os.path.join(entry.path, ALIASES), ignored))
        model = _checked(w, read_model, entry.path, ignored)
        if isinstance(model, InvalidSource):
            yield model  # strict mode stops here
            reason = f"its registered model {model_name} was skipped"
            for vdir in version_dirs:
                suffix = os.path.basename(vdir)[len(VERSION_PREFIX):]
                w.skipped.append(Skipped(VERSION, f"{model_name}/{suffix}", vdir, reason))
            for alias, path in alias_files:
                w.skipped.append(Skipped(ALIAS, f"{model_name}@{alias}", path, reason))
            continue
        yield model
        versions: dict[int, ModelVersion] = {}
        skipped: set[int] = set()
        for vdir in version_dirs:
            version = _checked(w, read_version, model_name, vdir, ignored)
            if isinstance(version, InvalidSource):
                suffix = os.path.basename(vdir)[len(VERSION_PREFIX):]
                if suffix.isdigit():
                    skipped.add(int(suffix))
                yield version
                continue
            versions[version.version] = version
            yield version
        for alias, path in alias_files:
            entity = _checked(w, read_alias, model_name, alias, path)
            if isinstance(entity, ModelAlias):
                if entity.version in skipped:
                    w.skipped.append(Skipped(ALIAS, entity.identity, path,
                                             f"its model version {model_name}/{entity.version} "
                                             "was skipped"))
                    continue
                why = _alias_target_error(entity, versions)
                if why is not None:
                    entity = InvalidSource(
                        why, path=path, kind=ALIAS, entity_id=entity.identity,
                        hint="Delete the alias file (or point it to an existing version), or run "
                        "again with --skip-invalid to leave only this alias out.")
            yield entity


# -- rows ------------------------------------------------------------------------------------------
def _model_rows(m: RegisteredModel) -> rows.Rows:
    return {
        "registered_models": [(m.name, m.creation_time, m.last_updated_time, m.description)],
        "registered_model_tags": [(k, v, m.name) for k, v in m.tags],
    }


def _version_rows(v: ModelVersion) -> rows.Rows:
    return {
        "model_versions": [(v.name, v.version, v.creation_time, v.last_updated_time,
                            v.description, v.user_id, v.current_stage, v.source,
                            v.storage_location, v.run_id, v.run_link, v.status,
                            v.status_message)],
        "model_version_tags": [(k, value, v.name, v.version) for k, value in v.tags],
    }


def _alias_rows(a: ModelAlias) -> rows.Rows:
    return {"registered_model_aliases": [(a.name, a.alias, a.version)]}


# Registry tables reference no tracking table: appended after everything else, parents first.
rows.register_tables(
    rows.TableSpec("registered_models", "Registered models",
                   ("name", "creation_time", "last_updated_time", "description"),
                   ("name",), _WORKSPACE),
    rows.TableSpec("registered_model_tags", "Registered model tags", ("key", "value", "name"),
                   ("name", "key"), _WORKSPACE),
    rows.TableSpec("model_versions", "Model versions",
                   ("name", "version", "creation_time", "last_updated_time", "description",
                    "user_id", "current_stage", "source", "storage_location", "run_id",
                    "run_link", "status", "status_message"),
                   ("name", "version"), _WORKSPACE),
    rows.TableSpec("model_version_tags", "Model version tags", ("key", "value", "name", "version"),
                   ("name", "version", "key"), _WORKSPACE),
    rows.TableSpec("registered_model_aliases", "Model aliases", ("name", "alias", "version"),
                   ("name", "alias"), _WORKSPACE),
)
rows.register_builder(RegisteredModel, _model_rows)
rows.register_builder(ModelVersion, _version_rows)
rows.register_builder(ModelAlias, _alias_rows)
walk.STORE_WALKERS[walk.REGISTRY] = walk_registry
