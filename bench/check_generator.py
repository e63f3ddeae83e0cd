"""Check bench/gen_store.py against MLflow's own FileStore (run in the bench venv, MLflow 3.17.2).

Generates a small store with the same generator and settings shape as the benchmark, then:

1. reads it back through ``MlflowClient(tracking_uri="file://...")``
   (``MLFLOW_ALLOW_FILE_STORE=true``) and compares every experiment (+tags), run (info, params,
   tags, full metric history), registered model (+tags, aliases) and model version (+tags) with
   what the generator intended;
2. checks that nothing extra is visible (run/experiment/model counts);
3. checks every ``meta.yaml`` byte for byte against what MLflow's own code writes for the same
   entity (``write_yaml`` of ``_make_persisted_run_info_dict(RunInfo)``, ``dict(Experiment)``,
   the registry FileStore's ``_save_*_as_meta_file``).

Exit status 0 = all good; otherwise the differences are printed (first 30) and the status is 1.
Usage: ``<bench-venv>/bin/python bench/check_generator.py [--runs 60 --points 6000 ...]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings

os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gen_store  # noqa: E402


def _same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


class Checker:
    def __init__(self):
        self.errors: list[str] = []
        self.checked = 0

    def eq(self, what: str, got, want) -> None:
        self.checked += 1
        if got != want:
            self.errors.append(f"{what}: MLflow reads {got!r}, generator intended {want!r}")


def check(root: str, spec: gen_store.Spec) -> Checker:
    warnings.filterwarnings("ignore")
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, RunInfo, ViewType
    from mlflow.store.model_registry.file_store import FileStore as RegistryFileStore
    from mlflow.store.tracking.file_store import _make_persisted_run_info_dict
    from mlflow.utils.yaml_utils import write_yaml

    assert mlflow.__version__ == "3.17.2", mlflow.__version__
    manifest = gen_store.generate(root, spec, collect=True)
    want = manifest["intended"]
    mlruns = os.path.join(root, "mlruns")
    uri = "file://" + mlruns
    # Otherwise MLflow 3.x falls back to a default sqlite:///mlflow.db in the cwd for some calls.
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_REGISTRY_URI"] = uri
    os.chdir(root)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    c = Checker()
    scratch = tempfile.mkdtemp(prefix="meta-", dir=root)
    n_yaml = [0]

    def same_bytes(what: str, ours: str, write) -> None:
        d = tempfile.mkdtemp(dir=scratch)
        write(d)
        with open(os.path.join(d, "meta.yaml"), "rb") as fh:
            theirs = fh.read()
        with open(ours, "rb") as fh:
            mine = fh.read()
        n_yaml[0] += 1
        c.checked += 1
        if mine != theirs:
            import difflib

            diff = "".join(difflib.unified_diff(theirs.decode().splitlines(True),
                                                mine.decode().splitlines(True),
                                                "mlflow-writes", "generator-wrote", n=0))
            c.errors.append(f"{what} meta.yaml differs from MLflow's writer:\n{diff}")

    # ---- experiments -------------------------------------------------------------------
    exps = client.search_experiments(view_type=ViewType.ALL, max_results=50000)
    c.eq("experiment ids", sorted(e.experiment_id for e in exps), sorted(want["experiments"]))
    for e in exps:
        w = want["experiments"].get(e.experiment_id)
        if w is None:
            continue
        p = f"experiment {e.experiment_id}"
        c.eq(f"{p} name", e.name, w["name"])
        c.eq(f"{p} artifact_location", e.artifact_location, w["artifact_location"])
        c.eq(f"{p} lifecycle_stage", e.lifecycle_stage, w["lifecycle_stage"])
        c.eq(f"{p} creation_time", e.creation_time, w["creation_time"])
        c.eq(f"{p} last_update_time", e.last_update_time, w["last_update_time"])
        c.eq(f"{p} tags", dict(e.tags), w["tags"])
        deleted = w["lifecycle_stage"] == "deleted"
        ours = os.path.join(mlruns, ".trash" if deleted else "", e.experiment_id, "meta.yaml")

        def write_exp(d, w=w, eid=e.experiment_id, deleted=deleted):
            exp = Experiment(eid, w["name"], w["artifact_location"], w["lifecycle_stage"],
                             creation_time=w["creation_time"],
                             last_update_time=w["last_update_time"])
            data = dict(exp)
            if deleted:  # delete_experiment writes dict(experiment) with its tags
                data["tags"] = dict(w["tags"])
            else:  # _create_experiment_with_id drops the tags
                del data["tags"]
            write_yaml(d, "meta.yaml", data)

        same_bytes(p, ours, write_exp)

    # ---- runs --------------------------------------------------------------------------
    exp_ids = [e.experiment_id for e in exps]
    seen = []
    token = None
    while True:
        page = client.search_runs(exp_ids, run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        seen += [r.info.run_id for r in page]
        token = page.token
        if not token:
            break
    c.eq("run ids (search_runs, all view types)", sorted(seen), sorted(want["runs"]))
    n_points = 0
    for run_id, w in want["runs"].items():
        p = f"run {run_id}"
        try:
            run = client.get_run(run_id)
        except Exception as exc:  # MLflow rejects the run (malformed files)
            c.checked += 1
            c.errors.append(f"{p}: MLflow cannot read it: {exc}")
            continue
        info = run.info
        c.eq(f"{p} experiment_id", info.experiment_id, w["experiment_id"])
        c.eq(f"{p} run_name", info.run_name, w["run_name"])
        c.eq(f"{p} status", info.status, w["status"])
        c.eq(f"{p} start_time", info.start_time, w["start_time"])
        c.eq(f"{p} end_time", info.end_time, w["end_time"])
        c.eq(f"{p} lifecycle_stage", info.lifecycle_stage, w["lifecycle_stage"])
        c.eq(f"{p} user_id", info.user_id, w["user_id"])
        c.eq(f"{p} artifact_uri", info.artifact_uri, w["artifact_uri"])
        c.eq(f"{p} params", run.data.params, w["params"])
        c.eq(f"{p} tags", run.data.tags, w["tags"])
        c.eq(f"{p} metric keys", sorted(run.data.metrics), sorted(w["metrics"]))
        for key, series in w["metrics"].items():
            try:
                hist = client.get_metric_history(run_id, key)
            except Exception as exc:
                c.checked += 1
                c.errors.append(f"{p} metric {key!r}: MLflow cannot read it: {exc}")
                continue
            got = [(m.timestamp, m.value, m.step) for m in hist]
            n_points += len(got)
            ok = len(got) == len(series) and all(
                g[0] == s[0] and g[2] == s[2] and _same_float(g[1], s[1])
                for g, s in zip(got, series))
            c.checked += 1
            if not ok:
                c.errors.append(f"{p} metric {key!r}: history differs "
                                f"({len(got)} read vs {len(series)} intended)")
            # latest value as FileStore shows it (raw float compare) = last step here, as the
            # generator's steps and timestamps increase strictly
            last = series[-1]
            c.checked += 1
            if not _same_float(run.data.metrics.get(key, float("-inf")), last[1]):
                c.errors.append(f"{p} latest {key!r}: {run.data.metrics.get(key)!r} != {last[1]!r}")
        deleted_exp = want["experiments"][w["experiment_id"]]["lifecycle_stage"] == "deleted"
        ours = os.path.join(mlruns, ".trash" if deleted_exp else "", w["experiment_id"], run_id,
                            "meta.yaml")

        def write_run(d, w=w, run_id=run_id):
            ri = RunInfo(run_id, w["experiment_id"], w["user_id"], w["status"], w["start_time"],
                         w["end_time"], w["lifecycle_stage"], w["artifact_uri"], w["run_name"])
            data = _make_persisted_run_info_dict(ri)
            if w["meta_has_deleted_time"]:  # create_run writes null; delete_run the time
                data["deleted_time"] = w["deleted_time"]
            write_yaml(d, "meta.yaml", data)

        same_bytes(p, ours, write_run)
        # get_run (3.x) requires these directories; FileStore created them in create_run
        for sub in ("metrics", "params", "artifacts"):
            c.eq(f"{p} has {sub}/", os.path.isdir(os.path.join(os.path.dirname(ours), sub)), True)
    c.eq("metric points read back", n_points, manifest["counts"]["metrics"])

    # ---- registry ----------------------------------------------------------------------
    reg = RegistryFileStore(mlruns)
    models = client.search_registered_models(max_results=1000)
    c.eq("registered model names", sorted(m.name for m in models), sorted(want["models"]))
    for m in models:
        w = want["models"].get(m.name)
        if w is None:
            continue
        p = f"registered model {m.name}"
        c.eq(f"{p} description", m.description, w["meta"]["description"])
        c.eq(f"{p} creation_timestamp", m.creation_timestamp, w["meta"]["creation_timestamp"])
        c.eq(f"{p} last_updated_timestamp", m.last_updated_timestamp,
             w["meta"]["last_updated_timestamp"])
        c.eq(f"{p} tags", dict(m.tags), w["tags"])
        c.eq(f"{p} aliases", {a: int(v) for a, v in m.aliases.items()},
             {a: int(v) for a, v in w["aliases"].items()})
        same_bytes(p, os.path.join(mlruns, "models", m.name, "meta.yaml"),
                   lambda d, n=m.name: reg._save_registered_model_as_meta_file(
                       reg.get_registered_model(n), meta_dir=d, overwrite=False))
        mvs = client.search_model_versions(f"name='{m.name}'")
        c.eq(f"{p} versions", sorted(int(v.version) for v in mvs), sorted(w["versions"]))
        for mv in mvs:
            wv = w["versions"].get(int(mv.version))
            if wv is None:
                continue
            q = f"{p} v{mv.version}"
            for field in ("current_stage", "source", "run_id", "status", "description",
                          "creation_timestamp", "last_updated_timestamp", "user_id", "run_link"):
                c.eq(f"{q} {field}", getattr(mv, field), wv["meta"][field])
            c.eq(f"{q} tags", dict(mv.tags), wv["tags"])
            same_bytes(q, os.path.join(mlruns, "models", m.name, f"version-{mv.version}",
                                       "meta.yaml"),
                       lambda d, n=m.name, v=mv.version: reg._save_model_version_as_meta_file(
                           reg._fetch_file_model_version_if_exists(n, v), meta_dir=d,
                           overwrite=False))
    c.n_yaml = n_yaml[0]
    return c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--points", type=int, default=6000)
    p.add_argument("--experiments", type=int, default=5)
    p.add_argument("--params", type=int, default=20)
    p.add_argument("--tags", type=int, default=10)
    p.add_argument("--models", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the generated sample store")
    a = p.parse_args(argv)
    spec = gen_store.Spec(a.runs, a.points, a.experiments, a.params, a.tags, a.models, a.seed)
    t0 = time.perf_counter()
    cwd = os.getcwd()
    root = tempfile.mkdtemp(prefix="fs2sql-bench-check-")
    try:
        c = check(root, spec)
    finally:
        os.chdir(cwd)
        if not a.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"sample store kept in {root}/mlruns")
    dt = time.perf_counter() - t0
    if c.errors:
        print(f"check_generator: {len(c.errors)} of {c.checked} checks FAILED ({dt:.1f} s):")
        for e in c.errors[:30]:
            print("  " + (e if len(e) < 600 else e[:600] + " ..."))
        return 1
    print(f"check_generator: OK - {c.checked} checks ({c.n_yaml} meta.yaml files byte-identical "
          f"to MLflow 3.17.2's writer) on {spec.runs} runs / {spec.points} points, {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
