#!/usr/bin/env python
"""Write to a database the way an MLflow server on it would, with the MLflow of *this* interpreter.

Run inside a fixture venv (full MLflow: its ``SqlAlchemyStore`` is what ``mlflow server`` runs)::

    python server_writes.py --uri sqlite:////abs/x.db --phase 1|2|3 --out what.json

The database is one ``fs2sql sync`` keeps; this is what a team does on its server between two
syncs, through ``MlflowClient`` (the server's handlers call the same store methods). Synced
entities are found by name (experiments, runs by ``run_name``), whatever their database IDs.
What was written is returned as JSON (``--out``), for the test to account for it:

1. a new experiment (with a tag) holding a run with params, metrics and tags; a run in a synced
   experiment; on a synced run a tag set, a tag deleted and a new metric; another synced run
   renamed (and one the store renames too: a conflict); an experiment tag; registry: a new model
   with a version, an alias moved on a synced model, a new alias.
2. another run in the server's experiment, a synced run renamed (the store KILLs it meanwhile:
   different fields, both kept), the new alias moved.
3. (while a sync writes) a tag and a metric on a synced run, a new experiment; how long each
   call took is in ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
warnings.filterwarnings("ignore")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag, ViewType  # noqa: E402

T2 = 1_700_200_000_000  # explicit timestamps of the server's writes


class ServerWrites:
    def __init__(self, uri: str):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.wrote = {"experiments": [], "runs": [], "run_tags": {}, "deleted_run_tags": {},
                      "metrics": {}, "run_names": {}, "experiment_tags": {},
                      "registered_models": [], "aliases": {}}

    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            raise LookupError(f"no experiment named {name!r} in the database")
        return exp.experiment_id

    def run(self, name: str) -> str:
        exps = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        runs = [r for r in self.client.search_runs(exps, run_view_type=ViewType.ALL,
                                                   max_results=50000)
                if r.info.run_name == name]
        if len(runs) != 1:
            raise LookupError(f"{len(runs)} runs named {name!r} in the database")
        return runs[0].info.run_id

    def new_run(self, exp_id: str, name: str, offset: int) -> str:
        c = self.client
        run = c.create_run(exp_id, start_time=T2 + offset, run_name=name,
                           tags={"made.by": "server"})
        rid = run.info.run_id
        c.log_batch(rid, metrics=[Metric("server_loss", 1.0 / (s + 1), T2 + offset + s, s)
                                  for s in range(5)],
                    params=[Param("where", "server")], tags=[RunTag("k", "v")])
        c.set_terminated(rid, "FINISHED", end_time=T2 + offset + 1000)
        self.wrote["runs"].append(rid)
        return rid

    def phase1(self) -> None:
        c = self.client
        exp = c.create_experiment("server-experiment", tags={"made.by": "server"})
        self.wrote["experiments"].append(exp)
        self.new_run(exp, "server-run-1", 0)
        self.new_run(self.experiment("fixture-ascii"), "server-run-in-synced-experiment", 10)
        main = self.run("run-finished ✓")
        c.set_tag(main, "server.note", "set in the UI")
        self.wrote["run_tags"][main] = {"server.note": "set in the UI"}
        c.delete_tag(main, "crlf")
        self.wrote["deleted_run_tags"][main] = ["crlf"]
        c.log_metric(main, "server_metric", 0.5, timestamp=T2, step=0)
        self.wrote["metrics"][main] = ["server_metric"]
        for old, new in (("run-empty", "renamed on the server"),
                         ("ラン-日本語-中文", "conflict: renamed on the server")):
            rid = self.run(old)
            c.update_run(rid, name=new)
            self.wrote["run_names"][rid] = new
        ascii_exp = self.experiment("fixture-ascii")
        c.set_experiment_tag(ascii_exp, "server.tag", "yes")
        self.wrote["experiment_tags"][ascii_exp] = {"server.tag": "yes"}
        c.create_registered_model("server-model", tags={"made.by": "server"})
        c.create_model_version("server-model", source="s3://bucket/server-model/1")
        self.wrote["registered_models"].append("server-model")
        if self.has_model("fixture-model"):
            c.set_registered_model_alias("fixture-model", "champion", "3")
            c.set_registered_model_alias("fixture-model", "server-alias", "1")
            self.wrote["aliases"]["fixture-model"] = {"champion": "3", "server-alias": "1"}

    def phase2(self) -> None:
        c = self.client
        self.new_run(self.experiment("server-experiment"), "server-run-2", 20)
        rid = self.run("run-failed")
        c.update_run(rid, name="failed, renamed on the server")
        self.wrote["run_names"][rid] = "failed, renamed on the server"
        if self.has_model("fixture-model"):
            c.set_registered_model_alias("fixture-model", "server-alias", "3")
            self.wrote["aliases"]["fixture-model"] = {"server-alias": "3"}

    def phase3(self) -> None:
        c = self.client
        seconds = self.wrote["seconds"] = {}
        rid = self.run("run-finished ✓")
        started = time.monotonic()
        c.set_tag(rid, "during.sync", "yes")
        seconds["set_tag"] = time.monotonic() - started
        self.wrote["run_tags"][rid] = {"during.sync": "yes"}
        started = time.monotonic()
        c.log_metric(rid, "during_sync", 1.0, timestamp=T2 + 1, step=0)
        seconds["log_metric"] = time.monotonic() - started
        self.wrote["metrics"][rid] = ["during_sync"]
        started = time.monotonic()
        self.wrote["experiments"].append(c.create_experiment("during-sync"))
        seconds["create_experiment"] = time.monotonic() - started

    def has_model(self, name: str) -> bool:
        return any(m.name == name for m in self.client.search_registered_models())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--phase", required=True, type=int, choices=(1, 2, 3))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    writes = ServerWrites(args.uri)
    getattr(writes, f"phase{args.phase}")()
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(writes.wrote, fh, indent=1, ensure_ascii=False, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
