"""Oracle dumps made comparable, and the three-way merge a synced database must show.

``normalise(dump, five=..., trash=...)`` removes from a dump (``oracle.dump``) exactly the
differences MLflow's two stores make for the same data (each is how MLflow's own code reads;
the oracle tests of the migration cite them one by one):

* metric values: the SQL store cannot hold infinities (``SqlAlchemyStore.sanitize_metric_value``:
  +-1.7976931348623157e308) and keeps identical points once (its primary key); the FileStore
  reads step 0 for lines logged with a dataset (``_get_metric_from_line``), whose real step the
  file and the SQL store hold -- ``five`` names those points, their step is set to 0 on both
  sides;
* logged-model metrics: NaN is 0.0 in SQL (no NaN flag), and the FileStore returns only the
  greatest point per (key, dataset) while SQL returns every row: both reduced the same way;
* registry: alias versions are text in the FileStore and integers in SQL; a version's
  ``model_id``/``params``/``metrics`` exist only in the FileStore; versions in search results
  carry ``aliases`` only in the FileStore;
* assessments: ``Expectation.from_dictionary`` (FileStore) never sets ``valid``;
* experiments in ``.trash`` (``trash``: their IDs) are deleted whatever their ``meta.yaml`` says
  (MLflow <= 2.2 did not update it; fs2sql's documented decision).

``map_ids(dump, mapping)`` changes experiment IDs wherever MLflow shows one: a store's view
into the database's IDs (``renumbered(db_dump)``: from the ``fs2sql.source_experiment_id`` tags),
and removes fs2sql's two experiment tags, which only the database has.

``merge3(base, theirs, mine)`` is what a sync must produce, as MLflow shows it: ``base`` what
the store held at the last sync, ``theirs`` the database before this sync (the server wrote to
it), ``mine`` the store now. Per field: unchanged on one side -> the other side's value; changed
on both to different values -> the database's (``theirs``), listed as a conflict.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Dict, List, Optional, Set, Tuple

from .compare import IGNORED_TOP, _record_id

MAX = 1.7976931348623157e308
SOURCE_ID_TAG = "fs2sql.source_experiment_id"
SOURCE_STORE_TAG = "fs2sql.source_store"
PROMPT_EXPERIMENTS_TAG = "_mlflow_experiment_ids"
VERSION_ONLY_IN_FILESTORE = ("model_id", "params", "metrics", "aliases")
MISSING = "<missing>"


def _number(value):
    return {"inf": MAX, "-inf": -MAX}.get(value, value) if isinstance(value, str) else value


# -- what the store's files say ------------------------------------------------------------------
def five_field_points(mlruns) -> Dict[str, Dict[str, Set[int]]]:
    """{run_id: {metric key: timestamps}} of metric lines with a dataset (5 fields)."""
    out: Dict[str, Dict[str, Set[int]]] = {}
    for base in (str(mlruns), os.path.join(str(mlruns), ".trash")):
        for exp in _experiments(base):
            for run in _subdirs(os.path.join(base, exp)):
                folder = os.path.join(base, exp, run, "metrics")
                for dirpath, _, files in os.walk(folder):
                    for name in files:
                        key = os.path.relpath(os.path.join(dirpath, name), folder)
                        with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                            stamps = {int(line.split()[0]) for line in f
                                      if len(line.split()) == 5}
                        if stamps:
                            out.setdefault(run, {})[key.replace(os.sep, "/")] = stamps
    return out


def trashed(mlruns) -> Set[str]:
    """IDs of the experiments in the store's ``.trash``."""
    return set(_experiments(os.path.join(str(mlruns), ".trash")))


def _subdirs(path: str) -> List[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir())
    except OSError:
        return []


def _experiments(path: str) -> List[str]:
    return [name for name in _subdirs(path) if name.isdigit()]


# -- normalising ---------------------------------------------------------------------------------
def normalise(dump: dict, five: Optional[dict] = None, trash: Optional[Set[str]] = None) -> dict:
    d = {k: copy.deepcopy(v) for k, v in dump.items()
         if k not in IGNORED_TOP and k != "mlflow_version"}
    five = five or {}
    for exp in d.get("experiments", []):
        if trash and str(exp["experiment_id"]) in trash:
            exp["lifecycle_stage"] = "deleted"
    for run in d.get("runs", []):
        _run(run, five.get(run["info"]["run_id"], {}))
    for model in d.get("logged_models", []):
        model["metrics"] = _model_metrics(model.get("metrics") or [])
    for model in d.get("registered_models", []):
        model["aliases"] = {k: str(v) for k, v in (model.get("aliases") or {}).items()}
        for v in (model.get("latest_versions") or []) + (model.get("versions") or []):
            for key in VERSION_ONLY_IN_FILESTORE:
                v.pop(key, None)
    for trace in d.get("traces", []):
        for a in (trace.get("info") or {}).get("assessments") or []:
            if a.get("expectation") is not None:
                a["valid"] = None
    return d


def _run(run: dict, five: Dict[str, Set[int]]) -> None:
    history = {}
    for key, points in run.get("metric_history", {}).items():
        kept = {(ts, 0 if ts in five.get(key, ()) else step, _number(v)) for ts, step, v in points}
        history[key] = sorted((list(p) for p in kept), key=lambda p: (p[0], p[1], str(p[2])))
    run["metric_history"] = history
    run["latest_metrics"] = {k: _number(v) for k, v in run.get("latest_metrics", {}).items()}


def _model_metrics(metrics: list) -> list:
    best: Dict[tuple, dict] = {}
    for m in metrics:
        m = dict(m, value=0.0 if m.get("value") == "nan" else _number(m.get("value")))
        group = (m.get("key"), m.get("dataset_name"), m.get("dataset_digest"))
        rank = (m.get("step"), m.get("timestamp"), m["value"])
        if group not in best or rank > (best[group].get("step"), best[group].get("timestamp"),
                                        best[group]["value"]):
            best[group] = m
    return sorted(best.values(), key=lambda m: json.dumps(m, sort_keys=True))


# -- renumbered experiment IDs -------------------------------------------------------------------
def renumbered(db_dump: dict, source_store: Optional[str] = None) -> Dict[int, int]:
    """{store ID: database ID} from the experiments' ``fs2sql.source_experiment_id`` tags (of
    one store, ``source_store``: its ID in the sync state, when several were merged)."""
    out = {}
    for e in db_dump.get("experiments", []):
        tags = e.get("tags") or {}
        if SOURCE_ID_TAG in tags and source_store in (None, tags.get(SOURCE_STORE_TAG)):
            out[int(tags[SOURCE_ID_TAG])] = int(e["experiment_id"])
    return out


def map_ids(obj, mapping: Dict[int, int]):
    """Experiment IDs changed by ``mapping`` wherever MLflow shows one (the prompt tag
    ``_mlflow_experiment_ids`` too); fs2sql's two experiment tags removed."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "experiment_id" and isinstance(v, (str, int)) and str(v).isdigit() \
                    and int(v) in mapping:
                v = mapping[int(v)] if isinstance(v, int) else str(mapping[int(v)])
            elif k == PROMPT_EXPERIMENTS_TAG and isinstance(v, str):
                v = ",".join(str(mapping.get(int(p), p)) if p.isdigit() else p
                             for p in v.split(","))
            elif k == "tags" and isinstance(v, dict):
                v = {tk: tv for tk, tv in v.items() if tk not in (SOURCE_ID_TAG,
                                                                 SOURCE_STORE_TAG)}
            out[k] = map_ids(v, mapping)
        return out
    if isinstance(obj, list):
        return [map_ids(v, mapping) for v in obj]
    return obj


# -- the three-way merge -------------------------------------------------------------------------
def merge3(base, theirs, mine, path: str = "") -> Tuple[object, List[str]]:
    """(what the database must show, conflicts as JSON paths)."""
    conflicts: List[str] = []
    result = _merge(base, theirs, mine, path, conflicts)
    return result, conflicts


def _merge(b, t, m, path: str, conflicts: List[str]):
    if t == b:
        return m
    if m == b or t == m:
        return t
    if all(isinstance(x, dict) or x == MISSING for x in (b, t, m)):
        b, t, m = ({} if x == MISSING else x for x in (b, t, m))
        out = {}
        for k in sorted(set(b) | set(t) | set(m)):
            v = _merge(b.get(k, MISSING), t.get(k, MISSING), m.get(k, MISSING),
                       f"{path}.{k}", conflicts)
            if v != MISSING:
                out[k] = v
        return out
    if all(isinstance(x, list) or x == MISSING for x in (b, t, m)):
        lists = [[] if x == MISSING else x for x in (b, t, m)]
        keyed = [_by_id(x) for x in lists]
        if all(k is not None for k in keyed):
            out = []
            for k in sorted(set().union(*keyed)):
                v = _merge(*(x.get(k, MISSING) for x in keyed), f"{path}[{k}]", conflicts)
                if v != MISSING:
                    out.append(v)
            return out
    conflicts.append(path)
    return t


def _by_id(items: list):
    ids = [_record_id(x) for x in items]
    if None in ids or len(set(ids)) != len(ids):
        return None if items else {}
    return dict(zip(ids, items))
