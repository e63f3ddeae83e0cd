"""Parsers for the FileStore's file formats: value files, meta.yaml, metric lines.

Each parser takes bytes or text already read and raises ``InvalidSource`` naming the file. They
mirror what MLflow's FileStore writes (``mlflow/store/tracking/file_store.py``) and what its SQL
store would hold for the same data (``SqlAlchemyStore``).
"""

from __future__ import annotations

import math
import os
import stat
import time
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import yaml

from .errors import InvalidSource
from .model import KeyValue, MetricPoint

try:  # libyaml is about ten times faster; PyYAML falls back to pure Python without it
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _YamlLoader = yaml.SafeLoader

# MLflow's SQL store cannot hold infinities; SqlAlchemyStore.sanitize_metric_value maps them here.
MAX_DOUBLE = 1.7976931348623157e308
_INF = math.inf

# MLflow's SQL columns for times, steps and versions are 64-bit integers (BigInteger).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Names an operating system or an editor leaves behind; never MLflow keys (reported as ignored).
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "__MACOSX"})


def is_junk(name: str) -> bool:
    # Narrow on purpose: any other name may be a real key (keys may start with '.').
    return (
        name in JUNK_NAMES
        or name.startswith("._")
        or name.endswith("~")
        or (name.startswith(".") and name.endswith((".swp", ".swo")))
    )


def decode_text(data: bytes, path: str, kind: str = "", entity_id: str = "") -> str:
    """UTF-8, verbatim: no newline translation, no stripping (MLflow reads values this way)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSource(
            f"is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); MLflow "
            "writes "
            "every value file as UTF-8, so this file was changed or damaged outside MLflow.",
            path=path,
            kind=kind,
            entity_id=entity_id,
        ) from None


class StoreBounds:
    """The store being walked: symbolic links may lead anywhere inside it, never outside.

    ``check`` looks at each path component below the root once (one ``lstat``; directories are
    cached), so a link anywhere on the way -- an experiment, a run, a ``params`` folder, a value
    file -- is resolved with ``os.path.realpath`` and refused when it leaves the store or leads
    nowhere. It also records the newest modification time of the files read (``note_mtime``), so
    the walk can warn when something was still writing to the store during the migration.
    """

    _MAX_CACHED = 4096

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.real = os.path.realpath(self.root)
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._ok: Set[str] = set()
        self.started_ns = time.time_ns()
        self.modified_during: List[str] = []  # files whose mtime is after the walk started

    def inside(self, real: str) -> bool:
        return real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)

    def check(self, path: str, kind: str = "", entity_id: str = "", *,
              last_is_dir: bool = False) -> None:
        prefix = self._prefix
        if not path.startswith(prefix):
            path = os.path.abspath(path)
            if not path.startswith(prefix):
                return
        current = self.root.rstrip(os.sep)
        parts = path[len(prefix):].split(os.sep)
        last = len(parts) - 1
        for i, part in enumerate(parts):
            current = current + os.sep + part
            if current in self._ok:
                continue
            if os.path.islink(current):
                target = os.path.realpath(current)
                if not self.inside(target):
                    raise InvalidSource(
                        f"is a symbolic link to {target}, outside the store; fs2sql reads only "
                        "what lies inside the store folder.",
                        path=current, kind=kind, entity_id=entity_id,
                        hint="Replace the link with a copy of what it points to (or move the "
                        "store so that it contains it), or run again with --skip-invalid to "
                        "leave this entity out.")
                if not os.path.exists(current):
                    raise InvalidSource(
                        f"is a symbolic link to {os.readlink(current)}, which does not exist "
                        "(or is a loop of links).",
                        path=current, kind=kind, entity_id=entity_id)
            if i < last or last_is_dir:  # directories only; files are looked at once anyway
                if len(self._ok) >= self._MAX_CACHED:
                    self._ok.clear()
                self._ok.add(current)

    def trust(self, folder: str) -> None:
        """``folder`` is known not to be a link (its DirEntry said so) below checked folders."""
        if len(self._ok) >= self._MAX_CACHED:
            self._ok.clear()
        self._ok.add(folder)

    def note_mtime(self, path: str, mtime_ns: int) -> None:
        # Between the start and now: a file dated in the future was copied from a machine whose
        # clock ran ahead, not changed during this walk.
        if mtime_ns >= self.started_ns and len(self.modified_during) < 1000 \
                and mtime_ns <= time.time_ns():
            self.modified_during.append(path)


_BOUNDS: Optional[StoreBounds] = None


def set_store_root(root: Optional[str]) -> Optional[StoreBounds]:
    """Confine reads to the store at ``root`` (``Walk`` sets it; None: no confinement)."""
    global _BOUNDS
    _BOUNDS = StoreBounds(root) if root is not None else None
    return _BOUNDS


def store_bounds() -> Optional[StoreBounds]:
    return _BOUNDS


def check_inside(path: str, kind: str = "", entity_id: str = "", *,
                 is_dir: bool = False) -> None:
    """Raise ``InvalidSource`` if ``path`` goes through a link out of the store (or nowhere).
    ``is_dir``: remember ``path`` as checked (folders below it then cost no system call)."""
    if _BOUNDS is not None:
        _BOUNDS.check(path, kind, entity_id, last_is_dir=is_dir)


def _read_all(fd: int) -> bytes:
    """Everything from ``fd`` with plain ``read`` calls: one for a file under ``_CHUNK`` bytes,
    where ``open().read()`` makes four or five system calls -- a third of the cost of reading
    750k small files, and each call is a turn of the GIL when threads read. A read of a regular
    file that returns fewer bytes than asked has met the end of the file (POSIX; also on NFS,
    Lustre and FUSE file systems without direct I/O), so no second call is needed to see it.

    The first read asks for ``_FIRST`` bytes: below glibc's mmap threshold (128 KiB), so its
    buffer comes from the heap and shrinks in place. A first buffer of 1 MiB would be mapped and
    shrunk by mremap for every file: twice the system time on the many-runs store."""
    data = os.read(fd, _FIRST)
    if len(data) < _FIRST:
        return data
    chunks = [data]
    while True:
        more = os.read(fd, _CHUNK)
        if not more:
            return b"".join(chunks)
        chunks.append(more)


_CHUNK = 1 << 20
_FIRST = 1 << 16


def _read_fd(fd: int, path: str, kind: str, entity_id: str) -> bytes:
    """Read and close ``fd`` (opened from ``path``), noting its modification time."""
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidSource("is a folder where MLflow writes a file.", path=path, kind=kind,
                                entity_id=entity_id)
        if _BOUNDS is not None:
            _BOUNDS.note_mtime(path, st.st_mtime_ns)
        try:
            return _read_all(fd)
        except OSError as exc:
            raise InvalidSource(f"cannot be read ({exc.strerror or exc}).", path=path, kind=kind,
                                entity_id=entity_id) from None
    finally:
        os.close(fd)


def read_bytes(path: str, kind: str = "", entity_id: str = "", *, watch: bool = False) -> bytes:
    """The file's bytes. ``watch``: a file MLflow appends to or rewrites while logging (meta.yaml,
    metric files) -- its modification time is compared with the walk's start."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InvalidSource(
            f"cannot be read ({exc.strerror or exc}).", path=path, kind=kind, entity_id=entity_id
        ) from None
    try:
        if watch and _BOUNDS is not None:
            _BOUNDS.note_mtime(path, os.fstat(fd).st_mtime_ns)
        return _read_all(fd)
    except IsADirectoryError:
        raise InvalidSource(
            "is a folder where MLflow writes a file.", path=path, kind=kind, entity_id=entity_id
        ) from None
    except OSError as exc:
        raise InvalidSource(
            f"cannot be read ({exc.strerror or exc}).", path=path, kind=kind, entity_id=entity_id
        ) from None
    finally:
        os.close(fd)


def read_yaml_mapping(path: str, kind: str, entity_id: str) -> Dict[str, Any]:
    """A meta.yaml as a dict; empty, unparseable or non-mapping files are invalid."""
    check_inside(os.path.dirname(path), kind, entity_id, is_dir=True)  # cached for a run
    try:  # the file itself: a link is rare, so look only when O_NOFOLLOW meets one
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise InvalidSource("is missing.", path=path, kind=kind, entity_id=entity_id) from None
    except OSError:
        check_inside(path, kind, entity_id)  # a link out of the store, dangling, a loop
        data = read_bytes(path, kind, entity_id, watch=True)
    else:
        data = _read_fd(fd, path, kind, entity_id)
    text = decode_text(data, path, kind, entity_id)
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise InvalidSource(
            f"is not valid YAML{at} ({getattr(exc, 'problem', None) or exc}).",
            path=path,
            kind=kind,
            entity_id=entity_id,
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # YAML that parses but cannot be built: an impossible date (2024-13-45), nesting too deep.
        raise InvalidSource(
            f"is not valid YAML ({type(exc).__name__}: {exc}).",
            path=path,
            kind=kind,
            entity_id=entity_id,
        ) from None
    if data is None:
        raise InvalidSource("is empty.", path=path, kind=kind, entity_id=entity_id)
    if not isinstance(data, dict):
        raise InvalidSource(
            f"should hold a YAML mapping of fields but holds a {type(data).__name__}.",
            path=path,
            kind=kind,
            entity_id=entity_id,
        )
    return data


def field_int(
    meta: Dict[str, Any], key: str, path: str, kind: str, entity_id: str
) -> Optional[int]:
    """An optional integer field (times in ms); bools and non-integral values are invalid."""
    value = meta.get(key)
    if value is None:
        return None

    def bad(what: str) -> InvalidSource:
        return InvalidSource(f"field '{key}' {what}", path=path, kind=kind, entity_id=entity_id)

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad(f"should be an integer but is {value!r}.")
    try:
        number = int(value)
    except ValueError:
        raise bad(f"should be an integer but is {value!r}.") from None
    if not INT64_MIN <= number <= INT64_MAX:
        raise bad(f"is {value!r}, too large for MLflow's 64-bit integer column.")
    return number


def field_str(
    meta: Dict[str, Any], key: str, path: str, kind: str, entity_id: str
) -> Optional[str]:
    """An optional text field. YAML may have typed a numeric-looking value; keep its text."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise InvalidSource(
            f"field '{key}' should be text but is a {type(value).__name__}.",
            path=path,
            kind=kind,
            entity_id=entity_id,
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def walk_key_files(
    folder: str, ignored: List[str], kind: str = "", entity_id: str = ""
) -> Iterator[Tuple[str, str]]:
    """(key, file path) for every file below ``folder``; keys with '/' live in sub-folders.

    Sorted for determinism. A missing folder and empty directories (left by deleted keys) yield
    nothing; OS and editor junk is appended to ``ignored`` instead of being read as a key. A file
    where the folder should be, an unreadable folder, a link out of the store and a link back to
    a folder already walked (a loop) raise ``InvalidSource`` naming the path.
    """

    def bad(what: str, path: str) -> InvalidSource:
        return InvalidSource(what, path=path, kind=kind, entity_id=entity_id)

    try:
        mode = os.lstat(folder).st_mode  # one call: exists? a link? a folder?
    except FileNotFoundError:
        return
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror or exc}).", folder) from None
    if stat.S_ISLNK(mode):
        check_inside(folder, kind, entity_id)
        mode = os.stat(folder).st_mode
    if not stat.S_ISDIR(mode):
        raise bad("is a file where MLflow keeps a folder (one file per key).", folder)
    visited: Set[str] = set()
    stack = [("", folder)]
    while stack:
        prefix, directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name, reverse=True)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise bad(f"cannot be read ({exc.strerror or exc}).", directory) from None
        for entry in entries:
            if is_junk(entry.name):
                ignored.append(entry.path)
                continue
            if entry.is_symlink():
                check_inside(entry.path, kind, entity_id)
                if not os.path.exists(entry.path):
                    raise bad(f"is a symbolic link to {os.readlink(entry.path)}, which does "
                              "not exist (or is a loop of links).", entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError as exc:
                raise bad(f"cannot be read ({exc.strerror or exc}).", entry.path) from None
            if is_dir:
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if not visited:
                        visited.add(os.path.realpath(folder))
                    here = os.path.realpath(directory)
                    if real in visited or here == real or here.startswith(real + os.sep):
                        raise bad(f"is a symbolic link back to {real}, which is already being "
                                  "read: following it would never end.", entry.path)
                    visited.add(real)
                stack.append((prefix + entry.name + "/", entry.path))
            else:
                yield prefix + entry.name, entry.path


def read_key_values(
    folder: str, kind: str, entity_id: str, ignored: List[str]
) -> Tuple[KeyValue, ...]:
    items = []
    for key, path in walk_key_files(folder, ignored, kind, entity_id):
        items.append((key, decode_text(read_bytes(path, kind, entity_id), path, kind, entity_id)))
    items.sort()
    return tuple(items)


def sanitize_metric(value: float) -> Tuple[float, bool]:
    """(stored value, is_nan) exactly as SqlAlchemyStore.sanitize_metric_value."""
    if math.isnan(value):
        return 0.0, True
    if math.isinf(value):
        return (MAX_DOUBLE if value > 0 else -MAX_DOUBLE), False
    return value, False


class _BadLine(ValueError):
    """A metric line of the wrong shape (as opposed to a field that is not a number)."""


def parse_metric_lines(
    data: bytes, key: str, path: str, run_id: str
) -> Tuple[List[MetricPoint], MetricPoint, int]:
    """All points of one metric file, de-duplicated, plus its latest point and the duplicate count.

    Lines are ``ts value [step [dataset_name dataset_digest]]`` (2 fields before MLflow 1.0, 5 when
    logged with a dataset, 3 otherwise); MLflow's reader accepts exactly these and strips each line.
    Identical points (same timestamp, step and stored value) are kept once: the SQL primary key
    spans every column, and MLflow's SQL store keeps one row for them.

    The latest point is chosen as SqlAlchemyStore does when logging: in file (= logging) order, a
    point replaces the current one only if (step, timestamp, stored value) is strictly greater.
    """
    text = decode_text(data, path, "run", run_id)
    points: List[MetricPoint] = []
    seen = set()
    latest: Optional[MetricPoint] = None
    duplicates = 0
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise InvalidSource(
            "is an empty metric file (MLflow treats it as malformed).",
            path=path,
            kind="run",
            entity_id=run_id,
        )
    lstep = lts = lval = None
    append, add = points.append, seen.add
    for number, line in enumerate(lines, 1):
        parts = line.split()  # like MLflow's strip().split(" "), also past a stray double space
        try:
            n = len(parts)
            if n == 3 or n == 5:
                p0, p2 = parts[0], parts[2]
                ts, raw, step = int(p0), float(parts[1]), int(p2)
            elif n == 2:
                p0 = p2 = parts[0]
                ts, raw, step = int(p0), float(parts[1]), 0
            elif n == 0:
                raise _BadLine("is blank (MLflow cannot read a metric file with a blank line)")
            else:
                raise _BadLine(f"has {n} fields; MLflow writes 'timestamp value step'")
            if (len(p0) > 18 or len(p2) > 18) and not (
                    INT64_MIN <= ts <= INT64_MAX and INT64_MIN <= step <= INT64_MAX):
                raise _BadLine("has a timestamp or step too large for MLflow's 64-bit columns")
        except ValueError as exc:
            detail = str(exc) if isinstance(exc, _BadLine) else f"cannot be parsed ({exc})"
            raise InvalidSource(
                f"line {number} {detail}: {line[:80]!r}.",
                path=path,
                kind="run",
                entity_id=run_id,
            ) from None
        if raw != raw:
            value, is_nan = 0.0, True
        elif raw == _INF:
            value, is_nan = MAX_DOUBLE, False
        elif raw == -_INF:
            value, is_nan = -MAX_DOUBLE, False
        else:
            value, is_nan = raw, False
        point = (key, value, ts, step, is_nan)  # key is the same for the whole file
        if point in seen:
            duplicates += 1
            continue
        add(point)
        append(point)
        # (step, timestamp, value) strictly greater than the current latest, without a tuple
        if lstep is None or step > lstep or (step == lstep and (
                ts > lts or (ts == lts and value > lval))):
            latest, lstep, lts, lval = point, step, ts, value
    assert latest is not None
    return points, latest, duplicates
