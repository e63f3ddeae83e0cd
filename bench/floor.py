"""The benchmark's floor: the simplest fast FileStore -> SQLite import ("as fast as it can be").

Reads every metadata file of the store, parses it, and inserts the same rows as a migration
(experiments, experiment_tags, runs, params, tags, metrics, latest_metrics, registered_models,
registered_model_tags, model_versions, model_version_tags, registered_model_aliases) with plain
``sqlite3`` ``executemany`` of tuples into a copy of an empty MLflow 3.17.2 schema
(``--template``, made once by bench/run.py with ``_initialize_tables``).

Deliberately minimal: one transaction, ``journal_mode=OFF``, ``synchronous=OFF``, 64 MiB page
cache, the two secondary indexes of ``metrics`` dropped during the load and re-created with the
same DDL afterwards (the final schema is identical to the template), no foreign-key checks, no
validation or reporting, no datasets/traces/logged models (the bench store has none).
Metrics are de-duplicated with a set per run; ``latest_metrics`` follows MLflow's SQL store: per
(run, key) the maximum over lines of ``(step, timestamp, sanitized value)``, the first logged line
winning ties; NaN -> 0.0 with is_nan=1, +-inf -> +-1.7976931348623157e308.

Files are read in parallel, as fs2sql reads them (``--io-threads``, default 8, the same
default): a pool of threads reads every file of the next runs into memory (a bounded window),
the main thread parses and inserts them in order. 1 reads them one after the other.

Usage: ``python bench/floor.py MLRUNS OUT.db --template EMPTY_SCHEMA.db [--io-threads N]``
(needs PyYAML). Prints one JSON line with row counts and phase timings.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import yaml

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader

MAX = 1.7976931348623157e308
INF = float("inf")
STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
SOURCE_TYPE = {1: "NOTEBOOK", 2: "JOB", 3: "PROJECT", 4: "LOCAL", 5: "UNKNOWN", 1000: "UNKNOWN"}
RESERVED = {"tags", "datasets", "traces", "models"}
FLUSH_ROWS = 200_000
IO_THREADS = 8  # set by --io-threads
AHEAD_PER_THREAD = 4

SQL = {
    "experiments": "INSERT INTO experiments (experiment_id, name, artifact_location, "
                   "lifecycle_stage, creation_time, last_update_time, workspace) "
                   "VALUES (?,?,?,?,?,?,'default')",
    "experiment_tags": "INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?,?,?)",
    "runs": "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, "
            "user_id, status, start_time, end_time, source_version, lifecycle_stage, "
            "artifact_uri, experiment_id, deleted_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "params": "INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)",
    "tags": "INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)",
    "metrics": "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) "
               "VALUES (?,?,?,?,?,?)",
    "latest_metrics": "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, "
                      "run_uuid) VALUES (?,?,?,?,?,?)",
    "registered_models": "INSERT INTO registered_models (name, creation_time, "
                         "last_updated_time, description, workspace) VALUES (?,?,?,?,'default')",
    "registered_model_tags": "INSERT INTO registered_model_tags (key, value, name, workspace) "
                             "VALUES (?,?,?,'default')",
    "model_versions": "INSERT INTO model_versions (name, version, creation_time, "
                      "last_updated_time, description, user_id, current_stage, source, run_id, "
                      "status, status_message, run_link, storage_location, workspace) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,'default')",
    "model_version_tags": "INSERT INTO model_version_tags (key, value, name, version, "
                          "workspace) VALUES (?,?,?,?,'default')",
    "registered_model_aliases": "INSERT INTO registered_model_aliases (alias, version, name, "
                                "workspace) VALUES (?,?,?,'default')",
}


def read_text(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8")


def read_yaml(path: str):
    with open(path, "rb") as fh:
        return yaml.load(fh.read(), Loader=_Loader)


def key_files(folder: str, prefix: str = ""):
    """(key, path) for every file below ``folder`` (keys with '/' are nested directories)."""
    try:
        it = os.scandir(folder)
    except FileNotFoundError:
        return
    with it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                yield from key_files(e.path, prefix + e.name + "/")
            else:
                yield prefix + e.name, e.path


def read_run_files(run_dir: str):
    """On an I/O thread: (meta.yaml bytes or None, {sub-folder: [(key, bytes)]}) of a run."""
    try:
        with open(os.path.join(run_dir, "meta.yaml"), "rb") as fh:
            meta = fh.read()
    except (FileNotFoundError, IsADirectoryError):
        return None, {}
    files = {}
    for sub in ("tags", "params", "metrics"):
        items = []
        for key, path in key_files(os.path.join(run_dir, sub)):
            with open(path, "rb") as fh:
                items.append((key, fh.read()))
        files[sub] = items
    return meta, files


def in_order(fn, items, threads: int):
    """``fn(item)`` for each item, in order, computed ahead by ``threads`` threads (bounded)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        window = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= threads * AHEAD_PER_THREAD:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


class Floor:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.buf = {t: [] for t in SQL}
        self.counts = {t: 0 for t in SQL}
        self.pending = 0

    def add(self, table: str, rows) -> None:
        b = self.buf[table]
        n = len(b)
        b.extend(rows)
        self.pending += len(b) - n

    def flush(self, force: bool = False) -> None:
        if not force and self.pending < FLUSH_ROWS:
            return
        for table, rows in self.buf.items():  # dict order = FK-safe order
            if rows:
                self.conn.executemany(SQL[table], rows)
                self.counts[table] += len(rows)
                rows.clear()
        self.pending = 0

    # ---- tracking ---------------------------------------------------------------------
    def experiment_id(self, exp_id: str) -> int:
        """The database ID of a store experiment (the server floor maps 18-digit IDs)."""
        return int(exp_id)

    def experiment(self, exp_dir: str, exp_id: str, deleted: bool) -> None:
        meta = read_yaml(os.path.join(exp_dir, "meta.yaml"))
        eid = self.experiment_id(exp_id)
        self.add("experiments", [(eid, meta["name"], meta.get("artifact_location"),
                                  "deleted" if deleted else "active", meta.get("creation_time"),
                                  meta.get("last_update_time"))])
        self.add("experiment_tags", [(k, read_text(p), eid)
                                     for k, p in key_files(os.path.join(exp_dir, "tags"))])
        with os.scandir(exp_dir) as it:
            runs = [e.name for e in it if e.name not in RESERVED and e.is_dir()]
        dirs = [os.path.join(exp_dir, run_id) for run_id in runs]
        for run_id, (meta, files) in zip(runs, in_order(read_run_files, dirs, IO_THREADS)):
            if meta is not None:
                self.run(meta, files, run_id, eid)
                self.flush()

    def run(self, meta: bytes, files: dict, run_id: str, eid: int) -> None:
        m = yaml.load(meta, Loader=_Loader)
        tags = [(k, v.decode("utf-8"), run_id) for k, v in files["tags"]]
        name = m.get("run_name") or m.get("name")
        if not name:
            name = next((v for k, v, _ in tags if k == "mlflow.runName"), None)
        st = m.get("status", 1)
        self.add("runs", [(run_id, name, SOURCE_TYPE.get(m.get("source_type"), "UNKNOWN"),
                           m.get("source_name", ""), m.get("entry_point_name", ""),
                           m.get("user_id"), STATUS.get(st, st), m.get("start_time"),
                           m.get("end_time"), m.get("source_version", ""),
                           m.get("lifecycle_stage", "active"), m.get("artifact_uri"), eid,
                           m.get("deleted_time"))])
        self.add("params", [(k, v.decode("utf-8"), run_id) for k, v in files["params"]])
        self.add("tags", tags)
        seen = {}  # de-duplication in file order (locality for the metrics PK index)
        latest = []
        for key, data in files["metrics"]:
            best = None  # (step, ts, value) of the winner, first logged wins ties
            best_row = None
            for line in data.decode("utf-8").split("\n"):
                f = line.split()
                if len(f) < 2:
                    continue
                ts = int(f[0])
                v = float(f[1])
                step = int(f[2]) if len(f) > 2 else 0
                if v != v:
                    v, nan = 0.0, 1
                elif v == INF or v == -INF:
                    v, nan = (MAX if v > 0 else -MAX), 0
                else:
                    nan = 0
                row = (key, v, ts, step, nan, run_id)
                if row in seen:
                    continue
                seen[row] = None
                cand = (step, ts, v)
                if best is None or cand > best:
                    best, best_row = cand, row
            if best_row is not None:
                latest.append(best_row)
        self.add("metrics", seen)
        self.add("latest_metrics", latest)

    # ---- registry ---------------------------------------------------------------------
    def registry(self, models_dir: str) -> None:
        try:
            names = sorted(e.name for e in os.scandir(models_dir) if e.is_dir())
        except FileNotFoundError:
            return
        for dname in names:
            mdir = os.path.join(models_dir, dname)
            m = read_yaml(os.path.join(mdir, "meta.yaml"))
            name = m.get("name", dname)
            self.add("registered_models", [(name, m.get("creation_timestamp"),
                                            m.get("last_updated_timestamp"),
                                            m.get("description"))])
            self.add("registered_model_tags", [(k, read_text(p), name)
                                               for k, p in key_files(os.path.join(mdir, "tags"))])
            with os.scandir(mdir) as it:
                vdirs = [e.path for e in it if e.name.startswith("version-") and e.is_dir()]
            for vdir in vdirs:
                v = read_yaml(os.path.join(vdir, "meta.yaml"))
                ver = int(v["version"])
                self.add("model_versions", [(
                    name, ver, v.get("creation_timestamp"), v.get("last_updated_timestamp"),
                    v.get("description"), v.get("user_id"), v.get("current_stage", "None"),
                    v.get("source"), v.get("run_id"), v.get("status", "READY"),
                    v.get("status_message"), v.get("run_link"), v.get("storage_location"))])
                self.add("model_version_tags", [(k, read_text(p), name, ver)
                                                for k, p in key_files(os.path.join(vdir, "tags"))])
            self.add("registered_model_aliases", [
                (alias, int(read_text(p).strip()), name)
                for alias, p in key_files(os.path.join(mdir, "aliases"))])


def experiment_dirs(mlruns: str) -> list:
    """(path, ID as named, deleted?) of every experiment, active ones first, then ``.trash``."""
    exps = []
    with os.scandir(mlruns) as it:
        for e in it:
            if e.is_dir() and e.name not in (".trash", "models") and e.name.isdigit():
                exps.append((e.path, e.name, False))
    trash = os.path.join(mlruns, ".trash")
    if os.path.isdir(trash):
        with os.scandir(trash) as it:
            exps += [(e.path, e.name, True) for e in it if e.is_dir() and e.name.isdigit()]
    return exps


def walk(f: Floor, mlruns: str) -> None:
    """Read and parse the whole store into ``f`` (which flushes as it goes)."""
    for exp_dir, exp_id, deleted in experiment_dirs(mlruns):
        f.experiment(exp_dir, exp_id, deleted)
    f.registry(os.path.join(mlruns, "models"))


def set_io_threads(n: int) -> None:
    global IO_THREADS
    IO_THREADS = max(1, n)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mlruns")
    ap.add_argument("out")
    ap.add_argument("--template", required=True, help="empty MLflow 3.17.2 SQLite schema")
    ap.add_argument("--io-threads", type=int, default=IO_THREADS, help="threads reading files")
    a = ap.parse_args(argv)
    set_io_threads(a.io_threads)
    t0 = time.perf_counter()
    if os.path.exists(a.out):
        sys.exit(f"floor: {a.out} exists")
    shutil.copyfile(a.template, a.out)
    conn = sqlite3.connect(a.out, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache (default 2 MiB)
    conn.execute("BEGIN")
    # Bulk-load trick: drop the two secondary indexes of `metrics`, re-create them (same DDL,
    # so the schema ends identical) after the load: sorting once beats 1M random inserts.
    idx = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index' "
                       "AND tbl_name='metrics' AND sql IS NOT NULL").fetchall()
    for name, _ in idx:
        conn.execute(f'DROP INDEX "{name}"')
    f = Floor(conn)
    walk(f, a.mlruns)
    f.flush(force=True)
    for _, sql in idx:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.close()
    print(json.dumps({"rows": f.counts, "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
