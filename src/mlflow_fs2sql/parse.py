"""Parsers for the FileStore's file formats: value files, meta.yaml, metric lines.

Each parser takes bytes or text already read and raises ``InvalidSource`` naming the file. They
mirror what MLflow's FileStore writes (``mlflow/store/tracking/file_store.py``) and what its SQL
store would hold for the same data (``SqlAlchemyStore``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

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
            f"is not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); MLflow writes "
            "every value file as UTF-8, so this file was changed or damaged outside MLflow.",
            path=path,
            kind=kind,
            entity_id=entity_id,
        ) from None


def read_bytes(path: str, kind: str = "", entity_id: str = "") -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidSource(
            f"cannot be read ({exc.strerror or exc}).", path=path, kind=kind, entity_id=entity_id
        ) from None


def read_yaml_mapping(path: str, kind: str, entity_id: str) -> Dict[str, Any]:
    """A meta.yaml as a dict; empty, unparseable or non-mapping files are invalid."""
    if not os.path.isfile(path):
        raise InvalidSource("is missing.", path=path, kind=kind, entity_id=entity_id)
    text = decode_text(read_bytes(path, kind, entity_id), path, kind, entity_id)
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


def field_int(meta: Dict[str, Any], key: str, path: str, kind: str, entity_id: str) -> Optional[int]:
    """An optional integer field (times in ms); bools and non-integral values are invalid."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidSource(
            f"field '{key}' should be an integer but is {value!r}.",
            path=path,
            kind=kind,
            entity_id=entity_id,
        )
    try:
        return int(value)
    except ValueError:
        raise InvalidSource(
            f"field '{key}' should be an integer but is {value!r}.",
            path=path,
            kind=kind,
            entity_id=entity_id,
        ) from None


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


def walk_key_files(folder: str, ignored: List[str]) -> Iterator[Tuple[str, str]]:
    """(key, file path) for every file below ``folder``; keys with '/' live in sub-folders.

    Sorted for determinism. Empty directories (left by deleted keys) yield nothing; OS and editor
    junk is appended to ``ignored`` instead of being read as a key.
    """
    stack = [("", folder)]
    while stack:
        prefix, directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name, reverse=True)
        except FileNotFoundError:
            continue
        for entry in entries:
            if is_junk(entry.name):
                ignored.append(entry.path)
            elif entry.is_dir():
                stack.append((prefix + entry.name + "/", entry.path))
            else:
                yield prefix + entry.name, entry.path


def read_key_values(
    folder: str, kind: str, entity_id: str, ignored: List[str]
) -> Tuple[KeyValue, ...]:
    items = []
    for key, path in walk_key_files(folder, ignored):
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
    latest_cmp = None
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
    for number, line in enumerate(lines, 1):
        parts = line.strip().split(" ")
        n = len(parts)
        try:
            if n == 3 or n == 5:
                ts = int(parts[0])
                raw = float(parts[1])
                step = int(parts[2])
            elif n == 2:
                ts = int(parts[0])
                raw = float(parts[1])
                step = 0
            else:
                raise ValueError(f"has {n} fields; MLflow writes 'timestamp value step'")
        except ValueError as exc:
            detail = str(exc) if "fields" in str(exc) else f"cannot be parsed ({exc})"
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
        ident = (ts, step, value, is_nan)
        if ident in seen:
            duplicates += 1
            continue
        seen.add(ident)
        point = (key, value, ts, step, is_nan)
        points.append(point)
        cmp = (step, ts, value)
        if latest_cmp is None or cmp > latest_cmp:
            latest, latest_cmp = point, cmp
    assert latest is not None
    return points, latest, duplicates
