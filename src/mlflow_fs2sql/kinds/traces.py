"""Traces: trace info, trace tags, request metadata and assessments (``<exp>/traces/<id>/``).

Both formats a FileStore can hold are read: v2 ``trace_info.yaml`` (``request_id``, written by
MLflow 2.13-3.1) and v3 (``trace_id``/``request_time``, MLflow >= 3.2); like MLflow's
``TraceInfo.from_dict``, the key ``request_id`` decides. Spans stay in ``artifacts/`` (the tag
``mlflow.artifactLocation`` points there) and are never read.

Rows are what MLflow 3.17.2's ``SqlAlchemyStore.start_trace``/``create_assessment`` would write
for the trace the FileStore returns, adapted to the target revision (``rows.target_has``):

* the tag ``mlflow.traceName`` and the metadata ``mlflow.trace.session``/``tokenUsage``/``cost``
  become ``trace_info`` columns where the schema has them (``analytics_columns_from_metadata``),
  and stay plain rows in older schemas;
* ``status`` holds ``TraceState`` names where the schema has the v3 columns (3.2+ reads
  ``TraceState(status)``) and ``TraceStatus`` names before (3.1 and older read
  ``TraceStatus(status)``): only "unspecified" differs between the two.

Assessment values are stored as ``json.dumps`` of the value the FileStore returns. The file
holds protobuf doubles, so an integer logged as 5 reads back as 5.0; fs2sql keeps 5.0 (stores
``"5.0"``) because then MLflow's SQL store returns exactly what its FileStore returned. A
``serialized_value`` (expectations holding lists or dicts) is parsed, so its integers stay
integers, as in the FileStore.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import weakref
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Dict, Optional, Tuple

from .. import walk as _walk
from ..errors import InvalidSource
from ..model import Experiment, KeyValue, Unchanged
from ..parse import field_int, field_str, is_junk, read_key_values, read_yaml_mapping
from ..rows import TableSpec, register_builder, register_tables, target_has
from .id_checks import note_ids

TRACE_INFO_FILE = "trace_info.yaml"
TRACE_NAME_TAG = "mlflow.traceName"
SESSION_KEY = "mlflow.trace.session"
TOKEN_USAGE_KEY = "mlflow.trace.tokenUsage"
COST_KEY = "mlflow.trace.cost"
SOURCE_RUN_ID_KEY = "mlflow.assessment.sourceRunId"  # AssessmentMetadataKey.SOURCE_RUN_ID

TRACE_STATES = ("STATE_UNSPECIFIED", "OK", "ERROR", "IN_PROGRESS")  # TraceState (v3)
# TraceStatus (v2) -> TraceState, as TraceStatus.to_state.
V2_STATUS = {"TRACE_STATUS_UNSPECIFIED": "STATE_UNSPECIFIED", "OK": "OK", "ERROR": "ERROR",
             "IN_PROGRESS": "IN_PROGRESS"}
_STATE_TO_V2 = {v: k for k, v in V2_STATUS.items()}
SOURCE_TYPES = ("SOURCE_TYPE_UNSPECIFIED", "LLM_JUDGE", "HUMAN", "CODE")
# trace_analytics.TOKEN_COLUMN_BY_KEY / COST_COLUMN_BY_KEY: JSON key = column name.
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens",
                 "cache_creation_input_tokens", "cache_creation_input_tokens_above_1hr")
COST_COLUMNS = ("input_cost", "output_cost", "total_cost")
_BIGINT = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Assessment:
    """One ``assessments/<id>.yaml``, values already in SQL form (JSON text, epoch ms)."""

    assessment_id: str
    name: str
    assessment_type: str  # feedback | expectation | issue
    value: str  # JSON
    error: Optional[str]  # JSON of the feedback error
    created_timestamp: int
    last_updated_timestamp: int
    source_type: str
    source_id: Optional[str]
    run_id: Optional[str]
    span_id: Optional[str]
    rationale: Optional[str]
    overrides: Optional[str]
    valid: bool
    metadata: Optional[str]  # JSON, None when empty
    aggregate_value: Optional[float]
    is_numeric_value: bool


@dataclass(frozen=True)
class Trace:
    KIND: ClassVar[str] = "trace"

    request_id: str  # the trace ID (v3 trace_id / v2 request_id) = the folder name
    experiment_id: int
    timestamp_ms: int
    execution_time_ms: Optional[int]
    state: str  # a TraceState name
    client_request_id: Optional[str]
    request_preview: Optional[str]
    response_preview: Optional[str]
    tags: Tuple[KeyValue, ...]
    metadata: Tuple[KeyValue, ...]
    assessments: Tuple[Assessment, ...]
    path: str

    @property
    def identity(self) -> str:
        return self.request_id

    @property
    def trace_id(self) -> str:  # owner column of ``assessments``
        return self.request_id


# -- the walk ---------------------------------------------------------------------------------
class _Seen:
    """IDs that are primary keys across the whole store (trace and assessment IDs)."""

    def __init__(self):
        self.traces: Dict[str, str] = {}
        self.assessments: Dict[str, str] = {}


# Per walk, so that a fresh Walk (verify) starts clean.
_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def walk_traces(walk: _walk.Walk, experiment: Experiment, folder: str):
    """Every trace of an experiment, in folder-name order (an ``InvalidSource`` for a bad one).

    A folder without ``trace_info.yaml`` is not a trace to MLflow (``_get_trace_info_from_dir``
    returns None): it is listed as ignored.
    """
    seen = _SEEN.setdefault(walk, _Seen())
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if is_junk(entry.name) or not entry.is_dir():
            walk.ignored.append(entry.path)
            continue
        if not os.path.isfile(os.path.join(entry.path, TRACE_INFO_FILE)):
            walk.ignored.append(entry.path)
            continue
        if walk.select("trace", entry.name, entry.path) is False:
            seen.traces.setdefault(entry.name, entry.path)
            yield Unchanged("trace", entry.name, entry.path)
            continue
        try:
            trace = read_trace(entry.path, experiment, walk.ignored, seen)
        except InvalidSource as exc:
            yield walk.pending(exc, "trace", entry.name, entry.path) or exc
            continue
        note_ids(walk, trace.request_id, *(a.assessment_id for a in trace.assessments))
        yield trace


def read_trace(path: str, experiment: Experiment, ignored, seen: Optional[_Seen] = None) -> Trace:
    tid = os.path.basename(path)
    info_path = os.path.join(path, TRACE_INFO_FILE)
    meta = read_yaml_mapping(info_path, "trace", tid)

    def bad(what: str, where: str = info_path) -> InvalidSource:
        return InvalidSource(what, path=where, kind="trace", entity_id=tid)

    def text(key: str) -> Optional[str]:
        return field_str(meta, key, info_path, "trace", tid)

    def integer(key: str) -> Optional[int]:
        return field_int(meta, key, info_path, "trace", tid)

    v2 = "request_id" in meta
    id_key = "request_id" if v2 else "trace_id"
    if text(id_key) != tid:
        raise bad(f"says {id_key} {meta.get(id_key)!r} but lies in folder '{tid}'.")
    if seen is not None and tid in seen.traces:
        raise bad(f"trace {tid} also exists in {seen.traces[tid]}; a trace ID must be unique.")
    if v2:
        timestamp = integer("timestamp_ms")
        duration = integer("execution_time_ms")
        state = V2_STATUS.get(text("status") or "")
        if state is None:
            raise bad(f"field 'status' is {meta.get('status')!r}; MLflow writes one of "
                      f"{', '.join(V2_STATUS)}.")
    else:
        raw_time = meta.get("request_time")
        try:
            timestamp = parse_timestamp(raw_time) if raw_time is not None else None
        except ValueError as exc:
            raise bad(f"field 'request_time' {exc}") from None
        duration = integer("execution_duration_ms")
        state = text("state")
        if state not in TRACE_STATES:
            raise bad(f"field 'state' is {meta.get('state')!r}; MLflow writes one of "
                      f"{', '.join(TRACE_STATES)}.")
    if timestamp is None:
        raise bad(f"has no {'timestamp_ms' if v2 else 'request_time'}; MLflow cannot read it.")
    assessments = _read_assessments(os.path.join(path, "assessments"), tid, ignored, seen)
    if seen is not None:
        seen.traces[tid] = path
        seen.assessments.update((a.assessment_id, path) for a in assessments)
    return Trace(
        request_id=tid,
        # The folder decides, as for runs: the SQL row hangs off the experiment holding it.
        experiment_id=experiment.experiment_id,
        timestamp_ms=timestamp,
        execution_time_ms=duration,
        state=state,
        client_request_id=None if v2 else text("client_request_id"),
        request_preview=None if v2 else text("request_preview"),
        response_preview=None if v2 else text("response_preview"),
        tags=read_key_values(os.path.join(path, "tags"), "trace", tid, ignored),
        metadata=read_key_values(os.path.join(path, "request_metadata"), "trace", tid, ignored),
        assessments=assessments,
        path=path,
    )


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
                      r"(?:Z|([+-])(\d\d):(\d\d))")
_EPOCH = _dt.datetime(1970, 1, 1)


def parse_timestamp(value: Any) -> int:
    """RFC 3339 text -> epoch ms, as protobuf's ``Timestamp.FromJsonString`` + ``ToMilliseconds``
    (what MLflow uses for ``request_time`` and assessment times): 0-9 fractional digits, 'Z' or
    an offset, sub-millisecond digits cut (floor)."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"should be an RFC 3339 time such as '2024-06-10T08:13:20.110Z', "
                         f"not {value!r}.")
    y, mo, d, h, mi, s, frac, sign, oh, om = match.groups()
    try:
        when = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
    except ValueError as exc:
        raise ValueError(f"is not a valid time ({exc}): {value!r}.") from None
    seconds = (when - _EPOCH).days * 86400 + (when - _EPOCH).seconds
    if sign:
        offset = (int(oh) * 60 + int(om)) * 60
        seconds += -offset if sign == "+" else offset
    if not -62135596800 <= seconds <= 253402300799:
        raise ValueError(f"is outside the range protobuf accepts: {value!r}.")
    nanos = int((frac or "").ljust(9, "0"))
    return seconds * 1000 + nanos // 1_000_000


# -- assessments -----------------------------------------------------------------------------
def _read_assessments(folder: str, tid: str, ignored, seen: Optional[_Seen]):
    if not os.path.isdir(folder):
        return ()
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        # MLflow loads every entry as "<id>.yaml"; anything else is not an assessment it wrote.
        if is_junk(entry.name) or not entry.is_file() or not entry.name.endswith(".yaml"):
            ignored.append(entry.path)
            continue
        assessment = read_assessment(entry.path, tid)
        other = seen.assessments.get(assessment.assessment_id) if seen is not None else None
        if other is not None:
            raise InvalidSource(
                f"assessment {assessment.assessment_id} also exists in {other}; MLflow's "
                "database requires unique assessment IDs.",
                path=entry.path, kind="trace", entity_id=tid)
        found.append(assessment)
    return tuple(found)


def read_assessment(path: str, tid: str) -> Assessment:
    """One assessment file read as MLflow's ``Assessment.from_dictionary`` reads it, turned into
    the row ``SqlAssessments.from_mlflow_entity`` makes of the result."""
    d = read_yaml_mapping(path, "trace", tid)

    def bad(what: str) -> InvalidSource:
        return InvalidSource(f"{what} MLflow cannot read this assessment.", path=path,
                             kind="trace", entity_id=tid)

    def text(key: str, where: Dict[str, Any] = d) -> Optional[str]:
        return field_str(where, key, path, "trace", tid)

    stem = os.path.basename(path)[: -len(".yaml")]
    assessment_id = text("assessment_id") or stem
    if assessment_id != stem:
        raise bad(f"says assessment_id {assessment_id!r} but the file is named {stem}.yaml.")
    if d.get("trace_id") is not None and text("trace_id") != tid:
        raise bad(f"says trace_id {d.get('trace_id')!r} but lies in trace folder {tid}.")
    name = text("assessment_name")
    if name is None:
        raise bad("has no assessment_name.")
    kind, value, error = _assessment_value(d, bad)
    try:
        value_json = json.dumps(value)
        error_json = json.dumps(error) if error is not None else None
        metadata = d.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise bad(f"field 'metadata' should be a mapping but is {metadata!r}.")
        metadata_json = json.dumps(metadata) if metadata else None
    except (TypeError, ValueError) as exc:
        raise bad(f"holds a value that is not JSON ({exc}).") from None
    source_type, source_id = _source(d.get("source"), bad)
    try:
        created = parse_timestamp(d.get("create_time"))
        updated = parse_timestamp(d.get("last_update_time"))
    except ValueError as exc:
        raise bad(f"has a bad create_time/last_update_time: {exc}") from None
    valid = d.get("valid", True)
    if not isinstance(valid, bool):
        raise bad(f"field 'valid' should be true or false but is {valid!r}.")
    # Assessment.__post_init__ takes the run ID from metadata; IssueReference also from the file.
    run_id = (metadata or {}).get(SOURCE_RUN_ID_KEY)
    if kind == "issue" and d.get("run_id"):
        run_id = text("run_id")
    aggregate, numeric = assessment_aggregate(value)
    return Assessment(
        assessment_id=assessment_id, name=name, assessment_type=kind, value=value_json,
        error=error_json, created_timestamp=created, last_updated_timestamp=updated,
        source_type=source_type, source_id=source_id,
        run_id=None if run_id is None else str(run_id), span_id=text("span_id"),
        rationale=text("rationale"),
        overrides=text("overrides"), valid=valid, metadata=metadata_json,
        aggregate_value=aggregate, is_numeric_value=numeric,
    )


def _assessment_value(d: Dict[str, Any], bad):
    """(assessment_type, value, error dict or None), in ``Assessment.from_dictionary`` order."""
    if d.get("expectation"):
        exp = d["expectation"]
        if not isinstance(exp, dict):
            raise bad("field 'expectation' should be a mapping.")
        if "value" in exp:
            value = exp["value"]
        elif isinstance(exp.get("serialized_value"), dict):
            try:
                value = json.loads(exp["serialized_value"].get("value"))
            except (TypeError, ValueError) as exc:
                raise bad(f"its expectation serialized_value is not JSON ({exc}).") from None
        else:
            raise bad("its expectation has neither 'value' nor 'serialized_value'.")
        if value is None:
            raise bad("its expectation value is null.")
        return "expectation", value, None
    if d.get("feedback"):
        fb = d["feedback"]
        if not isinstance(fb, dict) or "value" not in fb:
            raise bad("its feedback has no 'value' field.")
        error = fb.get("error")
        if error:
            if not isinstance(error, dict) or "error_code" not in error or \
                    set(error) - {"error_code", "error_message", "stack_trace"}:
                raise bad(f"its feedback error {error!r} is not an AssessmentError.")
            # AssessmentError.to_dictionary: always these three keys, in this order.
            error = {k: error.get(k) for k in ("error_code", "error_message", "stack_trace")}
        return "feedback", fb["value"], error or None
    if d.get("issue"):
        issue = d["issue"]
        if not isinstance(issue, dict) or issue.get("issue_name") is None:
            raise bad("its issue has no 'issue_name'.")
        return "issue", {"issue_name": issue["issue_name"]}, None
    raise bad("has none of 'feedback', 'expectation' or 'issue'.")


def _source(source: Any, bad) -> Tuple[str, Optional[str]]:
    """``AssessmentSource.from_dictionary``: source_id defaults to "default", the type is
    upper-cased and the legacy AI_JUDGE becomes LLM_JUDGE."""
    if not isinstance(source, dict) or not isinstance(source.get("source_type"), str):
        raise bad("has no source.source_type.")
    source_type = source["source_type"].upper()
    if source_type == "AI_JUDGE":
        source_type = "LLM_JUDGE"
    if source_type not in SOURCE_TYPES:
        raise bad(f"has the unknown source type {source['source_type']!r}.")
    source_id = source.get("source_id", "default")
    return source_type, None if source_id is None else str(source_id)


def assessment_aggregate(value: Any) -> Tuple[Optional[float], bool]:
    """(aggregate_value, is_numeric_value) as MLflow 3.17.2's ``trace_analytics``."""
    if isinstance(value, bool):
        return (1.0 if value else 0.0), False
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None, False
        return (number, True) if math.isfinite(number) else (None, False)
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return (1.0 if value.strip().lower() == "yes" else 0.0), False
    return None, False


# -- promoted metadata (trace_analytics.analytics_columns_from_metadata) -----------------------
def _json_object(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def token_count(value: Any) -> Optional[int]:
    """``token_count_or_none``: integral values within BIGINT, numeric strings included."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        return None
    if (not number.is_finite() or number != number.to_integral_value()
            or not _BIGINT[0] <= number <= _BIGINT[1]):
        return None
    return int(number)


def finite_float(value: Any) -> Optional[float]:
    """``finite_float_or_none``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


# -- rows --------------------------------------------------------------------------------------
def _trace_rows(t: Trace):
    tags, metadata = dict(t.tags), dict(t.metadata)
    # Where the schema has the analytics columns, SqlAlchemyStore.start_trace moves these out of
    # the tag/metadata rows, and SqlTraceInfo.to_mlflow_entity puts them back when reading.
    trace_name = tags.pop(TRACE_NAME_TAG, None) if target_has("trace_info", "trace_name") else None
    session = metadata.pop(SESSION_KEY, None) if target_has("trace_info", "session_id") else None
    tokens: Dict[str, Optional[int]] = {}
    if target_has("trace_info", "input_tokens") and TOKEN_USAGE_KEY in metadata:
        usage = _json_object(metadata.pop(TOKEN_USAGE_KEY))
        tokens = {c: token_count(usage[c]) for c in TOKEN_COLUMNS if c in usage}
    costs: Dict[str, Optional[float]] = {}
    if target_has("trace_info", "input_cost") and COST_KEY in metadata:
        cost = _json_object(metadata.pop(COST_KEY))
        costs = {c: finite_float(cost[c]) for c in COST_COLUMNS if c in cost}
    status = t.state if target_has("trace_info", "client_request_id") else _STATE_TO_V2[t.state]
    rid = t.request_id
    info = (rid, t.experiment_id, t.timestamp_ms, t.execution_time_ms, status,
            t.client_request_id, t.request_preview, t.response_preview, trace_name, session)
    info += tuple(tokens.get(c) for c in TOKEN_COLUMNS) + tuple(costs.get(c) for c in COST_COLUMNS)
    return {
        "trace_info": [info],
        "trace_tags": [(k, v, rid) for k, v in sorted(tags.items())],
        "trace_request_metadata": [(k, v, rid) for k, v in sorted(metadata.items())],
        "assessments": [_assessment_row(a, t) for a in t.assessments],
    }


def _assessment_row(a: Assessment, t: Trace) -> tuple:
    return (a.assessment_id, t.request_id, a.name, a.assessment_type, a.value, a.error,
            a.created_timestamp, a.last_updated_timestamp, a.source_type, a.source_id, a.run_id,
            a.span_id, a.rationale, a.overrides, a.valid, a.metadata,
            # create_assessment copies the trace's experiment and timestamp onto the row.
            t.experiment_id, t.timestamp_ms, a.aggregate_value, a.is_numeric_value)


_TRACE_OWNER = ("request_id",)
register_tables(
    TableSpec("trace_info", "Traces",
              ("request_id", "experiment_id", "timestamp_ms", "execution_time_ms", "status",
               "client_request_id", "request_preview", "response_preview", "trace_name",
               "session_id") + TOKEN_COLUMNS + COST_COLUMNS,
              ("request_id",), owner=_TRACE_OWNER, per_entity=True,
              # previews are cut from the spans; tokens and costs are copies of metadata rows
              derived=("request_preview", "response_preview") + TOKEN_COLUMNS + COST_COLUMNS),
    TableSpec("trace_tags", "Trace tags", ("key", "value", "request_id"), ("request_id", "key"),
              owner=_TRACE_OWNER, per_entity=True),
    TableSpec("trace_request_metadata", "Trace metadata", ("key", "value", "request_id"),
              ("request_id", "key"), owner=_TRACE_OWNER, per_entity=True),
    TableSpec("assessments", "Assessments",
              ("assessment_id", "trace_id", "name", "assessment_type", "value", "error",
               "created_timestamp", "last_updated_timestamp", "source_type", "source_id",
               "run_id", "span_id", "rationale", "overrides", "valid", "assessment_metadata",
               "experiment_id", "trace_timestamp_ms", "aggregate_value", "is_numeric_value"),
              ("assessment_id",), owner=("trace_id",), per_entity=True,
              # copies of the trace's fields and values computed from the assessment
              derived=("experiment_id", "trace_timestamp_ms", "aggregate_value",
                       "is_numeric_value")),
)  # appended: after experiments and every table registered before (datasets, logged models)
register_builder(Trace, _trace_rows)
_walk.EXPERIMENT_WALKERS["traces"] = walk_traces
