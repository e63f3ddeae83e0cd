"""Oracle: MLflow's own SqlAlchemyStore reading fs2sql's database sees what its FileStore sees.

For stores written by MLflow 2.x and 3.x; read by full MLflow 3.17.2 on both sides. The only
normalisations are documented differences between MLflow's two stores themselves (each cited).
"""

import os

import pytest
from conftest import oracle_pair

from fixtures_gen.versions import LATEST_2X, LATEST_3X, V32

pytestmark = pytest.mark.oracle

MAX = 1.7976931348623157e308


def _sql_value(v):
    # SqlAlchemyStore.sanitize_metric_value: the SQL store cannot hold infinities.
    return {"inf": MAX, "-inf": -MAX}.get(v, v) if isinstance(v, str) else v


def _five_field_timestamps(store, run):
    """Timestamps of metric lines logged with a dataset (5 fields) per key. FileStore's
    _get_metric_from_line reads step 0 for them (``if len(metric_parts) == 3 else 0``); the file
    and MLflow's SQL store hold the real step."""
    info = run["info"]
    folder = os.path.join(store, str(info["experiment_id"]), info["run_id"], "metrics")
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            key = os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")
            with open(os.path.join(dirpath, name)) as f:
                out[key] = {int(line.split()[0]) for line in f if len(line.split()) == 5}
    return out


def _normalise_fs_run(run, store):
    five = _five_field_timestamps(store, run)
    history = {}
    for key, points in run["metric_history"].items():
        seen, kept = set(), []
        for ts, step, value in points:
            point = (ts, step, _sql_value(value))
            if point not in seen:  # MLflow's SQL store keeps identical points once
                seen.add(point)
                kept.append(list(point))
        history[key] = kept
    run = dict(run, metric_history=history)
    run["latest_metrics"] = {k: _sql_value(v) for k, v in run["latest_metrics"].items()}
    run["_five"] = five
    return run


def _normalise_sql_run(run, five):
    history = {}
    for key, points in run["metric_history"].items():
        history[key] = sorted(([ts, 0 if ts in five.get(key, ()) else step, value]
                               for ts, step, value in points),
                              key=lambda p: (p[0], p[1], str(p[2])))
    return dict(run, metric_history=history)


@pytest.mark.parametrize("version", [LATEST_2X, V32, LATEST_3X])
def test_experiments_are_identical(version):
    fs, sql, _, _ = oracle_pair(version)
    assert "experiments" in fs and "experiments" in sql, (fs.get("unsupported"),
                                                         sql.get("unsupported"))
    assert len(fs["experiments"]) >= 5
    assert any(e["lifecycle_stage"] == "deleted" for e in fs["experiments"])
    assert sql["experiments"] == fs["experiments"]


@pytest.mark.parametrize("version", [LATEST_2X, V32, LATEST_3X])
def test_runs_params_tags_and_metric_histories_are_identical(version):
    fs, sql, _, store = oracle_pair(version)
    assert len(fs["runs"]) >= 10
    assert {r["info"]["run_id"] for r in sql["runs"]} == {r["info"]["run_id"] for r in fs["runs"]}
    sql_runs = {r["info"]["run_id"]: r for r in sql["runs"]}
    fields = ("info", "params", "tags", "metric_history", "latest_metrics")
    for fs_run in fs["runs"]:
        want = _normalise_fs_run(fs_run, store)
        got = _normalise_sql_run(sql_runs[fs_run["info"]["run_id"]], want.pop("_five"))
        for field in fields:
            if field == "latest_metrics" and want["metric_history"] != fs_run["metric_history"]:
                pass
            assert got[field] == want[field], (fs_run["info"]["run_id"], field)
