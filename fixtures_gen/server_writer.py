"""What an MLflow server does to its database while fs2sql syncs into it: MLflow's own
SqlAlchemyStore logging metrics to a run of its own, in a loop, timing every call.

Run inside a fixture venv (``envs.run_in_venv``)::

    python server_writer.py URI STOP_FILE OUT_JSON [--experiment NAME]

It creates (or reuses) the experiment, starts a run, then logs one metric point per call until
STOP_FILE exists, and writes {"run_id", "experiment_id", "calls", "errors", "max_s", "p99_s",
"p50_s", "first_error"} to OUT_JSON. A call that fails (e.g. SQLite's "database is locked") counts as an
error and the loop goes on, as a server would answer the next request.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    uri, stop, out = sys.argv[1:4]
    name = sys.argv[sys.argv.index("--experiment") + 1] if "--experiment" in sys.argv \
        else "written by the server"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, "file:///tmp/fs2sql-server-artifacts")
    exp = store.get_experiment_by_name(name)
    eid = exp.experiment_id if exp else store.create_experiment(name)
    run = store.create_run(eid, "server", int(time.time() * 1000), [], "server-run")
    rid = run.info.run_id
    times, errors, first = [], 0, None
    step = 0
    with open(out + ".started", "w") as f:
        f.write(rid)
    while not os.path.exists(stop):
        t = time.perf_counter()
        try:
            store.log_metric(rid, Metric("server_loss", 1.0 / (step + 1),
                                         int(time.time() * 1000), step))
        except Exception as exc:  # noqa: BLE001 - the loop is the measurement
            errors += 1
            first = first or f"{type(exc).__name__}: {exc}"[:300]
        times.append(time.perf_counter() - t)
        step += 1
        time.sleep(0.01)
    times.sort()
    with open(out, "w") as f:
        json.dump({"run_id": rid, "experiment_id": eid, "calls": len(times), "errors": errors,
                   "max_s": times[-1] if times else None,
                   "p99_s": times[int(len(times) * 0.99)] if times else None,
                   "p50_s": times[len(times) // 2] if times else None,
                   "first_error": first, "points": step - errors}, f)


if __name__ == "__main__":
    main()
