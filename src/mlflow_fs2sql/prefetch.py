"""Warm the page cache ahead of the walk, from a separate process.

A cold read of a small file costs the kernel far more CPU than a warm one (on the bench's 2-core
VMs about 0.1 ms of system time per file), and reading threads inside fs2sql then fight the
walk's own parsing for the GIL: every read that ends hands the GIL over. A child process has its
own GIL. It only opens and reads the run folders it is sent (paths on its stdin, NUL-separated),
on a few threads, and throws the bytes away; the walk still reads every file itself, in its own
order, so nothing it produces depends on the child. When the child cannot start or dies, the
walk just reads a colder cache.

On Linux x86_64 each folder's files are read with one io_uring call (``uring.py``), so the
kernel merges the reads of adjacent files into few disk requests; elsewhere, one file after
the other. Measured on the many-runs bench store (30k runs, 750k files, 2 cores) after dropping
the page cache: migrate 125-144 s without the child and 90-92 s with it reading file by file
(one machine); 38.8 s file by file and 24-27 s batched (another, faster machine, 15 s warm);
see bench/RESULTS.md.

The child never follows a link nor enters a run's ``artifacts`` folder (which the walk never
reads), opens only regular files (and those ``O_NONBLOCK``, so one turned into a FIFO meanwhile
cannot block it) and reads each into one reused buffer. It stops at the end of its input, so
closing the pipe ends it.
"""
from __future__ import annotations

import errno
import itertools
import os
import queue
import subprocess
import sys
import threading
from typing import Iterable, Iterator, List, Optional, Tuple

from .child import module_command
from .uring import Ring

# Threads in the child: 4 read the many-runs store fastest cold on the bench machines (2 cores);
# more only add kernel time (with io_uring, 6 made the child alone faster but migrate slower:
# 26.5-27.5 s against 23.7-24.4 s cold).
PREFETCH_THREADS = 4
# The walk sends a run's folder once it has taken the run PREFETCH_LEAD runs before it, so the
# child is at most that far ahead (its queue and the page cache it fills stay bounded on a store
# larger than memory); a new experiment starts with its first PREFETCH_LEAD runs.
PREFETCH_LEAD = 2048
PREFETCH_STEP = 256  # runs taken between two sends
CHUNK = 256 * 1024  # bytes read per call into a thread's buffer
# No link is followed, and a FIFO opens without waiting for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
# Linux: a read that fails instead of waiting for the disk tells a cached file from a cold one.
_NOWAIT = getattr(os, "RWF_NOWAIT", 0) if hasattr(os, "preadv") else 0
WARM_STREAK = 32
SAMPLE_EVERY = 16
# A run's own subfolder the walk never reads (it copies only the URI); MLflow's default artifact
# location puts models and checkpoints there, gigabytes that would crowd out what the walk needs.
RUN_ARTIFACTS = "artifacts"


class Prefetcher:
    """The parent's end: ``feed`` folders in the order the walk will read them."""

    def __init__(self, threads: int = PREFETCH_THREADS):
        self._proc: Optional[subprocess.Popen] = None  # None: no child, a colder cache
        try:
            self._proc = subprocess.Popen(
                module_command("mlflow_fs2sql.prefetch", str(threads)),
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            pass

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def feed(self, folders: Iterable[str]) -> None:
        if not self.running:
            return
        data = b"".join(os.fsencode(f) + b"\0" for f in folders)
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (OSError, ValueError):  # the child died: carry on without it
            self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:  # the walk is done: what is left to warm is of no use
            proc.kill()
        proc.wait()


def _files(folder: str) -> Iterator[Tuple[int, str]]:
    """(inode number, path) of the regular files under the run folder ``folder``, no link
    followed, none under its ``artifacts`` folder."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if current is not folder or entry.name != RUN_ARTIFACTS:
                                stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            yield entry.inode(), entry.path
                    except OSError:
                        pass  # the walk reports it, if it matters
        except OSError:
            pass


def _warm(folder: str, buf: bytearray) -> bool:
    """Read every regular file under ``folder`` once; return whether any was not cached."""
    cold = False
    for _, path in _files(folder):
        try:
            cold = _read(path, buf) or cold
        except OSError:
            pass
    return cold


def _warm_batched(folder: str, ring: Ring) -> Optional[bool]:
    """``_warm`` in batches of one io_uring call (``uring.py``): the kernel then merges the
    reads of a folder's adjacent files into a few disk requests. Files go in inode order, which
    on ext4 follows their order on the disk. The reads never wait for the disk (the files are
    open ``O_NONBLOCK``, and marked ``RWF_NOWAIT``): a cold file answers EAGAIN once the kernel
    has started reading it into the page cache, and the child moves on. Returns None where the
    file system cannot read without waiting (then ``_warm`` must read the folder)."""
    cold, files = False, _files(folder)
    while True:
        fds: List[int] = []
        try:
            # The inode numbers come with the folder's listing: sorting costs no system call.
            for _, path in sorted(itertools.islice(files, ring.entries)):
                try:
                    fds.append(os.open(path, _OPEN_FLAGS))
                except OSError:
                    pass
            if not fds:
                return cold
            results = ring.read(fds, nowait=True)
            if -errno.EOPNOTSUPP in results:
                return None
            cold = cold or -errno.EAGAIN in results
        except OSError:
            pass  # the walk reports it, if it matters
        finally:
            for fd in fds:
                os.close(fd)


def _read(path: str, buf: bytearray) -> bool:
    """Read one file; return whether its first bytes were not cached (``RWF_NOWAIT``)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        cold = True
        if _NOWAIT:
            try:
                if os.preadv(fd, [buf], 0, _NOWAIT) < len(buf):
                    return False
                cold = False
                os.lseek(fd, len(buf), os.SEEK_SET)  # preadv leaves the offset where it was
            except OSError:
                pass  # not cached (EAGAIN), or a file system that cannot tell: read it
        while os.readv(fd, [buf]) == len(buf):
            pass
        return cold
    finally:
        os.close(fd)


class _Sampler:
    """Once ``WARM_STREAK`` folders in a row were cached already (a warm cache, or a store the
    walk has overtaken), only every ``SAMPLE_EVERY``th folder is read, to notice when the
    cache turns cold again: on a warm cache the child then costs about 1/16 of a full read."""

    def __init__(self):
        self.streak = 0

    def wanted(self, index: int) -> bool:
        return self.streak < WARM_STREAK or index % SAMPLE_EVERY == 0

    def saw(self, cold: bool) -> None:
        self.streak = 0 if cold else self.streak + 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    threads = max(1, int(argv[0])) if argv else PREFETCH_THREADS
    work: queue.SimpleQueue = queue.SimpleQueue()  # (index, folder); None: no more
    sampler = _Sampler()

    def worker() -> None:
        ring = Ring.open(bufsize=CHUNK)
        buf = None if ring else bytearray(CHUNK)
        try:
            while True:
                item = work.get()
                if item is None:
                    return
                index, folder = item
                if sampler.wanted(index):
                    folder = os.fsdecode(folder)
                    cold = _warm_batched(folder, ring) if ring else None
                    if cold is None:  # no io_uring, or a file system that cannot use it
                        if ring:
                            ring.close()
                        ring, buf = None, buf or bytearray(CHUNK)
                        cold = _warm(folder, buf)
                    sampler.saw(cold)
        finally:
            if ring:
                ring.close()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    # This thread only moves paths from the pipe to the queue, so the walk's writes to the
    # pipe never wait for the readers; the walk keeps the queue short (``PREFETCH_LEAD``).
    pending, index = b"", 0
    stdin = sys.stdin.buffer
    while True:
        data = stdin.read1(1 << 16)
        if not data:
            break
        *folders, pending = (pending + data).split(b"\0")
        for folder in folders:
            if folder:
                work.put((index, folder))
                index += 1
    for _ in workers:
        work.put(None)
    for thread in workers:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
