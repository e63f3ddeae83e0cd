"""Measuring one run of a tool: wall time, CPU and peak RSS of its process tree; dropping the
page cache for cold runs; row counts of an SQLite output."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

GNU_TIME = "/usr/bin/time"
# Row counts compared with the generator's manifest after each tool's first run (not timed).
COUNT_TABLES = ("experiments", "experiment_tags", "runs", "params", "tags", "metrics",
                "latest_metrics", "registered_models", "registered_model_tags", "model_versions",
                "model_version_tags", "registered_model_aliases")


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    out += [int(x) for x in fh.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree (every ``interval`` s) to catch concurrent
    workers, which ``ru_maxrss`` (largest single process) does not add up."""

    def __init__(self, pid: int, skip_root: bool, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.skip_root, self.interval = pid, skip_root, interval
        self.peak_kb = 0
        self.max_procs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                pids.append(p)
                todo += _children(p)
            if self.skip_root:
                pids = pids[1:]
            total = sum(_rss_kb(p) for p in pids)
            self.peak_kb = max(self.peak_kb, total)
            self.max_procs = max(self.max_procs, len(pids))
            self.stop.wait(self.interval)


def measure(cmd: list[str], log_path: Path, env: dict | None = None) -> dict:
    # runs in the output directory, so stray files (e.g. a default mlflow.db) land there
    """Run ``cmd`` once; wall time, peak RSS (GNU time -v if present, else wait4), tree sample."""
    use_gnu = os.path.exists(GNU_TIME)
    time_out = log_path.with_suffix(".time")
    full = [GNU_TIME, "-v", "-o", str(time_out), *cmd] if use_gnu else cmd
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, cwd=log_path.parent)
        sampler = TreeSampler(proc.pid, skip_root=use_gnu)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    maxrss_kb = ru.ru_maxrss  # covers /usr/bin/time itself and the tool (max single process)
    rc = proc.returncode
    if use_gnu and time_out.exists():
        text = time_out.read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if m:
            maxrss_kb = int(m.group(1))
        m = re.search(r"Exit status: (\d+)", text)
        if m:
            rc = int(m.group(1))
        if "Command terminated by signal" in text:
            rc = rc or -1
    return {
        "wall_s": round(wall, 3),
        "rc": rc,
        "maxrss_mb": round(maxrss_kb / 1024, 1),
        "tree_rss_sampled_mb": round(sampler.peak_kb / 1024, 1),
        "peak_rss_mb": round(max(maxrss_kb, sampler.peak_kb) / 1024, 1),
        "max_processes": sampler.max_procs,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
    }


def row_counts(db: Path) -> dict:
    out = {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for t in COUNT_TABLES:
            try:
                out[t] = con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            except sqlite3.Error:
                out[t] = None
    finally:
        con.close()
    return out


DROP_CACHES = "/proc/sys/vm/drop_caches"


def cold_cache_unavailable() -> str | None:
    """Why the page cache cannot be dropped here (None: it can: Linux, as root)."""
    if not os.path.exists(DROP_CACHES):
        return f"no {DROP_CACHES} (not Linux)"
    if os.geteuid() != 0:
        return f"writing {DROP_CACHES} needs root"
    return None


def drop_page_cache() -> None:
    """Write dirty pages out, then drop the page cache, dentries and inodes: the next read of
    the store comes from the disk, as after a reboot or on a store nothing read lately."""
    os.sync()
    with open(DROP_CACHES, "w") as fh:
        fh.write("3\n")


def read_whole_tree(root: Path, threads: int = 8) -> float:
    """Untimed: read every file below ``root`` once, so the page cache holds the store (a warm
    run after a cold one, or after the store was evicted). Returns the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    def read(path: str) -> None:
        try:
            with open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        except OSError:
            pass

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for dirpath, _, files in os.walk(root):
            for name in files:
                pool.submit(read, os.path.join(dirpath, name))
    return time.perf_counter() - t0
