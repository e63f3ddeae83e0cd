#!/usr/bin/env python
"""Keep writing to a FileStore made by ``write_store.py``, with the MLflow of *this* interpreter.

Run inside a fixture venv (see ``envs.py``), never imported by fs2sql::

    python edit_store.py --out DIR --phase 1|2|3

``DIR`` is a folder ``write_store.py`` wrote (``DIR/mlruns`` and ``DIR/fixture_manifest.json``,
whose ``ids`` name what it made). Each phase does what a training job and its user keep doing
to a store between two syncs, only through MLflow's own API (``MlflowClient``, fluent tracing,
``mlflow gc``), and appends what it did to ``DIR/edits.json`` (later phases use what earlier
ones made):

1. new runs, metric points appended to a run with a long history, params, tags set and
   deleted, a RUNNING run terminated, runs deleted and restored, runs and experiments renamed,
   an experiment deleted and one restored, a new deleted experiment, experiment tags; registry
   (2.0+): a new model with versions (one deleted), a new version of a synced model, an alias
   moved, tags, a description;
   a new dataset input (2.4+); traces (2.14+): a new trace, tags on an old one; assessments
   (3.2+); logged models (3.0+): a new one, tags, metrics.
2. more points on the long history, the phase-1 run deleted, the deleted experiment restored,
   another rename, the alias moved again, the phase-1 registered model and trace deleted, the
   phase-1 logged model deleted, a run KILLED.
3. ``mlflow gc`` of the run phase 2 deleted (its files go).

A step a release predates is skipped (``skipped`` in the output) when the release is older
than the step's first release; otherwise a failure is fatal. Timestamps are explicit where the
API allows (``T1``, after write_store's ``T0``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
os.environ["MLFLOW_TRUNCATE_LONG_VALUES"] = "false"
os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from packaging.version import Version  # noqa: E402

MLFLOW_VERSION = Version(mlflow.__version__)
T1 = 1_700_100_000_000  # explicit timestamps of the edits (write_store.T0 + ~1 day)


class Editor:
    def __init__(self, out: Path, phase: int):
        self.out = out
        self.mlruns = out / "mlruns"
        self.phase = phase
        manifest = json.loads((out / "fixture_manifest.json").read_text(encoding="utf-8"))
        self.ids = manifest["ids"]
        self.log_path = out / "edits.json"
        self.history = json.loads(self.log_path.read_text(encoding="utf-8")) \
            if self.log_path.is_file() else []
        self.made = {}  # what earlier phases made, by name
        for entry in self.history:
            self.made.update(entry["made"])
        self.done = []
        self.skipped = {}
        self.new = {}
        uri = self.mlruns.resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    @contextmanager
    def step(self, name: str, since: str | None = None):
        try:
            yield
            self.done.append(name)
        except Exception as exc:  # noqa: BLE001 - classified below
            if since is not None and MLFLOW_VERSION < Version(since):
                self.skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            else:
                traceback.print_exc()
                raise SystemExit(f"edit {name!r} failed on MLflow {MLFLOW_VERSION}") from None

    def run_id(self, name: str) -> str:
        return self.made.get(name) or self.ids["runs"][name]

    def exp_id(self, name: str) -> str:
        return self.made.get(name) or self.ids["experiments"][name]

    def metric_steps(self, run_id: str, key: str) -> int:
        return len(self.client.get_metric_history(run_id, key))

    # -- phase 1 --------------------------------------------------------------------------------
    def phase1(self) -> None:
        c = self.client
        main = self.run_id("run-finished ✓")
        ascii_exp = self.exp_id("fixture-ascii")
        with self.step("new run"):
            run = c.create_run(ascii_exp, start_time=T1, tags={"phase": "1"})
            rid = run.info.run_id
            c.log_batch(rid, metrics=[Metric("acc", 0.5 + s / 100, T1 + s, s) for s in range(10)],
                        params=[Param("lr", "0.02"), Param("phase", "1")],
                        tags=[RunTag("note", "new in phase 1")])
            c.set_terminated(rid, "FINISHED", end_time=T1 + 60_000)
            self.new["run-phase-1"] = rid
        with self.step("metric points appended to a long history"):
            start = self.metric_steps(main, "loss")
            c.log_batch(main, metrics=[Metric("loss", 1.0 / (s + 1), T1 + 1000 * s, s)
                                       for s in range(start, start + 50)])
        with self.step("param added"):
            c.log_param(main, "added_later", "yes")
        with self.step("tags set and deleted"):
            c.set_tag(main, "team/owner/name", "bob")
            c.set_tag(main, "phase", "1")
            c.delete_tag(main, "empty")
        with self.step("RUNNING run terminated"):
            c.set_terminated(self.run_id("run-running ⏳"), "FINISHED", end_time=T1 + 5_000)
        with self.step("run deleted"):
            c.delete_run(self.run_id("run-killed"))
        with self.step("run restored"):
            c.restore_run(self.run_id("run-deleted"))
        with self.step("run renamed"):
            c.update_run(self.run_id("ラン-日本語-中文"), name="renamed-run ✓")
        with self.step("experiment renamed"):
            c.rename_experiment(self.exp_id("emoji-🚀-experiment"), "emoji-renamed-🚀")
        with self.step("experiment tags set and deleted"):
            c.set_experiment_tag(ascii_exp, "phase", "1")
        with self.step("experiment tag deleted", since="3.0"):
            c.delete_experiment_tag(ascii_exp, "empty")
        with self.step("experiment restored"):
            c.restore_experiment(self.exp_id("fixture-deleted"))
        with self.step("experiment deleted"):
            c.delete_experiment(self.exp_id("実験-日本語-中文"))
        with self.step("new deleted experiment"):
            exp = c.create_experiment("deleted-in-phase-1", tags={"gone": "soon"})
            run = c.create_run(exp, start_time=T1 + 10)
            c.log_param(run.info.run_id, "p", "x")
            c.set_terminated(run.info.run_id, "FINISHED", end_time=T1 + 20)
            c.delete_experiment(exp)
            self.new["deleted-in-phase-1"] = exp
        with self.step("dataset input", since="2.4"):
            self.dataset_input(self.new["run-phase-1"])
        with self.step("registry", since="2.0"):
            self.registry1(main)
        with self.step("traces", since="2.14"):
            self.traces1(ascii_exp)
        with self.step("assessments", since="3.2"):
            self.assessments1()
        with self.step("logged models", since="3.0"):
            self.logged_models1(ascii_exp, self.new["run-phase-1"])

    def dataset_input(self, rid: str) -> None:
        import pandas as pd

        df = pd.DataFrame({"x": [10, 20], "label": ["later", "ü"]})
        ds = mlflow.data.from_pandas(df, source="https://example.com/data/later.csv",
                                     name="dataset-later")
        with mlflow.start_run(run_id=rid):
            mlflow.log_input(ds, context="training", tags={"phase": "1"})
        c = self.client
        c.set_terminated(rid, "FINISHED", end_time=T1 + 60_000)  # start_run re-opened it

    def registry1(self, main: str) -> None:
        c = self.client
        source = c.get_run(main).info.artifact_uri
        c.create_registered_model("model-phase-1", tags={"phase": "1"}, description="later")
        for n in (1, 2, 3):
            c.create_model_version("model-phase-1", source=f"{source}/later-{n}", run_id=main,
                                   tags={"n": str(n)})
        c.delete_model_version("model-phase-1", "2")
        self.new["model-phase-1"] = "model-phase-1"
        name = "fixture-model"
        new = c.create_model_version(name, source=f"{source}/model-new", run_id=main)
        self.new["fixture-model new version"] = new.version
        c.set_registered_model_alias(name, "challenger", "1")
        c.set_registered_model_tag(name, "phase", "1")
        c.delete_registered_model_tag(name, "crlf")
        c.set_model_version_tag(name, "1", "phase", "1")
        c.update_model_version(name, "1", description="described later")

    def traces1(self, exp_id: str) -> None:
        c = self.client
        mlflow.set_experiment(experiment_id=exp_id)

        @mlflow.trace(name="later")
        def later(x):
            mlflow.update_current_trace(tags={"phase": "1"})
            return x * 2

        later(21)
        tid = mlflow.get_last_active_trace_id() if hasattr(mlflow, "get_last_active_trace_id") \
            else mlflow.get_last_active_trace().info.request_id
        self.new["trace-phase-1"] = tid
        old = self.ids["traces"][0]
        c.set_trace_tag(old, "phase", "1")
        c.delete_trace_tag(old, "env")

    def assessments1(self) -> None:
        from mlflow.entities import AssessmentSource

        human = AssessmentSource(source_type="HUMAN", source_id="carol@example.com")
        mlflow.log_feedback(trace_id=self.ids["traces"][0], name="later_quality", value=0.75,
                            source=human, rationale="added in phase 1")
        mlflow.log_expectation(trace_id=self.new["trace-phase-1"], name="expected", value="42",
                               source=human)

    def logged_models1(self, exp_id: str, rid: str) -> None:
        from mlflow.entities import LoggedModelStatus

        c = self.client
        model = c.create_logged_model(exp_id, name="logged-later", source_run_id=rid,
                                      tags={"phase": "1"}, params={"depth": "3"})
        c.log_metric(rid, "later_model_metric", 0.25, timestamp=T1 + 30, step=1,
                     model_id=model.model_id)
        c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self.new["logged-model-phase-1"] = model.model_id
        old = self.ids["logged_models"][0]
        c.set_logged_model_tags(old, {"phase": "1"})
        c.delete_logged_model_tag(old, "stage")

    # -- phase 2 --------------------------------------------------------------------------------
    def phase2(self) -> None:
        c = self.client
        main = self.run_id("run-finished ✓")
        with self.step("metric points appended again"):
            start = self.metric_steps(main, "loss")
            for s in range(start, start + 5):  # one line at a time, as a training loop does
                c.log_metric(main, "loss", 1.0 / (s + 1), timestamp=T1 + 1000 * s, step=s)
        with self.step("phase-1 run deleted"):
            c.delete_run(self.run_id("run-phase-1"))
        with self.step("run KILLED"):
            c.update_run(self.run_id("run-failed"), status="KILLED")
        with self.step("experiment restored"):
            c.restore_experiment(self.exp_id("実験-日本語-中文"))
        with self.step("experiment renamed again"):
            c.rename_experiment(self.exp_id("fixture-deleted"), "restored-and-renamed")
        with self.step("tag changed again"):
            c.set_tag(main, "phase", "2")
        with self.step("registry", since="2.0"):
            c.set_registered_model_alias("fixture-model", "challenger",
                                         self.made["fixture-model new version"])
            c.delete_registered_model("model-phase-1")
        with self.step("trace deleted", since="2.14"):
            import inspect

            ids = "trace_ids" if "trace_ids" in inspect.signature(c.delete_traces).parameters \
                else "request_ids"  # 2.x
            c.delete_traces(self.exp_id("fixture-ascii"), **{ids: [self.made["trace-phase-1"]]})
        with self.step("logged model deleted", since="3.0"):
            c.delete_logged_model(self.made["logged-model-phase-1"])

    # -- phase 3 --------------------------------------------------------------------------------
    def phase3(self) -> None:
        with self.step("gc of the deleted run"):
            proc = subprocess.run(
                [str(Path(sys.executable).parent / "mlflow"), "gc", "--backend-store-uri",
                 self.uri, "--run-ids", self.run_id("run-phase-1")], capture_output=True, text=True,
                env=dict(os.environ), cwd=self.out)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])

    def run(self) -> dict:
        started = time.time()
        getattr(self, f"phase{self.phase}")()
        entry = {"phase": self.phase, "mlflow_version": mlflow.__version__, "done": self.done,
                 "skipped": self.skipped, "made": self.new,
                 "seconds": round(time.time() - started, 1)}
        self.history.append(entry)
        self.log_path.write_text(json.dumps(self.history, indent=1, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
        return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", required=True, type=Path, help="the folder write_store wrote")
    parser.add_argument("--phase", required=True, type=int, choices=(1, 2, 3))
    args = parser.parse_args(argv)
    entry = Editor(args.out, args.phase).run()
    print(json.dumps(entry, ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
