#!/usr/bin/env python
"""Write an MLflow FileStore with the MLflow installed in *this* interpreter.

Run inside a fixture venv (see ``envs.py``), never imported by fs2sql::

    python write_store.py --size small|full|edge --out DIR

Writes ``DIR/mlruns`` (tracking + registry) and ``DIR/fixture_manifest.json``, then checks
the files on disk against the manifest and exits non-zero if anything asked for is missing.

Standalone on purpose (only MLflow, pandas, PyYAML): it runs in venvs without fs2sql.
Every feature is wrapped: a failure in a release older than the feature's first release is
recorded as skipped; a failure in a release that should support it is fatal.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

# Must be set before MLflow is imported.
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow >= 3.13 refuses FileStore otherwise
os.environ["MLFLOW_TRUNCATE_LONG_VALUES"] = "false"  # fail instead of silently truncating
os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import mlflow  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from packaging.version import Version  # noqa: E402

MLFLOW_VERSION = Version(mlflow.__version__)
T0 = 1_700_000_000_000  # base epoch ms for every explicit timestamp

SIZES = {
    "small": dict(named_exps=3, loss_steps=20, datasets=1, traces=1, logged_models=1,
                  lm_params=2, lm_metrics=2, reg_models=1, versions=3, prompts=1),
    "full": dict(named_exps=5, loss_steps=1000, datasets=3, traces=3, logged_models=2,
                 lm_params=5, lm_metrics=5, reg_models=3, versions=5, prompts=3),
    "edge": dict(named_exps=1, loss_steps=3, datasets=0, traces=1, logged_models=0,
                 lm_params=0, lm_metrics=0, reg_models=1, versions=1, prompts=0),
}
EXP_NAMES = ["fixture-ascii", "実験-日本語-中文", "emoji-🚀-experiment", "fixture-extra-4",
             "fixture-extra-5"]
RUN_STATUS_CODES = {"RUNNING": 1, "SCHEDULED": 2, "FINISHED": 3, "FAILED": 4, "KILLED": 5}
try:  # MLflow 1.x allows 500-char params and 5000-char tags; 2.x and 3.x 6000 and 8000
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
except ImportError:  # pragma: no cover - every release the fixtures use has them
    MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH = 6000, 8000
# exactly MAX_PARAM_VAL_LENGTH chars (6000 from 2.x on)
LONG_PARAM = ("p" * 59 + "\n") * (MAX_PARAM_VAL_LENGTH // 60) + "p" * (MAX_PARAM_VAL_LENGTH % 60)
# 7891 chars from 2.x on (4987 on 1.x): just under the tag limit
LONG_NOTE = "# Note\n" + "note text ✓ " * min(657, (MAX_TAG_VAL_LENGTH - 8) // 12)
EDGE_LEN = 10_000  # over every 8000-char SQL column


class Fixture:
    """Writes the store and records what it created (counts) and what it skipped."""

    def __init__(self, root: Path, size: str):
        self.root = root
        self.mlruns = root / "mlruns"
        self.size = size
        self.cfg = SIZES[size]
        self.counts: Counter = Counter()
        self.skipped: dict = {}
        self.notes: list = []
        self.ids: dict = {"experiments": {}, "runs": {}, "traces": [], "logged_models": []}
        uri = self.mlruns.resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # -- bookkeeping -------------------------------------------------------------------------
    @contextmanager
    def feature(self, name: str, since: str | None = None):
        """Run a feature; skip with a note if this MLflow predates it, else fail loudly."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - we classify below
            if since is not None and MLFLOW_VERSION < Version(since):
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                self.skipped[name] = msg
                print(f"[skip] {name} (needs MLflow >= {since}): {msg}", file=sys.stderr)
            else:
                traceback.print_exc()
                raise SystemExit(f"feature {name!r} failed on MLflow {MLFLOW_VERSION}") from None

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        print(f"[skip] {name}: {why}", file=sys.stderr)

    # -- experiments and runs ----------------------------------------------------------------
    def experiments(self) -> list:
        ids = ["0"]
        self.ids["experiments"]["Default"] = "0"
        for i in range(self.cfg["named_exps"]):
            name = EXP_NAMES[i]
            tags = {"index": str(i)}
            if i == 0:
                tags.update({"project": "fs2sql", "a/b/c": "nested key", "crlf": "line1\r\nline2",
                             "unicode": "値 ✓ 🚀", "empty": ""})
            exp_id = self.client.create_experiment(name, tags=tags)
            self.ids["experiments"][name] = exp_id
            self.counts["experiments_active"] += 1
            self.counts["experiment_tags"] += len(tags)
            ids.append(exp_id)
        self.counts["experiments_active"] += 1  # Default (0) is created by the store itself
        return ids

    def create_run(self, exp_id, name, offset, tags=None):
        run = self.client.create_run(exp_id, start_time=T0 + offset * 60_000, tags=tags or {},
                                     run_name=name)
        rid = run.info.run_id
        self.ids["runs"][name] = rid
        self.counts["runs"] += 1
        self.counts["run_tags_user"] += len(tags or {})
        return rid

    def end_run(self, rid, status, offset):
        self.client.set_terminated(rid, status, end_time=T0 + offset * 60_000 + 30_000)

    def log_metric_lines(self, rid, metrics):
        """log_batch in chunks (FileStore appends one line per Metric, duplicates included)."""
        for i in range(0, len(metrics), 500):
            self.client.log_batch(rid, metrics=metrics[i:i + 500])
        self.counts["run_metric_lines"] += len(metrics)

    def main_run(self, exp_id) -> str:
        rid = self.create_run(exp_id, "run-finished ✓", 1)
        params = [Param("lr", "0.01"), Param("unicode_value", "値 ü ✓ 🚀"),
                  Param("long_6000", LONG_PARAM), Param("crlf", "a\r\nb"), Param("empty", ""),
                  Param("nested/param/key", "x")]
        tags = [RunTag("team/owner/name", "alice"), RunTag("crlf", "line1\r\nline2"),
                RunTag("empty", ""), RunTag("mlflow.note.content", LONG_NOTE),
                RunTag("unicode", "タグ ✓ 🚀")]
        self.client.log_batch(rid, params=params, tags=tags)
        self.counts["params"] += len(params)
        self.counts["run_tags_user"] += len(tags)
        with self.feature("unicode_param_key"):
            self.client.log_param(rid, "名前", "value")
            self.counts["params"] += 1
        steps = self.cfg["loss_steps"]
        loss = [Metric("loss", 1.0 / (s + 1), T0 + 1000 * s, s) for s in range(steps)]
        special = [Metric("special", v, T0 + 10 * i, i) for i, v in enumerate(
            [float("nan"), float("inf"), float("-inf"), -1.5, 1e-300, 0.0, -0.0])]
        dup = Metric("dup", 0.5, T0 + 5, 3)
        same_step = [Metric("same_step", 1.0, T0 + 7, 5), Metric("same_step", 2.0, T0 + 7, 5),
                     Metric("same_step", 3.0, T0 + 8, 5)]
        nan_last = [Metric("nan_last", 0.7, T0 + 1, 0), Metric("nan_last", float("nan"), T0 + 2, 1)]
        self.log_metric_lines(rid, loss + special + [dup, dup] + same_step + nan_last
                              + [Metric("eval/accuracy", 0.93, T0 + 9, 0)])
        self.client.log_metric(rid, "no_step", 42.0, timestamp=T0 + 11)  # step defaults to 0
        self.counts["run_metric_lines"] += 1
        self.counts["metric_keys"] += 7
        return rid

    def status_runs(self, exp_id) -> None:
        for offset, (name, status) in enumerate(
            [("run-failed", "FAILED"), ("run-killed", "KILLED"), ("run-running ⏳", None)], start=2
        ):
            rid = self.create_run(exp_id, name, offset, tags={"kind": "status"})
            self.client.log_param(rid, "status_param", name)
            self.counts["params"] += 1
            self.log_metric_lines(rid, [Metric("m", float(offset), T0 + offset, 0)])
            self.counts["metric_keys"] += 1
            if status:  # RUNNING is never ended
                self.end_run(rid, status, offset)
        rid = self.create_run(exp_id, "run-deleted", 5)
        self.client.log_param(rid, "p", "deleted")
        self.counts["params"] += 1
        self.end_run(rid, "FINISHED", 5)
        self.client.delete_run(rid)
        self.counts["runs_deleted"] += 1
        rid = self.create_run(exp_id, "run-empty", 6)
        self.end_run(rid, "FINISHED", 6)

    def other_runs(self, exp_ids) -> None:
        rid = self.create_run("0", "run-in-default", 7)
        self.client.log_param(rid, "where", "default experiment")
        self.counts["params"] += 1
        self.end_run(rid, "FINISHED", 7)
        names = {1: "ラン-日本語-中文", 2: "🚀-rocket-run"}
        for i, exp_id in enumerate(exp_ids[2:], start=1):
            rid = self.create_run(exp_id, names.get(i, f"run-exp-{i}"), 7 + i)
            self.client.log_param(rid, "exp_index", str(i))
            self.counts["params"] += 1
            self.log_metric_lines(rid, [Metric("score", i / 10, T0 + s, s) for s in range(3)])
            self.counts["metric_keys"] += 1
            self.end_run(rid, "FINISHED", 7 + i)

    def deleted_experiment(self) -> None:
        exp_id = self.client.create_experiment("fixture-deleted", tags={"gone": "yes"})
        self.ids["experiments"]["fixture-deleted"] = exp_id
        self.counts["experiment_tags"] += 1
        rid = self.create_run(exp_id, "run-in-deleted-experiment", 20)
        self.client.log_param(rid, "p", "in trash")
        self.counts["params"] += 1
        self.log_metric_lines(rid, [Metric("m", 1.0, T0, 0)])
        self.counts["metric_keys"] += 1
        self.end_run(rid, "FINISHED", 20)
        self.client.delete_experiment(exp_id)  # since 2.3 this also marks its runs deleted
        self.counts["experiments_deleted"] += 1
        self.counts["runs_deleted"] += MLFLOW_VERSION >= Version("2.3")  # 1.x leaves them active

    # -- datasets, logged models -------------------------------------------------------------
    def datasets(self, exp_id, rid) -> None:
        import pandas as pd

        for i in range(self.cfg["datasets"]):
            df = pd.DataFrame({"x": [1, 2, 3, i], "y": [0.5, 1.5, 2.5, float(i)],
                               "label": ["a", "b", "ü", "🚀"]})
            ds = mlflow.data.from_pandas(df, source=f"https://example.com/data/table-{i}.csv", name=f"dataset-{i}",
                                         targets="y")
            context = "training" if i % 2 == 0 else "eval"
            with mlflow.start_run(run_id=rid):
                mlflow.log_input(ds, context=context, tags={"split": context, "index": str(i)})
            self.counts["datasets"] += 1
            self.counts["dataset_inputs"] += 1
            self.counts["dataset_input_tags_user"] += 2
            self.ds = ds

    def metric_with_dataset(self, rid) -> None:
        ds = getattr(self, "ds", None)
        if ds is None:
            return
        self.client.log_metric(rid, "eval_with_dataset", 0.91, timestamp=T0 + 12, step=4,
                               dataset_name=ds.name, dataset_digest=ds.digest)
        self.counts["run_metric_lines"] += 1
        self.counts["metric_keys"] += 1

    def logged_models(self, exp_id, rid) -> None:
        from mlflow.entities import LoggedModelInput, LoggedModelOutput, LoggedModelStatus

        for i in range(self.cfg["logged_models"]):
            params = {f"param_{k}": f"value {k} ✓" for k in range(self.cfg["lm_params"])}
            model = self.client.create_logged_model(
                exp_id, name=f"logged-model-{i}", source_run_id=rid if i == 0 else None,
                tags={"stage": "dev", "team/owner": "alice"}, params=params,
                model_type="agent" if i == 0 else None)
            mid = model.model_id
            self.ids["logged_models"].append(mid)
            for k in range(self.cfg["lm_metrics"]):
                value = [0.9, float("nan"), float("inf"), -2.0, 1e-300][k % 5]
                self.client.log_metric(rid, f"model{i}_metric_{k}", value, timestamp=T0 + 100 + k,
                                       step=k, model_id=mid)
                self.counts["run_metric_lines"] += 1
                self.counts["metric_keys"] += 1
            self.client.set_logged_model_tags(mid, {"late": "tag"})
            self.client.finalize_logged_model(mid, LoggedModelStatus.READY)
            self.counts["logged_models"] += 1
            self.counts["logged_model_params"] += len(params)
            self.counts["logged_model_metrics"] += self.cfg["lm_metrics"]
            self.client.log_inputs(rid, models=[LoggedModelInput(mid)])
            self.counts["model_inputs"] += 1
            self.client.log_outputs(rid, [LoggedModelOutput(mid, step=i + 1)])
            self.counts["model_outputs"] += 1

    # -- traces and assessments ----------------------------------------------------------------
    def traces(self, exp_id, rid) -> None:
        mlflow.set_experiment(experiment_id=exp_id)
        has_metadata = "metadata" in inspect.signature(mlflow.update_current_trace).parameters

        @mlflow.trace(name="add_numbers")
        def add(x, y, i):
            with mlflow.start_span(name="inner ✓") as span:
                span.set_inputs({"x": x})
                span.set_outputs({"double": 2 * x})
            kwargs = {"tags": {"env": "test", "team.owner": "alice", "crlf": "a\r\nb"}}
            if has_metadata:
                kwargs["metadata"] = {"fixture.meta": "v1", "fixture.unicode": "値 🚀",
                                      "fixture.index": str(i)}
            mlflow.update_current_trace(**kwargs)
            return x + y

        for i in range(self.cfg["traces"]):
            if i == 0:
                with mlflow.start_run(run_id=rid):  # links the trace to a run (mlflow.sourceRun)
                    add(i, 3, i)
            else:
                add(i, 3, i)
            tid = self._last_trace_id()
            self.client.set_trace_tag(tid, "post_hoc", "yes")
            self.ids["traces"].append(tid)
            self.counts["traces"] += 1
            self.counts["trace_tags_user"] += 4
            self.counts["trace_metadata_user"] += 3 if has_metadata else 0
        if not has_metadata:
            self.skip("trace_metadata_user", "update_current_trace has no metadata argument")

        @mlflow.trace
        def failing():
            raise ValueError("boom")

        try:
            failing()
        except ValueError:
            pass
        self.ids["traces"].append(self._last_trace_id())
        self.counts["traces"] += 1
        self.counts["traces_error"] += 1

    @staticmethod
    def _last_trace_id() -> str:
        if hasattr(mlflow, "get_last_active_trace_id"):
            return mlflow.get_last_active_trace_id()
        return mlflow.get_last_active_trace().info.request_id

    def assessments(self) -> None:
        from mlflow.entities import AssessmentError, AssessmentSource

        human = AssessmentSource(source_type="HUMAN", source_id="alice@example.com")
        judge = AssessmentSource(source_type="LLM_JUDGE", source_id="judge-model")
        for i, tid in enumerate(self.ids["traces"][: self.cfg["traces"]]):
            fb = mlflow.log_feedback(trace_id=tid, name="quality", value=0.9 - i / 10,
                                     source=human, rationale="looks right ✓",
                                     metadata={"reviewer": "bob"})
            mlflow.log_expectation(trace_id=tid, name="expected_answer", value=str(i + 3),
                                   source=human)
            self.counts["assessments"] += 2
            if i > 0:
                continue
            mlflow.log_expectation(trace_id=tid, name="expected_dict",
                                   value={"answer": 6, "unit": "none"}, source=human)
            mlflow.log_expectation(trace_id=tid, name="expected_list", value=[1, 2, 3],
                                   source=human)
            mlflow.log_feedback(trace_id=tid, name="judge_error", source=judge,
                                error=AssessmentError(error_code="TIMEOUT",
                                                      error_message="judge timed out"))
            mlflow.log_feedback(trace_id=tid, name="is_correct", value=True, source=judge)
            mlflow.override_feedback(trace_id=tid, assessment_id=fb.assessment_id, value=0.5,
                                     rationale="corrected", source=human)
            self.counts["assessments"] += 5
            self.counts["assessments_invalid"] += 1

    # -- registry --------------------------------------------------------------------------------
    def registry(self, rid) -> None:
        names = ["fixture-model", "модель-unicode", "fixture-model-3"]
        run_uri = self.client.get_run(rid).info.artifact_uri
        for i in range(self.cfg["reg_models"]):
            name = names[i]
            self.client.create_registered_model(
                name, tags={"team": "ml", "nested/key": "v", "crlf": "a\r\nb"},
                description="registered ✓" if i == 0 else None)
            self.counts["registered_models"] += 1
            self.counts["registered_model_tags"] += 3
            for n in range(1, self.cfg["versions"] + 1):
                kwargs = {}
                if n == 1 and self.ids["logged_models"]:
                    kwargs["model_id"] = self.ids["logged_models"][0]
                self.client.create_model_version(
                    name, source=f"{run_uri}/model-{n}", run_id=rid, tags={"v": str(n)},
                    description="first version" if n == 1 else None, **kwargs)
                self.counts["model_versions"] += 1
                self.counts["model_version_tags"] += 1
            if self.cfg["versions"] >= 2:
                self.client.set_model_version_tag(name, "2", "extra", "tag")
                self.counts["model_version_tags"] += 1
            if i == 0 and self.cfg["versions"] >= 2:
                self.client.set_registered_model_alias(name, "champion", "1")
                last = str(self.cfg["versions"])
                self.client.set_registered_model_alias(name, "challenger", last)
                self.counts["aliases"] += 2
                self.client.delete_model_version(name, "2")
                self.counts["model_versions_deleted"] += 1
                with self.feature("stage_transition"):
                    # Not version 1: it is linked to a logged model, and 3.2.0's FileStore then
                    # fails to serialise the version's metrics into meta.yaml.
                    self.client.transition_model_version_stage(name, "3", "Staging")

    def prompts(self) -> None:
        genai = getattr(mlflow, "genai", None)
        register = getattr(genai, "register_prompt", None) or mlflow.register_prompt
        set_alias = getattr(genai, "set_prompt_alias", None) or mlflow.set_prompt_alias
        for i in range(self.cfg["prompts"]):
            name = f"fixture-prompt-{i}"
            register(name=name, template="Hello {{name}} ✓!", commit_message="first",
                     tags={"owner": "alice"})
            register(name=name, template="Hi {{name}}, answer {{question}}\r\nThanks",
                     commit_message="second")
            self.counts["prompts"] += 1
            self.counts["prompt_versions"] += 2
            if i == 0:
                set_alias(name=name, alias="production", version=1)
                self.counts["prompt_aliases"] += 1
        if self.cfg["prompts"] and MLFLOW_VERSION >= Version("3.0"):
            register(name="fixture-chat-prompt",
                     template=[{"role": "system", "content": "You are {{style}}."},
                               {"role": "user", "content": "{{question}}"}],
                     commit_message="chat")
            self.counts["prompts"] += 1
            self.counts["prompt_versions"] += 1

    # -- edge: values too long for SQL, written behind MLflow's back -------------------------------
    def edge_values(self, exp_id, rid) -> None:
        run_dir = self.mlruns / exp_id / rid
        edge = []
        for rel, length in [("params/edge_long_param", EDGE_LEN), ("tags/edge_long_tag", EDGE_LEN)]:
            (run_dir / rel).write_text("x" * length, encoding="utf-8")
            edge.append({"path": f"{exp_id}/{rid}/{rel}", "length": length})
        (self.mlruns / exp_id / "tags" / "edge_long_exp_tag").write_text("e" * 25_000,
                                                                        encoding="utf-8")
        edge.append({"path": f"{exp_id}/tags/edge_long_exp_tag", "length": 25_000})
        for tid in self.ids["traces"][:1]:
            path = self.mlruns / exp_id / "traces" / tid / "tags" / "edge_long_trace_tag"
            path.write_text("t" * EDGE_LEN, encoding="utf-8")
            edge.append({"path": f"{exp_id}/traces/{tid}/tags/edge_long_trace_tag",
                         "length": EDGE_LEN})
        reg = self.mlruns / "models" / "fixture-model" / "tags" / "edge_long_model_tag"
        reg.write_text("r" * EDGE_LEN, encoding="utf-8")
        edge.append({"path": "models/fixture-model/tags/edge_long_model_tag", "length": EDGE_LEN})
        self.counts["params"] += 1
        self.counts["run_tags_user"] += 1
        self.counts["experiment_tags"] += 1
        self.counts["trace_tags_user"] += len(self.ids["traces"][:1])
        self.counts["registered_model_tags"] += 1
        self.edge = edge

    # -- orchestration ---------------------------------------------------------------------------
    def write(self) -> None:
        exp_ids = self.experiments()
        main_exp = exp_ids[1]
        rid = self.main_run(main_exp)
        if self.size == "edge":
            with self.feature("traces", since="2.14"):
                self.traces(main_exp, rid)
            self.end_run(rid, "FINISHED", 1)
            self.registry(rid)
            self.edge_values(main_exp, rid)
            return
        self.status_runs(main_exp)
        self.other_runs(exp_ids)
        self.deleted_experiment()
        with self.feature("datasets", since="2.4"):
            self.datasets(main_exp, rid)
        with self.feature("metric_with_dataset", since="3.0"):
            self.metric_with_dataset(rid)
        with self.feature("logged_models", since="3.0"):
            self.logged_models(main_exp, rid)
        with self.feature("traces", since="2.14"):
            self.traces(main_exp, rid)
        # Last: the fluent start_run(run_id=...) blocks above end the run with a wall-clock time.
        self.end_run(rid, "FINISHED", 1)
        with self.feature("assessments", since="3.2"):
            self.assessments()
        with self.feature("registry", since="2.0"):  # no FileStore registry in 1.x
            self.registry(rid)
        with self.feature("prompts", since="2.21"):
            self.prompts()

    def manifest(self, seconds: float) -> dict:
        return {
            "mlflow_version": mlflow.__version__,
            "size": self.size,
            "python": sys.version.split()[0],
            "counts": dict(sorted(self.counts.items())),
            "skipped": self.skipped,
            "ids": self.ids,
            "edge_values": getattr(self, "edge", []),
            "write_seconds": round(seconds, 1),
        }


# -- checking the files against the manifest ------------------------------------------------------
def _yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def _files(folder: Path) -> list:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def scan_store(mlruns: Path) -> Counter:
    """Count entities directly from the files (no MLflow involved)."""
    found: Counter = Counter()
    exp_dirs = [(d, False) for d in mlruns.iterdir() if d.is_dir() and d.name not in
                (".trash", "models")]
    if (mlruns / ".trash").is_dir():
        exp_dirs += [(d, True) for d in (mlruns / ".trash").iterdir() if d.is_dir()]
    for exp, trashed in exp_dirs:
        found["experiments_deleted" if trashed else "experiments_active"] += 1
        found["experiment_tags"] += len(_files(exp / "tags"))
        found["datasets"] += len(list((exp / "datasets").glob("*/meta.yaml")))
        _scan_models(exp / "models", found)
        _scan_traces(exp / "traces", found)
        for run in exp.iterdir():
            if run.name in ("tags", "datasets", "traces", "models") or not run.is_dir():
                continue
            _scan_run(run, found)
    _scan_registry(mlruns / "models", found)
    return found


def _scan_run(run: Path, found: Counter) -> None:
    meta = _yaml(run / "meta.yaml")
    found["runs"] += 1
    found[f"runs_status_{meta['status']}"] += 1
    found["runs_deleted"] += meta.get("lifecycle_stage") == "deleted"
    found["params"] += len(_files(run / "params"))
    found["run_tags_user"] += sum(not p.relative_to(run / "tags").as_posix().startswith("mlflow.")
                                  or p.name == "mlflow.note.content" for p in _files(run / "tags"))
    metric_files = _files(run / "metrics")
    found["metric_keys"] += len(metric_files)
    found["run_metric_lines"] += sum(len(p.read_text().splitlines()) for p in metric_files)
    for inp in (run / "inputs").glob("*/meta.yaml"):
        kind = _yaml(inp).get("source_type")
        found["dataset_inputs" if kind == "DATASET" else "model_inputs"] += 1
    found["model_outputs"] += len(list((run / "outputs").glob("*/meta.yaml")))


def _scan_models(models: Path, found: Counter) -> None:
    for model in models.glob("*/meta.yaml"):
        found["logged_models"] += 1
        found["logged_model_params"] += len(_files(model.parent / "params"))
        found["logged_model_metrics"] += len(_files(model.parent / "metrics"))


def _scan_traces(traces: Path, found: Counter) -> None:
    for info_path in traces.glob("*/trace_info.yaml"):
        info = _yaml(info_path)
        state = info.get("state", info.get("status"))
        found["traces"] += 1
        found[f"traces_state_{state}"] += 1
        found["traces_error"] += state == "ERROR"
        trace = info_path.parent
        found["trace_tags_user"] += sum(not p.name.startswith("mlflow.")
                                        for p in _files(trace / "tags"))
        found["trace_metadata_user"] += sum(p.name.startswith("fixture.")
                                            for p in _files(trace / "request_metadata"))
        for a in (trace / "assessments").glob("*.yaml"):
            found["assessments"] += 1
            found["assessments_invalid"] += _yaml(a).get("valid", True) is False


def _scan_registry(models: Path, found: Counter) -> None:
    for meta in models.glob("*/meta.yaml"):
        model = meta.parent
        prompt = (model / "tags" / "mlflow.prompt.is_prompt").is_file()
        versions = list(model.glob("version-*/meta.yaml"))
        aliases = len(_files(model / "aliases"))
        if prompt:
            found["prompts"] += 1
            found["prompt_versions"] += len(versions)
            found["prompt_aliases"] += aliases
            continue
        found["registered_models"] += 1
        found["registered_model_tags"] += len(_files(model / "tags"))
        found["aliases"] += aliases
        for v in versions:
            found["model_versions"] += 1
            found["model_versions_deleted"] += _yaml(v).get("current_stage") == "Deleted_Internal"
            found["model_version_tags"] += len(_files(v.parent / "tags"))


def check_store(mlruns: Path, manifest: dict) -> list:
    """Problems found when comparing the files with the manifest (empty list = fine)."""
    found = scan_store(mlruns)
    problems = []
    for kind, want in manifest["counts"].items():
        if kind in found and found[kind] != want:
            problems.append(f"{kind}: manifest says {want}, files have {found[kind]}")
    stuck = found.get("traces_state_IN_PROGRESS", 0)
    if stuck:
        problems.append(f"{stuck} trace(s) still IN_PROGRESS (OpenTelemetry too new?)")
    if found["runs_status_1"] < 1 and manifest["size"] != "edge":
        problems.append("no RUNNING run")
    for status in (3, 4, 5):
        if manifest["size"] != "edge" and found[f"runs_status_{status}"] < 1:
            problems.append(f"no run with status {status}")
    manifest["found"] = dict(sorted((k, v) for k, v in found.items() if v))
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--out", required=True, type=Path, help="writes OUT/mlruns")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / "mlruns").exists():
        parser.error(f"{args.out / 'mlruns'} exists; give an empty directory")
    started = time.time()
    fixture = Fixture(args.out, args.size)
    fixture.write()
    manifest = fixture.manifest(time.time() - started)
    problems = check_store(fixture.mlruns, manifest)
    manifest["problems"] = problems
    (args.out / "fixture_manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    if problems:
        print("store check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(json.dumps(manifest["counts"], sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
