#!/usr/bin/env python
"""Dump everything MLflow's own stores see for a tracking/registry URI, as canonical JSON.

Run inside a fixture venv (standalone: only MLflow)::

    python oracle_dump.py --uri file:///abs/mlruns --out dump.json
    python oracle_dump.py --uri sqlite:////abs/copy.db --out dump.json

``file://`` opens MLflow's FileStore, ``sqlite://`` its SqlAlchemyStore (which may write to the
DB: pass a copy; ``oracle.dump`` does). Sections an MLflow release cannot read are listed under
``unsupported`` with the error instead of crashing. Non-finite floats become the strings
``"nan"``, ``"inf"``, ``"-inf"`` everywhere; lists whose order MLflow does not define are sorted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
warnings.filterwarnings("ignore")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402

PAGE = 1000
MAX_DEPTH = 8


# -- canonical conversion -----------------------------------------------------------------------
def canon(obj, depth=0):
    """Plain JSON-able form of an MLflow entity (all public properties), recursively."""
    if depth > MAX_DEPTH:
        return f"<depth limit: {type(obj).__name__}>"
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, dict):
        return {str(k): canon(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [canon(v, depth + 1) for v in obj]
    if hasattr(obj, "value") and type(obj).__module__ == "enum":
        return obj.value
    props = _properties(obj)
    if props is None:
        return str(obj)
    out = {}
    for name in props:
        try:
            out[name] = canon(getattr(obj, name), depth + 1)
        except Exception as exc:  # noqa: BLE001 - a property that cannot be read is data too
            out[name] = f"<error {type(exc).__name__}: {exc}>"
    return out


def _properties(obj):
    import enum

    if isinstance(obj, enum.Enum):
        return None
    import dataclasses

    names = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")] \
        if dataclasses.is_dataclass(obj) else []
    for cls in type(obj).__mro__:
        for name, attr in vars(cls).items():
            if isinstance(attr, property) and not name.startswith("_") and name not in names:
                names.append(name)
    return sorted(names) if names else None


def sort_list(items):
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True, ensure_ascii=False))


def metric_point(m) -> list:
    value = m.value if math.isfinite(m.value) else repr(m.value)
    return [m.timestamp, m.step, value]


def _paged(fetch):
    token, out = None, []
    while True:
        page = fetch(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


# -- sections --------------------------------------------------------------------------------------
class Dumper:
    def __init__(self, uri: str):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.store = self.client._tracking_client.store
        self.registry = self.client._get_registry_client().store
        self.unsupported = {}
        self.out = {
            "mlflow_version": mlflow.__version__,
            "uri_scheme": uri.split(":", 1)[0],
            "stores": {"tracking": type(self.store).__name__,
                       "registry": type(self.registry).__name__},
        }

    def section(self, name, func, *args):
        try:
            self.out[name] = func(*args)
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            self.unsupported[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]

    def dump(self) -> dict:
        self.section("experiments", self.experiments)
        exp_ids = [e["experiment_id"] for e in self.out.get("experiments", [])]
        self.section("runs", self.runs, exp_ids)
        self.section("logged_models", self.logged_models, exp_ids)
        self.section("traces", self.traces, exp_ids)
        self.section("registered_models", self.registered_models)
        self.section("prompts", self.prompts)
        self.out["unsupported"] = self.unsupported
        return self.out

    def experiments(self):
        exps = _paged(lambda t: self.client.search_experiments(
            view_type=ViewType.ALL, max_results=PAGE, page_token=t))
        return sorted((canon(e) for e in exps), key=lambda e: int(e["experiment_id"]))

    def runs(self, exp_ids):
        runs = _paged(lambda t: self.client.search_runs(
            exp_ids, run_view_type=ViewType.ALL, max_results=PAGE, page_token=t))
        return sorted((self.run(r) for r in runs), key=lambda r: r["info"]["run_id"])

    def run(self, run):
        rid = run.info.run_id
        out = {
            "info": canon(run.info),
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "latest_metrics": canon(dict(run.data.metrics)),
            "metric_history": {},
        }
        for key in sorted(run.data.metrics):
            history = self.client.get_metric_history(rid, key)
            out["metric_history"][key] = sorted((metric_point(m) for m in history),
                                                key=lambda p: (p[0], p[1], str(p[2])))
        try:  # get_run (not search) is what the UI uses; inputs/outputs live there
            full = self.client.get_run(rid)
            inputs = getattr(full, "inputs", None)
            out["inputs"] = {
                "dataset_inputs": sort_list([self.dataset_input(d) for d in
                                             getattr(inputs, "dataset_inputs", None) or []]),
                "model_inputs": sort_list(canon(getattr(inputs, "model_inputs", None) or [])),
            }
            outputs = getattr(full, "outputs", None)
            out["outputs"] = {"model_outputs": sort_list(
                canon(getattr(outputs, "model_outputs", None) or []))}
        except Exception as exc:  # noqa: BLE001
            out["inputs"] = f"<error {type(exc).__name__}: {exc}>"
        return out

    @staticmethod
    def dataset_input(d):
        return {"dataset": canon(d.dataset),
                "tags": sorted([t.key, t.value] for t in d.tags)}

    def logged_models(self, exp_ids):
        if not hasattr(self.client, "search_logged_models"):
            raise NotImplementedError("no logged models before MLflow 3.0")
        models = _paged(lambda t: self.client.search_logged_models(
            experiment_ids=exp_ids, max_results=PAGE, page_token=t))
        out = []
        for m in models:
            d = canon(m)
            d["metrics"] = sort_list(d.get("metrics") or [])
            out.append(d)
        return sorted(out, key=lambda m: m["model_id"])

    def traces(self, exp_ids):
        out = []
        for exp_id in exp_ids:
            try:
                traces = _paged(lambda t, _e=exp_id: self.client.search_traces(
                    experiment_ids=[_e], max_results=PAGE, page_token=t))
            except Exception as exc:  # noqa: BLE001 - one unreadable trace fails the search
                self.unsupported[f"traces[experiment_id={exp_id}]"] = \
                    f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                continue
            for trace in traces:
                out.append(self.trace(trace))
        return sorted(out, key=lambda t: t["trace_id"])

    def trace(self, trace):
        info = trace.info
        trace_id = getattr(info, "trace_id", None) or info.request_id
        get_info = getattr(self.store, "get_trace_info", None)
        if get_info is not None:  # the per-trace read path (3.x) also returns assessments
            try:
                info = get_info(trace_id)
            except Exception:  # noqa: BLE001 - keep what search returned
                pass
        d = {"trace_id": trace_id, "info": canon(info)}
        if isinstance(d["info"], dict) and isinstance(d["info"].get("assessments"), list):
            d["info"]["assessments"] = sorted(d["info"]["assessments"],
                                              key=lambda a: str(a.get("assessment_id")))
        try:  # spans come from the artifact store (mlflow.artifactLocation)
            full = self.client.get_trace(trace_id)
            d["span_names"] = sorted(s.name for s in full.data.spans)
        except Exception as exc:  # noqa: BLE001
            d["span_names"] = f"<error {type(exc).__name__}: {exc}>"
        return d

    def registered_models(self):
        models = _paged(lambda t: self.registry.search_registered_models(
            filter_string=None, max_results=PAGE, order_by=None, page_token=t))
        out = []
        for m in models:
            d = canon(m)
            d["latest_versions"] = sorted(d.get("latest_versions") or [],
                                          key=lambda v: int(v.get("version") or 0))
            d["versions"] = self.versions(m.name)
            out.append(d)
        return sorted(out, key=lambda m: m["name"])

    def versions(self, name):
        quoted = name.replace("'", "\\'")
        visible = _paged(lambda t: self.registry.search_model_versions(
            filter_string=f"name='{quoted}'", max_results=PAGE, order_by=None, page_token=t))
        by_version = {int(v.version): canon(v) for v in visible}
        # Deleted versions are hidden from search; ask for each number up to the highest seen.
        for number in range(1, max(by_version, default=0) + 3):
            if number in by_version:
                continue
            try:
                by_version[number] = canon(self.registry.get_model_version(name, str(number)))
                by_version[number]["_hidden_from_search"] = True
            except Exception as exc:  # noqa: BLE001
                if number <= max(by_version, default=0):
                    by_version[number] = {"_error": f"{type(exc).__name__}: {exc}"[:300]}
        return [by_version[k] for k in sorted(by_version)]

    def prompts(self):
        """Prompts: 3.x hides them from registered-model search, so list them separately."""
        # Store-level reads: the fluent load_prompt of 3.x links the prompt to the active
        # experiment, i.e. it writes (tag _mlflow_experiment_ids).
        if hasattr(self.registry, "get_prompt_version"):
            def load(name, version):
                found = self.registry.get_prompt_version(name, version)
                if found is None:
                    raise LookupError(name)
                return found
        else:  # 2.2x
            load = self.client.load_prompt
        if hasattr(self.registry, "search_prompts"):
            names = [p.name for p in _paged(lambda t: self.registry.search_prompts(
                max_results=PAGE, page_token=t))]
            models = {}
        else:  # 2.2x: registered models tagged mlflow.prompt.is_prompt, hidden by default
            found = _paged(lambda t: self.registry.search_registered_models(
                filter_string="tag.`mlflow.prompt.is_prompt` = 'true'", max_results=PAGE,
                order_by=None, page_token=t))
            models = {m.name: m for m in found}
            names = list(models)
        out = []
        for name in sorted(names):
            entry = {"name": name, "versions": []}
            if hasattr(self.registry, "get_prompt"):
                entry["prompt"] = canon(self.registry.get_prompt(name))
            else:
                entry["prompt"] = canon(models[name])
            misses, number = 0, 0
            while misses < 2:  # versions are numbered from 1; deleted ones leave gaps
                number += 1
                try:
                    version = canon(load(name, version=number))
                    if isinstance(version.get("variables"), list):  # built from a set
                        version["variables"] = sorted(version["variables"])
                    entry["versions"].append(version)
                    misses = 0
                except Exception:  # noqa: BLE001 - no such version
                    misses += 1
            out.append(entry)
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = Dumper(args.uri).dump()
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True, ensure_ascii=False)
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
