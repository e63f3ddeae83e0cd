"""The io_uring batch reads of the page-cache warmer (``uring.py``, ``prefetch._warm_batched``).

A batch must read what one-by-one reads would (byte counts, errors per file, never an exception
for one bad file), ``nowait`` must tell a cached file from a cold one without waiting, and
where io_uring is missing the child must read file by file instead.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import cached, evict

from mlflow_fs2sql import prefetch, uring

RING = uring.Ring.open()
needs_ring = pytest.mark.skipif(
    RING is None, reason="io_uring is not usable here (not Linux x86_64, or forbidden)")


def _evicts(folder: Path) -> bool:
    """Whether this file system drops pages on request (tmpfs, for one, keeps them). Probed on
    a file of its own: a probe with RWF_NOWAIT starts reading the file back in."""
    probe = folder / ".probe"
    probe.write_bytes(b"p" * 10_000)
    evict(probe)
    was_cached = cached(probe)
    probe.unlink()
    return not was_cached


@needs_ring
def test_a_batch_reads_each_file_up_to_the_buffer_and_reports_errors_per_file(tmp_path):
    sizes = [0, 100, 5000, 300 * 1024]
    fds = []
    for i, size in enumerate(sizes):
        (tmp_path / str(i)).write_bytes(b"x" * size)
        fds.append(os.open(tmp_path / str(i), os.O_RDONLY))
    closed = os.open(tmp_path / "0", os.O_RDONLY)
    os.close(closed)  # a file descriptor that is no longer open
    try:
        got = RING.read(fds + [closed], nowait=False)
    finally:
        for fd in fds:
            os.close(fd)
    assert got == [0, 100, 5000, 256 * 1024, -9]  # EBADF, not an exception


@needs_ring
def test_more_files_than_ring_entries_are_refused():
    with pytest.raises(ValueError):
        RING.read([0] * (RING.entries + 1), nowait=True)


@needs_ring
def test_nowait_answers_eagain_for_a_cold_file_and_starts_reading_it(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"y" * 20_000)
    if not _evicts(tmp_path):
        pytest.skip("this file system keeps the pages despite POSIX_FADV_DONTNEED")
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        first = RING.read([fd], nowait=True)
        assert first == [-11]  # EAGAIN: not cached, and not waited for
        assert RING.read([fd], nowait=False) == [20_000]
        assert RING.read([fd], nowait=True) == [20_000]  # cached now
    finally:
        os.close(fd)


@needs_ring
def test_a_folder_is_warmed_in_batches_and_reported_cold_once(tmp_path):
    ring = uring.Ring.open(entries=4)
    folder = tmp_path / "run"
    paths = []
    for sub in ("", "params", "metrics/val"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(5):  # 15 files: four batches of at most 4
            paths.append(folder / sub / f"f{i}")
            paths[-1].write_bytes(f"{sub} {i}\n".encode() * 500)
    if not _evicts(tmp_path):
        pytest.skip("this file system keeps the pages despite POSIX_FADV_DONTNEED")
    for path in paths:
        evict(path)
    assert prefetch._warm_batched(str(folder), ring) is True
    # The batch does not wait for the disk: the kernel finishes reading in the background.
    deadline = time.monotonic() + 10
    while [p for p in paths if not cached(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in paths if not cached(p)] == []
    assert prefetch._warm_batched(str(folder), ring) is False
    ring.close()


@needs_ring
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_batch_skips_fifos_and_links(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "meta.yaml").write_text("run_id: x\n")
    os.mkfifo(folder / "pipe")
    os.symlink(tmp_path / "elsewhere", folder / "link")
    (tmp_path / "elsewhere").write_bytes(b"z" * 100)
    opened = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real_open(path, *args, **kwargs)

    os.open = spy
    try:
        prefetch._warm_batched(str(folder), RING)
    finally:
        os.open = real_open
    assert opened == ["meta.yaml"]


def test_without_io_uring_the_child_reads_file_by_file(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "meta.yaml").write_text("run_id: x\n")
    monkeypatch.setattr(uring, "supported", lambda: False)
    assert uring.Ring.open() is None
    warmed = []
    monkeypatch.setattr(prefetch, "_warm", lambda f, buf: warmed.append(f) or False)
    monkeypatch.setattr(prefetch, "_warm_batched", lambda f, ring: pytest.fail("no ring"))
    stdin = io.TextIOWrapper(io.BytesIO(os.fsencode(str(folder)) + b"\0"))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert prefetch.main(["2"]) == 0
    assert warmed == [str(folder)]


class _RingWithoutNowait:
    """A file system that cannot read without waiting (no FMODE_NOWAIT): EOPNOTSUPP per read."""
    entries = 8
    closed = False

    def read(self, fds, nowait):
        return [-errno.EOPNOTSUPP] * len(fds)

    def close(self):
        self.closed = True


def test_where_reads_cannot_skip_waiting_the_child_reads_file_by_file(tmp_path, monkeypatch):
    folders = []
    for name in ("a", "b"):
        folders.append(tmp_path / name)
        folders[-1].mkdir()
        (folders[-1] / "meta.yaml").write_text("run_id: x\n")
    ring = _RingWithoutNowait()
    assert prefetch._warm_batched(str(folders[0]), ring) is None
    monkeypatch.setattr(uring.Ring, "open", classmethod(lambda cls, **kw: ring))
    warmed = []
    monkeypatch.setattr(prefetch, "_warm", lambda f, buf: warmed.append(f) or False)
    data = b"".join(os.fsencode(str(f)) + b"\0" for f in folders)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert prefetch.main(["1"]) == 0
    assert warmed == [str(f) for f in folders] and ring.closed
