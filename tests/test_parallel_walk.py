"""Parallel reading (``--io-threads``) changes nothing but speed.

A damaged store (a copy of MLflow 3.17.2's small fixture store plus 80 generated runs, some of
them broken in different ways, junk files, a run ID in two experiments) is walked with one
thread and with many, while file reads sleep for random times so that the threads finish out of
order. Entities, their order, skips, ignored paths, notes, counts and -- in strict mode -- the
first error must be the same; so must the database and the JSON report of ``migrate``.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    cli_runner,
    damage_source_version,
    experiment_meta,
    fixture_store,
    run_meta,
    write_files,
)

from mlflow_fs2sql import (
    kinds,  # noqa: F401  (registers every entity kind)
    parse,
)
from mlflow_fs2sql import walk as walk_module
from mlflow_fs2sql.cli import app
from mlflow_fs2sql.errors import InvalidSource
from mlflow_fs2sql.walk import Walk

runner = cli_runner()
EXP, LATER = "7", "9"  # walked in this order


def _rid(i: int) -> str:
    return f"{i:032x}"


@pytest.fixture
def damaged(tmp_path) -> Path:
    store = tmp_path / "mlruns"
    shutil.copytree(fixture_store(damage_source_version(), "small"), store, symlinks=True)
    subprocess.run(["chmod", "-R", "u+w", str(store)], check=True)
    files = {f"{EXP}/meta.yaml": experiment_meta(EXP, "many runs"),
             f"{LATER}/meta.yaml": experiment_meta(LATER, "copies")}
    for i in range(80):
        rid, base = _rid(i), f"{EXP}/{_rid(i)}"
        files[f"{base}/meta.yaml"] = run_meta(rid, EXP, run_name=f"r{i}",
                                              status=1 if i % 9 == 0 else 3)
        files[f"{base}/params/lr"] = str(i)
        files[f"{base}/tags/mlflow.runName"] = f"r{i}"
        files[f"{base}/metrics/loss"] = "".join(f"{1718000000000 + s} {s / 7!r} {s}\n"
                                                for s in range(i % 5 + 1))
        if i % 7 == 0:  # junk: ignored, in walk order
            files[f"{base}/params/.DS_Store"] = b"\0"
        if i % 11 == 0:  # a repeated metric line: counted
            files[f"{base}/metrics/acc"] = "1718000000000 0.5 0\n1718000000000 0.5 0\n"
    # Broken runs, the first at position 30 of the experiment: threads read runs after it
    # first, so "first to finish" would report another one.
    files[f"{EXP}/{_rid(30)}/metrics/loss"] = "1718000000000 x 0\n"
    files[f"{EXP}/{_rid(45)}/meta.yaml"] = "run_id: [unclosed\n"
    files[f"{EXP}/{_rid(60)}/params/bad"] = b"\xff\xfe"
    files[f"{EXP}/{_rid(70)}/meta.yaml"] = run_meta(_rid(70), EXP, status=42)
    # Run 75 also exists in a later experiment, with a bad status too: the duplicate is what
    # a one-thread read reports, since it is checked first. Run 76 is a plain copy.
    files[f"{LATER}/{_rid(75)}/meta.yaml"] = run_meta(_rid(75), LATER, status=42)
    files[f"{LATER}/{_rid(75)}/params/lr"] = "1"
    write_files(store, files)
    shutil.copytree(store / EXP / _rid(76), store / LATER / _rid(76))
    edit = store / LATER / _rid(76) / "meta.yaml"
    edit.write_text(edit.read_text().replace(f"experiment_id: '{EXP}'", f"experiment_id: '{LATER}'"))
    return store


@pytest.fixture
def jittery_reads(monkeypatch):
    """File reads take 0-3 ms at random, so that threads finish in any order."""
    real = parse.read_bytes
    rng = random.Random(15)
    lock = threading.Lock()

    readers = set()

    def read_bytes(*args, **kwargs):
        with lock:
            delay = rng.random() * 0.003
            readers.add(threading.current_thread().name)
        time.sleep(delay)  # waiting, as for a disk: the walk hands reads to its threads
        return real(*args, **kwargs)

    monkeypatch.setattr(parse, "read_bytes", read_bytes)
    # A small store: short measuring segments, so that the walk does reach its threads.
    monkeypatch.setattr(walk_module, "PROBE_ITEMS", 2)
    monkeypatch.setattr(walk_module, "PROBE_EVERY", 12)
    return readers


def _walk_all(store: Path, io_threads: int, skip_invalid: bool = True):
    walk = Walk(str(store), skip_invalid=skip_invalid, io_threads=io_threads)
    entities = list(walk)
    return {
        "entities": entities,
        "skipped": list(walk.skipped),
        "ignored": list(walk.ignored),
        "not_migrated": {k: list(v) for k, v in walk.not_migrated.items()},
        "notes": dict(walk.notes),
        "duplicates": walk.duplicate_metric_lines,
        "running": walk.running_runs,
        "warnings": list(walk.warnings),
    }


def _first_error(store: Path, io_threads: int) -> InvalidSource:
    with pytest.raises(InvalidSource) as info:
        list(Walk(str(store), io_threads=io_threads))
    return info.value


def test_many_threads_walk_exactly_as_one(damaged, jittery_reads):
    one = _walk_all(damaged, 1)
    # the store really is damaged and exercises what must stay in order
    assert len(one["skipped"]) >= 6 and len(one["ignored"]) >= 11 and one["duplicates"] >= 8
    assert one["running"] >= 9 and len(one["entities"]) > 80
    assert jittery_reads == {threading.current_thread().name}
    for n in (2, 8, 32):
        jittery_reads.clear()
        assert _walk_all(damaged, n) == one, n
        io = {t for t in jittery_reads if t.startswith("fs2sql-io")}
        assert len(io) >= min(n, 4), (n, jittery_reads)  # the threads did read the files


def test_the_first_error_is_the_one_a_single_thread_meets(damaged, jittery_reads, monkeypatch):
    slow = parse.read_bytes

    def read_bytes(path, *args, **kwargs):  # the first broken run is the last to be read
        if _rid(30) in str(path):
            time.sleep(0.2)
        return slow(path, *args, **kwargs)

    monkeypatch.setattr(parse, "read_bytes", read_bytes)
    one = _first_error(damaged, 1)
    assert _rid(30) in str(one.path)  # the earliest broken run of the walk
    for n in (2, 8, 32):
        other = _first_error(damaged, n)
        assert (str(other), other.path, other.kind, other.entity_id) == \
            (str(one), one.path, one.kind, one.entity_id), n


def test_a_duplicate_run_id_is_reported_before_its_other_errors(damaged, jittery_reads):
    for n in (1, 8):
        skipped = {(s.entity_id, s.path): s.reason for s in _walk_all(damaged, n)["skipped"]}
        dup = [r for (rid, _), r in skipped.items() if rid == _rid(75)]
        assert dup and "a run ID must be unique" in dup[0], (n, dup)
        assert any(rid == _rid(76) and "must be unique" in r for (rid, _), r in skipped.items())


def test_a_reader_that_stops_early_leaves_no_thread_behind(damaged, jittery_reads):
    before = {t.name for t in threading.enumerate()}
    walk = Walk(str(damaged), skip_invalid=True, io_threads=8)
    it = iter(walk)
    for _ in range(60):
        next(it)
    assert any(t.startswith("fs2sql-io") for t in jittery_reads)
    it.close()  # the consumer gave up (e.g. an error in the writer)
    assert not [t for t in threading.enumerate()
                if t.name.startswith("fs2sql-io") and t.name not in before]


def _dump(db: Path) -> dict:
    con = sqlite3.connect(str(db))
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in tables}
    finally:
        con.close()


def test_migrate_writes_the_same_database_and_report(damaged, tmp_path, jittery_reads):
    out = {}
    for n in (1, 16):
        db = tmp_path / f"out-{n}.db"
        result = runner.invoke(app, ["migrate", str(damaged), str(db), "--skip-invalid",
                                     "--io-threads", str(n), "--json", "-", "--quiet"])
        assert result.exit_code == 4, result.output
        report = json.loads(result.stdout)
        for volatile in ("elapsed_s", "rows_per_s", "target", "start_command"):
            report.pop(volatile)
        out[n] = (_dump(db), report)
    assert out[1][1]["skipped"] and out[1][0]["runs"]
    assert out[16] == out[1]
    result = runner.invoke(app, ["verify", str(damaged), str(tmp_path / "out-1.db"),
                                 "--skip-invalid", "--io-threads", "16"])
    assert result.exit_code == 0, result.output


def test_io_threads_must_be_positive(damaged, tmp_path):
    result = runner.invoke(app, ["migrate", str(damaged), str(tmp_path / "o.db"),
                                 "--io-threads", "0"])
    assert result.exit_code == 2


def test_verify_reads_back_in_batches_with_the_same_findings(damaged, tmp_path, monkeypatch):
    from mlflow_fs2sql import verify as verify_module
    from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

    db = tmp_path / "o.db"
    migrate(str(damaged), str(db), MigrateOptions(skip_invalid=True))
    con = sqlite3.connect(str(db))
    with con:
        con.execute("DELETE FROM params WHERE run_uuid = ?", (_rid(3),))
        con.execute("UPDATE metrics SET value = 9.5 WHERE run_uuid = ? AND step = 0", (_rid(50),))
        con.execute("INSERT INTO tags (key, value, run_uuid) VALUES ('extra', 'x', ?)",
                    (_rid(77),))
    con.close()
    found = {}
    real = verify_module.Verifier._read_back
    for batch, rows in ((1, 20_000), (7, 20_000), (200, 20_000), (200, 30)):
        monkeypatch.setattr(verify_module, "BATCH_ENTITIES", batch)
        monkeypatch.setattr(verify_module, "BATCH_ROWS", rows)
        calls = []

        def read_back(self, pending, calls=calls):
            calls.append(len(pending))
            return real(self, pending)

        monkeypatch.setattr(verify_module.Verifier, "_read_back", read_back)
        report = verify(str(damaged), str(db), skip_invalid=True, io_threads=4)
        found[batch, rows] = (report.mismatch_count, report.mismatches, report.verified)
        if rows == 30:
            assert max(calls) < 30, calls  # long entities: fewer per batch
        else:
            assert max(calls) == min(batch, sum(calls)), calls
    one = found[1, 20_000]
    assert one[0] == 4, one[1]  # the changed value: one row missing, one extra
    assert all(v == one for v in found.values())


def test_the_documented_default_is_the_walks():
    from conftest import REPO

    from mlflow_fs2sql.walk import DEFAULT_IO_THREADS

    result = runner.invoke(app, ["migrate", "--help"], terminal_width=200)
    assert f"(default {DEFAULT_IO_THREADS})" in " ".join(result.output.split())
    assert f"`--io-threads N` | threads reading the store's files (default {DEFAULT_IO_THREADS};" \
        in (REPO / "README.md").read_text()


def _levels(fn, n_items: int, io_threads: int = 8) -> list:
    walk = Walk(".", io_threads=io_threads)
    try:
        assert list(walk.in_order(fn, list(range(n_items)))) == [fn.result(i)
                                                                for i in range(n_items)]
    finally:
        walk._close_pool()
    return walk.io_levels


class _Waits:
    """A read that waits for a slow device: threads overlap it."""

    def __call__(self, i):
        time.sleep(0.004)
        return self.result(i)

    @staticmethod
    def result(i):
        return i * 3


def test_the_walk_climbs_to_more_threads_where_reads_wait(monkeypatch):
    monkeypatch.setattr(walk_module, "PROBE_ITEMS", 16)
    monkeypatch.setattr(walk_module, "PROBE_EVERY", 64)
    levels = _levels(_Waits(), 16 * 4 + 64 + 16 * 4 + 64)
    assert levels and all(level >= 4 for level in levels), levels
    assert _levels(_Waits(), 400, io_threads=2) and max(_levels(_Waits(), 400, io_threads=2)) <= 2


class _LosesOnThreads:
    """A read that takes 1 ms on the caller's thread and 3 ms, one at a time, on a worker: the
    cost of threads on a warm cache, made large and independent of the machine's load. (A
    spin under the GIL ties 1 and 2 threads within a few percent: on a busy 2-core CI machine,
    noise tipped measurements to 2 or 4 threads and two tests failed now and then.)"""

    _lock = threading.Lock()

    def __call__(self, i):
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.001)
        else:
            with self._lock:
                time.sleep(0.003)
        return self.result(i)

    @staticmethod
    def result(i):
        return -i


def test_the_walk_stays_on_one_thread_where_threads_do_not_pay(monkeypatch):
    # Threads cost each read 3x here. With a real GIL-bound read instead, a busy 2-core machine
    # chose 4 threads in one measurement of four: what a real store does is the bench's to show.
    monkeypatch.setattr(walk_module, "PROBE_ITEMS", 24)
    monkeypatch.setattr(walk_module, "PROBE_EVERY", 48)
    monkeypatch.setattr(walk_module, "PROBE_EVERY_MAX", 48)
    # each measurement reads a 1-thread and a 2-thread segment (48 items), then 48 at its choice
    levels = _levels(_LosesOnThreads(), 3 * (24 * 2 + 48))
    assert levels == [1, 1, 1], levels


class _WaitsThenLoses:
    """Waits (threads pay) for the first ``switch`` items, then loses on threads."""

    def __init__(self, switch: int):
        self.switch, self.waits, self.loses = switch, _Waits(), _LosesOnThreads()

    def __call__(self, i):
        (self.waits if i < self.switch else self.loses)(i)
        return self.result(i)

    @staticmethod
    def result(i):
        return i * 3


def test_the_same_choice_again_puts_the_next_measurement_twice_as_far_off(monkeypatch):
    # On a warm cache each measurement reads a segment at a thread count that loses; measured
    # every PROBE_EVERY runs, that cost a warm migration 20%. A choice that stays the same is
    # measured twice as late each time (up to PROBE_EVERY_MAX), a new one after PROBE_EVERY.
    monkeypatch.setattr(walk_module, "PROBE_ITEMS", 16)
    monkeypatch.setattr(walk_module, "PROBE_EVERY", 64)
    monkeypatch.setattr(walk_module, "PROBE_EVERY_MAX", 256)
    # 48 measuring (1, 2, 4 threads) + 64, 48 + 128, 48 + 256, 48 + 256: 4 measurements, not 8
    assert _levels(_Waits(), 896, io_threads=4) == [4, 4, 4, 4]
    # Waits for 288 items (two measurements and 64 + 128 items after them), then loses on threads:
    # the third chooses 1 thread (a 1-thread and a 2-thread segment: 32 items), so the fourth
    # comes 64 items later, at item 384 -- not 256 later, as it would for the same choice.
    assert _levels(_WaitsThenLoses(288), 416, io_threads=4) == [4, 4, 1, 1]


class _WaitsOnThreads(_Waits):
    """A slow read that records whether it ran on the caller's thread."""

    def __init__(self, seconds: float):
        self.seconds, self.on_caller = seconds, 0

    def __call__(self, i):
        if threading.current_thread() is threading.main_thread():
            self.on_caller += 1
        time.sleep(self.seconds)
        return self.result(i)


def test_a_measuring_segment_ends_when_its_time_is_up(monkeypatch):
    # Where one item waits long (a run's files on NFS), the one-thread step of the ladder must
    # not read a whole segment one after the other: it stops after its time, once it has read
    # its minimum, and the climb goes on from there.
    monkeypatch.setattr(walk_module, "PROBE_ITEMS", 64)
    monkeypatch.setattr(walk_module, "PROBE_MIN_ITEMS", 4)
    monkeypatch.setattr(walk_module, "PROBE_SECONDS", 0.05)
    monkeypatch.setattr(walk_module, "PROBE_EVERY", 1000)
    fn = _WaitsOnThreads(0.02)
    levels = _levels(fn, 300)
    assert fn.on_caller == 4  # 4 x 20 ms > 50 ms: the caller's thread read 4 items, not 64
    assert levels == [8], levels


def test_the_choice_carries_over_to_the_next_call_of_the_same_kind(monkeypatch):
    # The runs of one experiment after another: measured once, not again at each experiment
    # (each new climb starts on one thread, which is the slowest step where reads wait).
    monkeypatch.setattr(walk_module, "PROBE_ITEMS", 16)
    monkeypatch.setattr(walk_module, "PROBE_EVERY", 400)
    walk = Walk(".", io_threads=8)
    fn = _WaitsOnThreads(0.004)
    try:
        assert list(walk.in_order(fn, list(range(100)))) == [fn.result(i) for i in range(100)]
        first = fn.on_caller
        assert first > 0 and len(walk.io_levels) == 1 and walk.io_levels[0] >= 4, walk.io_levels
        assert list(walk.in_order(fn, list(range(100)))) == [fn.result(i) for i in range(100)]
        assert fn.on_caller == first and len(walk.io_levels) == 1  # read at the level chosen
        # another kind of item (looking into folders) is measured on its own
        assert list(walk.in_order(fn, list(range(100)), kind="look")) == \
            [fn.result(i) for i in range(100)]
        assert fn.on_caller > first and len(walk.io_levels) == 2
        # after PROBE_EVERY items of a kind, it measures again
        list(walk.in_order(fn, list(range(400))))
        assert len(walk.io_levels) == 3, walk.io_levels
    finally:
        walk._close_pool()


def test_the_ladder_of_thread_counts():
    from mlflow_fs2sql.walk import _ladder

    assert _ladder(1) == [1]
    assert _ladder(2) == [1, 2]
    assert _ladder(8) == [1, 2, 4, 8]
    assert _ladder(12) == [1, 2, 4, 8, 12]
