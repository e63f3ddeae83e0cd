"""The page-cache warmer (``prefetch.py``): a child process that reads ahead and changes nothing.

What the walk yields is covered by ``test_parallel_walk.py`` (its threaded walks run with the
warmer). Here: the child ends, never blocks on a FIFO or follows a link, tells cached files from
cold ones, thins out on a warm cache, and the walk starts it only where it may help. Also
verify's read-ahead of an SQLite database (``targets/sqlite.py``), the other page-cache warmer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cached, evict, experiment_meta, run_meta, write_files

from mlflow_fs2sql import prefetch
from mlflow_fs2sql import walk as walk_module
from mlflow_fs2sql.walk import Walk


def _store(tmp_path: Path, runs: int = 6) -> Path:
    store = tmp_path / "mlruns"
    files = {"1/meta.yaml": experiment_meta("1", "e")}
    for i in range(runs):
        rid = f"{i:032x}"
        files[f"1/{rid}/meta.yaml"] = run_meta(rid, "1", run_name=f"r{i}", status=3)
        files[f"1/{rid}/params/lr"] = str(i)
    write_files(store, files)
    return store


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_the_child_reads_what_it_is_sent_and_ends_without_blocking_on_a_fifo(tmp_path):
    run = tmp_path / "run"
    (run / "metrics").mkdir(parents=True)
    (run / "meta.yaml").write_text("run_id: x\n")
    (run / "metrics" / "loss").write_bytes(b"1 0.5 0\n" * 100_000)  # > one read of CHUNK
    os.mkfifo(run / "tags")  # opening it for reading would wait for a writer forever
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "pipe")
    os.symlink(outside / "pipe", run / "params")  # a link is never followed
    os.symlink(outside, run / "linked")
    done = subprocess.run([sys.executable, "-m", "mlflow_fs2sql.prefetch", "2"],
                          input=os.fsencode(str(run)) + b"\0" + b"/no/such/folder\0",
                          timeout=60)
    assert done.returncode == 0


@pytest.mark.skipif(not prefetch._NOWAIT, reason="needs preadv with RWF_NOWAIT (Linux)")
def test_a_file_dropped_from_the_cache_reads_as_cold_once(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000)
    evict(path)
    buf = bytearray(prefetch.CHUNK)
    first = prefetch._read(str(path), buf)
    if not first:
        pytest.skip("this file system keeps the pages despite POSIX_FADV_DONTNEED")
    assert prefetch._read(str(path), buf) is False  # the first read brought it in


def test_on_a_warm_cache_the_child_reads_only_samples_until_one_is_cold():
    sampler = prefetch._Sampler()
    wanted = []
    for i in range(200):
        want = sampler.wanted(i)
        wanted.append(want)
        if want:
            sampler.saw(cold=(i == 96))
    streak = prefetch.WARM_STREAK
    assert all(wanted[:streak])
    # after the streak only every SAMPLE_EVERY-th folder, until folder 96 was cold ...
    assert [i for i in range(streak, 97) if wanted[i]] == \
        [i for i in range(streak, 97) if i % prefetch.SAMPLE_EVERY == 0]
    # ... then every folder again, for a new streak
    assert all(wanted[97:97 + streak])


class _Recorder:
    made = []

    def __init__(self):
        self.fed, self.batches, self.closed = [], [], False
        _Recorder.made.append(self)

    def feed(self, folders):
        self.batches.append(list(folders))
        self.fed.extend(folders)

    def close(self):
        self.closed = True


@pytest.fixture
def recorder(monkeypatch):
    _Recorder.made = []
    monkeypatch.setattr(walk_module, "Prefetcher", _Recorder)
    return _Recorder


def test_the_walk_sends_its_runs_in_its_own_order_and_closes_the_child(tmp_path, recorder):
    store = _store(tmp_path)
    walk = Walk(str(store), io_threads=4)
    runs = [e.path for e in walk if type(e).__name__ == "Run"]
    (child,) = recorder.made
    assert child.fed == runs and len(runs) == 6
    assert child.closed


def test_the_child_is_kept_a_bounded_number_of_runs_ahead(tmp_path, recorder, monkeypatch):
    monkeypatch.setattr(walk_module, "PREFETCH_LEAD", 4)
    monkeypatch.setattr(walk_module, "PREFETCH_STEP", 2)
    store = _store(tmp_path, runs=12)
    runs = [e.path for e in Walk(str(store), io_threads=4) if type(e).__name__ == "Run"]
    (child,) = recorder.made
    # the first 4 at once, then 2 more for every 2 runs the walk has taken
    assert child.batches == [runs[0:4], runs[4:6], runs[6:8], runs[8:10], runs[10:12]]


def test_no_child_for_one_thread_nor_for_sync(tmp_path, recorder):
    store = _store(tmp_path)
    list(Walk(str(store), io_threads=1))
    list(Walk(str(store), io_threads=8, selector=lambda kind, uid, path: True))
    assert recorder.made == []


def test_a_walk_given_up_early_ends_the_child(tmp_path):
    store = _store(tmp_path, runs=40)
    walk = Walk(str(store), io_threads=4)
    it = iter(walk)
    next(it), next(it)
    proc = walk._prefetcher._proc
    assert proc.poll() is None  # still reading ahead
    it.close()
    assert proc.poll() is not None and walk._prefetcher is None


def test_a_child_that_cannot_start_or_dies_changes_nothing(tmp_path, monkeypatch):
    store = _store(tmp_path)
    expected = [repr(e) for e in Walk(str(store), io_threads=1)]
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    assert not prefetch.Prefetcher().running
    assert [repr(e) for e in Walk(str(store), io_threads=4)] == expected
    monkeypatch.undo()
    child = prefetch.Prefetcher()
    child._proc.kill()
    child._proc.wait()
    child.feed([str(store)] * 100_000)  # a pipe nobody reads: no error, no hang
    assert not child.running
    child.close()


def test_the_child_imports_nothing_from_the_working_folder(tmp_path, monkeypatch):
    # ``python -m`` would put the working folder first on sys.path: a user's queue.py there
    # would be imported, and run, by the child instead of the standard library's.
    store = _store(tmp_path, runs=8)
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "ran"
    for name in ("queue", "threading", "platform", "mmap", "ctypes"):
        (work / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    monkeypatch.chdir(work)
    child = prefetch.Prefetcher(2)
    assert child.running
    child.feed(str(p) for p in sorted((store / "1").iterdir()) if p.is_dir())
    proc = child._proc
    proc.stdin.close()  # the end of its input: it reads what it has, then ends by itself
    assert proc.wait(timeout=60) == 0
    assert not marker.exists(), marker.read_text()


def test_the_child_reads_no_artifacts_only_what_the_walk_reads(tmp_path):
    # MLflow's default artifact location is the run's own artifacts folder: models and
    # checkpoints the walk never reads (only their URI). A folder named so deeper down, say
    # a metric key "artifacts/x", is read as usual.
    run = tmp_path / "run"
    write_files(run, {"meta.yaml": "run_id: x\n", "artifacts/model.bin": "m" * 1000,
                      "artifacts/sub/weights": "w", "metrics/artifacts/x": "1 0.5 0\n",
                      "params/lr": "0.1"})
    got = sorted(os.path.relpath(path, run) for _, path in prefetch._files(str(run)))
    assert got == ["meta.yaml", os.path.join("metrics", "artifacts", "x"),
                   os.path.join("params", "lr")]


@pytest.mark.skipif(not prefetch._NOWAIT, reason="needs preadv with RWF_NOWAIT (Linux)")
def test_verify_reads_the_whole_sqlite_database_ahead_not_one_window(tmp_path):
    # posix_fadvise(WILLNEED) brought 8 MB of a 219 MB database into the cache (one readahead
    # window, read_ahead_kb); verify's index lookups then waited for random reads.
    from mlflow_fs2sql.targets.sqlite import _read_ahead

    path = tmp_path / "out.db"
    size = 48 << 20  # past any usual readahead window (128 KB; 8 MB on the bench machines)
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) * (size >> 20))
    evict(path)
    # The probe at offset 0 lies in the window the old call read; a miss elsewhere could start
    # a readahead where the assertion looks, so each place is asked once.
    if cached(path, 0):
        pytest.skip("this file system keeps the pages despite POSIX_FADV_DONTNEED")
    thread = _read_ahead(str(path))
    if thread is not None:
        thread.join(60)
    # ask at offsets the lookups would hit, beyond the first window, ending with the last page
    assert [cached(path, offset) for offset in (size // 3, size // 2, size - 4096)] == [True] * 3
