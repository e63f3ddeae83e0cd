"""Fast generator of a large, realistic MLflow 3.17.2 FileStore (``mlruns``) for the benchmark.

Writes MLflow's on-disk format directly (no MLflow import): experiment/run/registry ``meta.yaml``
exactly as MLflow 3.17.2's FileStore writes them (``yaml`` safe dumper, the C one when available
like MLflow, ``default_flow_style=False, allow_unicode=True``, sorted keys), one file per
param/tag (nested directories for keys containing ``/``), metric files with one
``<timestamp> <value> <step>`` line per point.

Deterministic: the same parameters (and seed) produce the same store, byte for byte, except for
the absolute path embedded in artifact URIs.

Design choices (see bench/README.md):
* ``0`` (Default) plus ``experiments-1`` experiments with random 18-digit IDs; one of them is
  deleted (moved to ``.trash``, its runs deleted), as MLflow >= 2.3 does it.
* ``points`` metric points spread over ``runs`` runs (uneven run lengths), keys like ``loss``,
  ``acc``, ``val/loss`` (nested dirs), steps 0..n-1 per key, strictly increasing epoch-ms
  timestamps, a few diverging runs whose loss/grad-norm become NaN (and one ``inf``).
  No duplicate metric lines (upstream ``migrate-filestore`` crashes on them).
* Registered models with 1..5 versions, tags, aliases, stages.

Usable as a module (``generate(...)``, used by check_generator.py) and as a script:
``python bench/gen_store.py --runs 1000 --points 1000000 --out DIR`` writes ``DIR/mlruns`` and
``DIR/manifest.json``. Needs only PyYAML.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import uuid

import yaml

try:  # MLflow's write_yaml uses the C dumper when available; same here.
    from yaml import CSafeDumper as _Dumper
except ImportError:  # pragma: no cover
    from yaml import SafeDumper as _Dumper

GENERATOR_VERSION = 1  # bump when the output changes (part of the cache key)

# RunStatus ints as written by FileStore
STATUS_INT = {"RUNNING": 1, "SCHEDULED": 2, "FINISHED": 3, "FAILED": 4, "KILLED": 5}
SOURCE_TYPE_LOCAL = 4

BASE_TIME_MS = 1_718_000_000_000  # 2024-06-10

USERS = ["alice", "bob", "carol", "dmitri", "eve", "françois", "grace", "heidi"]
EXPERIMENT_NAMES = [
    "churn-model", "fraud-detection", "résumé-ranker", "image-classifier", "llm-finetune",
    "demand-forecast", "recsys-two-tower", "speech-to-text", "anomaly-detection", "ocr-pipeline",
]
MODEL_NAMES = [
    "churn-classifier", "fraud-scorer", "ranker", "resnet50-prod", "llama-ft", "forecaster",
    "two-tower", "whisper-small", "anomaly-iforest", "ocr-crnn",
]
STAGES = ["None", "Staging", "Production", "Archived"]

# (key, weight): how much of a run's points a key gets. The first four are always present.
METRIC_KEYS = [
    ("loss", 4), ("acc", 4), ("val/loss", 1), ("val/acc", 1),
    ("lr", 4), ("train/grad_norm", 4), ("epoch", 1), ("system/gpu_0/utilization", 2),
]


def _param_values(rng: random.Random, i_run: int) -> list:
    """(key, value) pairs, realistic order/values; more keys than needed, truncated by caller."""
    return [
        ("lr", repr(rng.choice([1e-5, 3e-5, 1e-4, 3e-4, 0.001, 0.01, 0.1]))),
        ("batch_size", str(rng.choice([16, 32, 64, 128, 256]))),
        ("epochs", str(rng.randint(1, 100))),
        ("optimizer", rng.choice(["adam", "adamw", "sgd", "lion"])),
        ("weight_decay", repr(rng.choice([0.0, 1e-4, 0.01, 0.05]))),
        ("momentum", repr(round(rng.uniform(0.8, 0.99), 3))),
        ("dropout", repr(round(rng.uniform(0.0, 0.5), 2))),
        ("seed", str(rng.randint(0, 2**31))),
        ("model/name", rng.choice(["resnet50", "bert-base", "xgboost", "llama-3-8b", "mlp"])),
        ("model/hidden_size", str(rng.choice([128, 256, 512, 768, 1024, 4096]))),
        ("model/num_layers", str(rng.randint(2, 48))),
        ("model/activation", rng.choice(["relu", "gelu", "silu", "tanh"])),
        ("data/path", f"s3://datasets/{rng.choice(['train', 'prod', 'v2'])}/"
                      f"part-{i_run % 97:05d}.parquet"),
        ("data/train_split", repr(rng.choice([0.7, 0.8, 0.9]))),
        ("data.version", f"v{rng.randint(1, 12)}"),
        ("scheduler", rng.choice(["cosine", "linear", "constant", "one_cycle", "None"])),
        ("warmup_steps", str(rng.choice([0, 100, 500, 1000]))),
        ("grad_clip", repr(rng.choice([0.5, 1.0, 5.0]))),
        ("precision", rng.choice(["fp32", "bf16", "fp16"])),
        ("num_workers", str(rng.choice([0, 2, 4, 8]))),
        ("tokenizer", rng.choice(["bpe", "wordpiece", "sentencepiece"])),
        ("max_seq_len", str(rng.choice([128, 512, 2048, 8192]))),
        ("class_weights", json.dumps({"0": 1.0, "1": round(rng.uniform(1, 20), 2)})),
        ("feature_list", ",".join(f"f{j}" for j in range(rng.randint(3, 30)))),
    ]


def _tag_values(rng: random.Random, run_name: str, user: str) -> list:
    """(key, value) pairs; the four ``mlflow.*`` tags the brief requires come first."""
    return [
        ("mlflow.runName", run_name),
        ("mlflow.user", user),
        ("mlflow.source.name", rng.choice(["train.py", "/home/u/project/train.py",
                                           "notebooks/exp.ipynb"])),
        ("mlflow.source.type", rng.choice(["LOCAL", "LOCAL", "NOTEBOOK", "JOB"])),
        ("mlflow.source.git.commit", "%040x" % rng.getrandbits(160)),
        ("team", rng.choice(["ml-platform", "search", "ads", "vision"])),
        ("env/gpu", rng.choice(["A100", "H100", "T4", "none"])),
        ("priority", rng.choice(["p0", "p1", "p2"])),
        ("mlflow.note.content", f"Run {run_name}.\nBaseline comparison — see ticket "
                                f"ML-{rng.randint(100, 9999)}.\n"),
        ("dataset", rng.choice(["imagenet-1k", "internal/churn-2024", "squad-v2"])),
    ]


class Spec:
    """Size parameters of a generated store."""

    def __init__(self, runs=1000, points=1_000_000, experiments=8, params=20, tags=10,
                 models=10, seed=0, keys=0):
        if runs < 1 or points < 0 or experiments < 1 or not 0 <= keys <= len(METRIC_KEYS):
            raise ValueError("need runs >= 1, points >= 0, experiments >= 1, 0 <= keys <= 8")
        self.runs, self.points, self.experiments = runs, points, experiments
        self.params, self.tags, self.models, self.seed = params, tags, models, seed
        # 0: 4-8 metric keys per run, runs of uneven length (the long-runs stores). N: every run
        # has the first N keys and the same number of points, spread evenly over them (the
        # many-runs store of a hyperparameter sweep: e.g. 3 keys x 5 steps).
        self.keys = keys

    def key(self) -> str:
        return (f"r{self.runs}-p{self.points}-e{self.experiments}-pa{self.params}-t{self.tags}"
                f"-m{self.models}-s{self.seed}" + (f"-k{self.keys}" if self.keys else "")
                + f"-g{GENERATOR_VERSION}")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("runs", "points", "experiments", "params", "tags", "models", "seed", "keys")}


def _dump_yaml(path: str, data: dict) -> None:
    # Same call as mlflow.utils.yaml_utils.write_yaml (codecs.open(..., "w", "utf-8")).
    text = yaml.dump(data, default_flow_style=False, allow_unicode=True, sort_keys=True,
                     Dumper=_Dumper)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _write_text(path: str, text: str) -> None:
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _write_kv_dir(folder: str, items) -> None:
    os.makedirs(folder, exist_ok=True)
    for k, v in items:
        _write_text(os.path.join(folder, *k.split("/")), v)


def _split(total: int, weights: list) -> list:
    """Split ``total`` into integer parts proportional to ``weights`` (exact sum)."""
    w = float(sum(weights))
    parts = [int(total * x / w) for x in weights]
    rest = total - sum(parts)
    for i in range(rest):
        parts[i % len(parts)] += 1
    return parts


def _metric_series(rng: random.Random, key: str, n: int, start: int, diverge_at):
    """Return ([(ts, value, step)], last_ts) for one key with ``n`` points, steps 0..n-1."""
    dt = {"val/loss": 60_000, "val/acc": 60_000, "epoch": 60_000}.get(
        key, 1_000 + rng.randint(0, 2000))
    half = dt // 2
    out = []
    rand = rng.random
    exp = math.exp
    tau = max(n / 3.0, 1.0)
    if key in ("loss", "val/loss"):
        base, noise = rng.uniform(1.5, 3.0), 0.05
        vals = [base * exp(-s / tau) + 0.1 + noise * rand() for s in range(n)]
    elif key in ("acc", "val/acc"):
        top = rng.uniform(0.7, 0.99)
        vals = [top * (1.0 - exp(-s / tau)) + 0.01 * rand() for s in range(n)]
    elif key == "lr":
        lr0 = rng.choice([1e-4, 3e-4, 1e-3])
        vals = [lr0 * 0.5 * (1.0 + math.cos(math.pi * s / max(n, 1))) for s in range(n)]
    elif key == "train/grad_norm":
        vals = [0.5 + 5.0 * rand() * exp(-s / tau) for s in range(n)]
    elif key == "epoch":
        vals = [float(s) for s in range(n)]
    else:  # gpu utilisation, percent
        vals = [float(rng.randint(60, 100)) for _ in range(n)]
    if diverge_at is not None and key in ("loss", "train/grad_norm") and n > 1:
        d = max(1, int(n * diverge_at))
        if key == "train/grad_norm":
            vals[d - 1] = math.inf
        for s in range(d, n):
            vals[s] = math.nan
    ts = start
    for s in range(n):
        ts = start + (s + 1) * dt + int(rand() * half)
        out.append((ts, vals[s], s))
    return out, ts


def generate(root: str, spec: Spec, collect: bool = False, artifact_root: str | None = None):
    """Write ``root/mlruns`` (``root`` must not contain one). Returns a manifest dict; with
    ``collect=True`` the manifest also holds the intended content (``"intended"``) for checks.

    ``artifact_root``: absolute path used in artifact URIs (default: ``root/mlruns``); the
    cache generates into a temporary directory and renames, so it passes the final path.
    """
    t0 = time.perf_counter()
    rng = random.Random(spec.seed)
    mlruns = os.path.join(root, "mlruns")
    art_root = "file://" + os.path.abspath(artifact_root or mlruns)
    os.makedirs(os.path.join(mlruns, ".trash"))
    intended = {"experiments": {}, "runs": {}, "models": {}} if collect else None
    counts = dict(experiments=0, experiment_tags=0, runs=0, params=0, tags=0, metrics=0,
                  latest_metrics=0, registered_models=0, registered_model_tags=0,
                  model_versions=0, model_version_tags=0, registered_model_aliases=0,
                  nan_points=0, inf_points=0, files=0)

    # ---- experiments ------------------------------------------------------------------
    exps = []  # (exp_id, dir, deleted)
    t_exp = BASE_TIME_MS
    for i in range(spec.experiments):
        if i == 0:
            exp_id, name = "0", "Default"
        else:
            exp_id = str(rng.randrange(10**17, 10**18))
            base = EXPERIMENT_NAMES[(i - 1) % len(EXPERIMENT_NAMES)]
            name = base if i <= len(EXPERIMENT_NAMES) else f"{base}-{i}"
        deleted = spec.experiments >= 4 and i == spec.experiments - 1
        exp_dir = os.path.join(mlruns, ".trash" if deleted else "", exp_id)
        os.makedirs(exp_dir)
        created = t_exp + i * 3_600_000
        exp_tags = []
        if i > 0:
            exp_tags = [("team", rng.choice(["ml-platform", "search", "ads", "vision"])),
                        ("mlflow.note.content", f"# {name}\n\nOwner: {rng.choice(USERS)}\n"),
                        ("project/owner", rng.choice(USERS))]
        exps.append([exp_id, exp_dir, deleted, name, created, exp_tags])
        counts["experiments"] += 1
        counts["experiment_tags"] += len(exp_tags)

    # ---- runs per experiment (experiment 0 gets a small share) ---------------------------
    weights = [1] + [4] * (spec.experiments - 1) if spec.experiments > 1 else [1]
    runs_per_exp = _split(spec.runs, weights)
    if spec.keys:
        points_per_run = _split(spec.points, [1] * spec.runs)
    else:
        run_weights = [rng.uniform(0.5, 1.5) for _ in range(spec.runs)]
        points_per_run = _split(spec.points, run_weights)
    deletion_time = {}
    run_index = 0
    registrable = []  # (run_id, exp_id, artifact_uri, end)

    for (exp_id, exp_dir, deleted, _name, created, _tags), n_runs in zip(exps, runs_per_exp):
        exp_last_update = created
        del_time = created + 30 * 86_400_000 if deleted else None
        for _ in range(n_runs):
            i_run = run_index
            run_index += 1
            run_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
            run_dir = os.path.join(exp_dir, run_id)
            user = rng.choice(USERS)
            run_name = f"{rng.choice(['bold', 'calm', 'eager', 'fancy', 'gentle', 'lucky'])}-" \
                       f"{rng.choice(['owl', 'cat', 'yak', 'fox', 'ant', 'bee'])}-{i_run}"
            start = created + 60_000 + i_run * 7_919
            r = rng.random()
            status = ("FINISHED" if r < 0.85 else "FAILED" if r < 0.93
                      else "KILLED" if r < 0.97 else "RUNNING")
            diverge_at = rng.uniform(0.6, 0.95) if rng.random() < 0.05 else None
            # metrics
            if spec.keys:
                keys = METRIC_KEYS[:spec.keys]
                per_key = _split(points_per_run[i_run], [1] * spec.keys)
            else:
                n_keys = 4 + rng.randint(0, len(METRIC_KEYS) - 4)
                keys = METRIC_KEYS[:n_keys]
                per_key = _split(points_per_run[i_run], [w for _, w in keys])
            metrics = []
            last = start
            for (key, _), n in zip(keys, per_key):
                if n == 0:
                    continue
                series, last_ts = _metric_series(rng, key, n, start, diverge_at)
                metrics.append((key, series))
                last = max(last, last_ts)
            end = None if status == "RUNNING" else last + rng.randint(100, 5000)
            run_deleted = deleted or rng.random() < 0.03
            artifact_uri = f"{art_root}/{exp_id}/{run_id}/artifacts"
            meta = {
                "artifact_uri": artifact_uri, "end_time": end, "entry_point_name": "",
                "experiment_id": exp_id, "lifecycle_stage": "deleted" if run_deleted else "active",
                "run_id": run_id, "run_name": run_name, "source_name": "",
                "source_type": SOURCE_TYPE_LOCAL, "source_version": "", "start_time": start,
                "status": STATUS_INT[status], "tags": [], "user_id": user,
            }
            if run_deleted:
                meta["deleted_time"] = del_time or (end or last) + rng.randint(1, 10**7)
            elif status == "RUNNING":
                meta["deleted_time"] = None  # never rewritten since create_run
            os.makedirs(run_dir)
            _dump_yaml(os.path.join(run_dir, "meta.yaml"), meta)
            params = _param_values(rng, i_run)[: spec.params]
            params += [(f"extra_param_{j}", str(j)) for j in range(len(params), spec.params)]
            tags = _tag_values(rng, run_name, user)[: spec.tags]
            tags += [(f"extra_tag_{j}", f"value {j}") for j in range(len(tags), spec.tags)]
            _write_kv_dir(os.path.join(run_dir, "params"), params)
            _write_kv_dir(os.path.join(run_dir, "tags"), tags)
            mdir = os.path.join(run_dir, "metrics")
            os.makedirs(mdir)
            for key, series in metrics:
                _write_text(os.path.join(mdir, *key.split("/")),
                            "".join(f"{ts} {v!r} {s}\n" for ts, v, s in series))
                counts["metrics"] += len(series)
                counts["latest_metrics"] += 1
                for _, v, _ in series:
                    if v != v:
                        counts["nan_points"] += 1
                    elif v in (math.inf, -math.inf):
                        counts["inf_points"] += 1
            os.makedirs(os.path.join(run_dir, "artifacts"))
            counts["runs"] += 1
            counts["params"] += len(params)
            counts["tags"] += len(tags)
            counts["files"] += 1 + len(params) + len(tags) + len(metrics)
            if not run_deleted and status == "FINISHED":
                registrable.append((run_id, exp_id, artifact_uri, end or last))
            exp_last_update = max(exp_last_update, start)
            if collect:
                intended["runs"][run_id] = dict(
                    experiment_id=exp_id, run_name=run_name, status=status, start_time=start,
                    end_time=end, lifecycle_stage=meta["lifecycle_stage"], user_id=user,
                    artifact_uri=artifact_uri, deleted_time=meta.get("deleted_time"),
                    meta_has_deleted_time="deleted_time" in meta,
                    params=dict(params), tags=dict(tags),
                    metrics={k: list(s) for k, s in metrics})
        deletion_time[exp_id] = del_time

    # experiment meta files (after the runs: last_update_time of a deleted experiment)
    for exp_id, exp_dir, deleted, name, created, exp_tags in exps:
        last_update = deletion_time[exp_id] if deleted else created
        meta = {
            "artifact_location": f"{art_root}/{exp_id}", "creation_time": created,
            "effective_trace_archival_retention": None, "experiment_id": exp_id,
            "last_update_time": last_update, "lifecycle_stage": "deleted" if deleted else "active",
            "name": name, "trace_location": None, "workspace": "default",
        }
        if deleted:  # delete_experiment rewrites meta.yaml with dict(experiment) incl. tags
            meta["tags"] = dict(exp_tags)
        _dump_yaml(os.path.join(exp_dir, "meta.yaml"), meta)
        if exp_tags:
            _write_kv_dir(os.path.join(exp_dir, "tags"), exp_tags)
        counts["files"] += 1 + len(exp_tags)
        if collect:
            intended["experiments"][exp_id] = dict(
                name=name, artifact_location=meta["artifact_location"], creation_time=created,
                last_update_time=last_update, lifecycle_stage=meta["lifecycle_stage"],
                tags=dict(exp_tags))

    # ---- model registry -----------------------------------------------------------------
    if spec.models > 0:
        os.makedirs(os.path.join(mlruns, "models"))
    for i in range(spec.models):
        if not registrable:
            break
        base = MODEL_NAMES[i % len(MODEL_NAMES)]
        name = base if i < len(MODEL_NAMES) else f"{base}-{i}"
        mdir = os.path.join(mlruns, "models", name)
        os.makedirs(mdir)
        n_versions = 1 + i % 5
        created = BASE_TIME_MS + 86_400_000 * (i + 1)
        t = created
        versions = {}
        for v in range(1, n_versions + 1):
            run_id, exp_id, artifact_uri, _ = registrable[rng.randrange(len(registrable))]
            t += rng.randint(1000, 10**7)
            stage = "Archived" if v < n_versions - 1 else STAGES[(i + v) % len(STAGES)]
            vmeta = {
                "creation_timestamp": t, "current_stage": stage, "deployment_job_state": None,
                "description": None, "last_updated_timestamp": t, "model_id": None,
                "name": name, "run_id": run_id, "run_link": None,
                "source": f"runs:/{run_id}/model", "status": "READY", "status_message": None,
                "storage_location": f"runs:/{run_id}/model", "user_id": None, "version": v,
                "workspace": "default",
            }
            vdir = os.path.join(mdir, f"version-{v}")
            os.makedirs(vdir)
            _dump_yaml(os.path.join(vdir, "meta.yaml"), vmeta)
            vtags = [("validation_status", rng.choice(["approved", "pending"])),
                     ("trained_on", rng.choice(["gpu-cluster-a", "gpu-cluster-b"]))]
            _write_kv_dir(os.path.join(vdir, "tags"), vtags)
            versions[v] = dict(meta=vmeta, tags=dict(vtags))
            counts["model_versions"] += 1
            counts["model_version_tags"] += len(vtags)
            counts["files"] += 1 + len(vtags)
        aliases = {"champion": str(n_versions)}
        if n_versions > 1:
            aliases["challenger"] = "1"
        mtags = [("task", rng.choice(["classification", "ranking", "regression"])),
                 ("owner/team", rng.choice(["ml-platform", "search", "ads"]))]
        rmeta = {
            "aliases": aliases, "creation_timestamp": created, "deployment_job_id": None,
            "deployment_job_state": None, "description": f"{name}: production model for {base}",
            "last_updated_timestamp": t, "name": name, "workspace": "default",
        }
        _dump_yaml(os.path.join(mdir, "meta.yaml"), rmeta)
        _write_kv_dir(os.path.join(mdir, "tags"), mtags)
        os.makedirs(os.path.join(mdir, "aliases"))
        for alias, v in aliases.items():
            _write_text(os.path.join(mdir, "aliases", alias), v)
        counts["registered_models"] += 1
        counts["registered_model_tags"] += len(mtags)
        counts["registered_model_aliases"] += len(aliases)
        counts["files"] += 1 + len(mtags) + len(aliases)
        if collect:
            intended["models"][name] = dict(meta=rmeta, tags=dict(mtags), aliases=aliases,
                                            versions=versions)

    manifest = {"generator_version": GENERATOR_VERSION, "spec": spec.as_dict(),
                "counts": counts, "seconds": round(time.perf_counter() - t0, 3)}
    if collect:
        manifest["intended"] = intended
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory to create; the store is OUT/mlruns")
    p.add_argument("--artifact-root", help="absolute mlruns path to embed in artifact URIs")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--experiments", type=int, default=8)
    p.add_argument("--params", type=int, default=20)
    p.add_argument("--tags", type=int, default=10)
    p.add_argument("--models", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keys", type=int, default=0,
                   help="metric keys per run, all runs alike (0: 4-8 keys, uneven runs)")
    a = p.parse_args(argv)
    spec = Spec(a.runs, a.points, a.experiments, a.params, a.tags, a.models, a.seed, a.keys)
    os.makedirs(a.out, exist_ok=True)
    manifest = generate(a.out, spec, artifact_root=a.artifact_root)
    with open(os.path.join(a.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    json.dump(manifest, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
