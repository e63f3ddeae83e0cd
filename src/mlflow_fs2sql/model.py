"""Typed records of what the FileStore holds, as the walker parses them.

Frozen dataclasses for entities; plain tuples for metric points, which come by the million.
Values are already in their SQL form (status names, integer IDs, sanitized metric values), so the
writer and ``verify`` map them to rows the same way (``rows.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

# (key, value)
KeyValue = Tuple[str, str]
# (key, sanitized value, timestamp, step, is_nan) -- one row of ``metrics``/``latest_metrics``
MetricPoint = Tuple[str, float, int, int, bool]


@dataclass(frozen=True)
class Experiment:
    experiment_id: int
    name: str
    artifact_location: Optional[str]
    lifecycle_stage: str
    creation_time: Optional[int]
    last_update_time: Optional[int]
    tags: Tuple[KeyValue, ...]
    path: str  # the experiment directory, for messages


@dataclass(frozen=True)
class Run:
    run_uuid: str
    experiment_id: int
    name: Optional[str]
    source_type: str
    source_name: Optional[str]
    entry_point_name: Optional[str]
    user_id: Optional[str]
    status: str
    start_time: Optional[int]
    end_time: Optional[int]
    source_version: Optional[str]
    lifecycle_stage: str
    artifact_uri: Optional[str]
    deleted_time: Optional[int]
    params: Tuple[KeyValue, ...]
    tags: Tuple[KeyValue, ...]
    metrics: Tuple[MetricPoint, ...]  # full history, de-duplicated, file order per key
    latest_metrics: Tuple[MetricPoint, ...]  # one per key, chosen as MLflow's SQL store does
    path: str
    duplicate_metric_lines: int = 0
    # Entities stored inside the run folder (dataset inputs, model links): written and
    # skipped together with the run.
    attached: Tuple[object, ...] = ()
    # What was read of each metric file: (key, bytes consumed, hash of the bytes just before).
    # ``sync`` resumes there next time; ``metrics_from`` names the keys read from such an offset
    # this time (their points and latest value cover only the new lines).
    metric_files: Tuple[Tuple[str, int, str], ...] = ()
    metrics_from: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Unchanged:
    """A unit the walk's selector said need not be read (``sync``: its files are as they were
    at the last sync), or -- ``pending`` -- one caught while MLflow was rewriting it (read again
    by the next sync)."""

    kind: str
    unit_id: str
    path: str
    pending: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Skipped:
    """An entity left out under ``--skip-invalid`` (or a thing fs2sql does not migrate)."""

    kind: str
    entity_id: str
    path: str
    reason: str


@dataclass
class StoreCounts:
    """What a walk found, per entity kind (source side of the report)."""

    found: dict = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.found[kind] = self.found.get(kind, 0) + n
