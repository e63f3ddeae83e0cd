"""Traces and assessments (kinds/traces.py) on tiny literal stores."""

import datetime
import json
import sqlite3

import pytest
from conftest import (
    experiment_meta,
    query,
    require_revision,
    require_schema,
    tree_hash,
    write_files,
)
from hypothesis import given
from hypothesis import strategies as st

from mlflow_fs2sql.errors import InvalidSource
from mlflow_fs2sql.kinds import traces
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

EXP = "412345678901234567"
V2_ID = "9a8b7c6d5e4f30211203f4e5d6c7b8a9"
V3_ID = "tr-2a4c6e8f0b1d3f5a7c9e1b3d5f7a9c1e"
@pytest.fixture(autouse=True)
def _needs_a_schema_with_assessments(request):
    """Migrations of these stores need assessments (MLflow >= 3.2); pure parser tests do not."""
    if "tmp_path" in request.fixturenames:
        require_schema("assessments")


REV_3_1 = "6953534de441"  # before the v3 trace columns and assessments (MLflow 3.0-3.1)
REV_3_16 = "b7e2c1a4d9f3"  # before the analytics columns (MLflow 3.16)


def v2_info(request_id=V2_ID, status="OK", **extra):
    text = (f"assessments: []\nexecution_time_ms: 6\nexperiment_id: '{EXP}'\n"
            f"request_id: {request_id}\nstatus: {status}\ntimestamp_ms: 1718000000766\n")
    return text + "".join(f"{k}: {v}\n" for k, v in extra.items())


def v3_info(trace_id=V3_ID, state="OK", request_time="2024-06-10T08:13:20.110Z"):
    return (f"client_request_id: req-42\nexecution_duration_ms: 28\n"
            f"request_preview: '{{\"x\": 3}}'\nrequest_time: '{request_time}'\n"
            f"response_preview: '6'\nstate: {state}\ntrace_id: {trace_id}\n"
            f"trace_location:\n  mlflow_experiment:\n    experiment_id: '{EXP}'\n"
            f"  type: MLFLOW_EXPERIMENT\n")


def assessment(aid, body, trace_id=V3_ID, when="2024-06-10T08:13:20.144Z"):
    return (f"assessment_id: {aid}\ncreate_time: '{when}'\nlast_update_time: '{when}'\n"
            f"trace_id: {trace_id}\n{body}")


FEEDBACK = ("assessment_name: quality\nfeedback:\n  value: 5.0\nmetadata:\n  reviewer: bob\n"
            "rationale: better\nsource:\n  source_id: alice@example.com\n  source_type: HUMAN\n"
            "span_id: 3a2b1c0d9e8f7a6b\nvalid: false\n")
EXPECTATION = ("assessment_name: expected\nexpectation:\n  serialized_value:\n"
               "    serialization_format: JSON_FORMAT\n    value: '{\"answer\": 6}'\n"
               "overrides: a-1\nsource:\n  source_type: human\n")
ERROR = ("assessment_name: judge\nfeedback:\n  error:\n    error_code: TIMEOUT\n  value: null\n"
         "source:\n  source_id: judge\n  source_type: AI_JUDGE\n")


def trace_store(tmp_path, extra=None, drop=()):
    t2 = f"{EXP}/traces/{V2_ID}"
    t3 = f"{EXP}/traces/{V3_ID}"
    files = {
        f"{EXP}/meta.yaml": experiment_meta(EXP, "traced"),
        f"{t2}/trace_info.yaml": v2_info(status="TRACE_STATUS_UNSPECIFIED"),
        f"{t2}/tags/mlflow.traceName": "old",
        f"{t2}/request_metadata/mlflow.trace_schema.version": "2",
        f"{t3}/trace_info.yaml": v3_info(),
        f"{t3}/tags/mlflow.traceName": "add ✓",
        f"{t3}/tags/nested/key": "a\r\nb",
        f"{t3}/tags/empty": "",
        f"{t3}/request_metadata/mlflow.trace.session": "s-1",
        f"{t3}/request_metadata/mlflow.trace.tokenUsage":
            '{"output_tokens": 5, "input_tokens": 10.0, "total_tokens": 1.5}',
        f"{t3}/request_metadata/mlflow.trace.cost": '{"input_cost": 1, "total_cost": "NaN"}',
        f"{t3}/request_metadata/mlflow.sourceRun": "0" * 32,
        f"{t3}/assessments/a-1.yaml": assessment("a-1", FEEDBACK),
        f"{t3}/assessments/a-2.yaml": assessment("a-2", EXPECTATION,
                                                 when="2024-06-10T10:13:20.5+02:00"),
        f"{t3}/assessments/a-3.yaml": assessment("a-3", ERROR, when="2024-06-10T08:13:20Z"),
        f"{t3}/artifacts/traces.json": '{"spans": []}',
    }
    files.update(extra or {})
    for key in drop:
        files.pop(key)
    return write_files(tmp_path / "mlruns", files)


def rows(db, sql, *args):
    return query(db, sql, *args)


def run(tmp_path, store, **options):
    out = tmp_path / "out.db"
    report = migrate(str(store), str(out), MigrateOptions(verify=True, **options))
    assert report.ok, report.mismatches[:3]
    return out, report


# -- the mapping -------------------------------------------------------------------------------
def test_round_trip_every_field(tmp_path):
    store = trace_store(tmp_path)
    before = tree_hash(store)
    out, report = run(tmp_path, store)
    assert tree_hash(store) == before
    assert report.found["trace_info"] == 2 and report.found["assessments"] == 3
    info = rows(out, "SELECT request_id, experiment_id, timestamp_ms, execution_time_ms, status, "
                "client_request_id, request_preview, response_preview, trace_name, session_id, "
                "input_tokens, output_tokens, total_tokens, cache_read_input_tokens, input_cost, "
                "output_cost, total_cost, db_payload_generation FROM trace_info ORDER BY 1")
    assert info == [
        (V2_ID, int(EXP), 1718000000766, 6, "STATE_UNSPECIFIED", None, None, None, "old", None,
         None, None, None, None, None, None, None, 0),
        (V3_ID, int(EXP), 1718007200110, 28, "OK", "req-42", '{"x": 3}', "6", "add ✓", "s-1",
         10, 5, None, None, 1.0, None, None, 0),
    ]
    assert rows(out, "SELECT request_id, key, value FROM trace_tags ORDER BY 1, 2") == [
        (V3_ID, "empty", ""), (V3_ID, "nested/key", "a\r\nb")]
    assert rows(out, "SELECT request_id, key, value FROM trace_request_metadata ORDER BY 1, 2") == [
        (V2_ID, "mlflow.trace_schema.version", "2"), (V3_ID, "mlflow.sourceRun", "0" * 32)]
    got = rows(out, "SELECT * FROM assessments ORDER BY assessment_id")
    cols = [c for (_, c, *_rest) in rows(out, "PRAGMA table_info(assessments)")]
    a1, a2, a3 = (dict(zip(cols, r)) for r in got)
    assert a1 == {
        "assessment_id": "a-1", "trace_id": V3_ID, "name": "quality",
        "assessment_type": "feedback", "value": "5.0", "error": None,
        "created_timestamp": 1718007200144, "last_updated_timestamp": 1718007200144,
        "source_type": "HUMAN", "source_id": "alice@example.com", "run_id": None,
        "span_id": "3a2b1c0d9e8f7a6b", "rationale": "better", "overrides": None, "valid": 0,
        "assessment_metadata": '{"reviewer": "bob"}', "experiment_id": int(EXP),
        "trace_timestamp_ms": 1718007200110, "aggregate_value": 5.0, "is_numeric_value": 1}
    assert (a2["assessment_type"], a2["value"], a2["overrides"], a2["source_type"],
            a2["source_id"], a2["created_timestamp"], a2["aggregate_value"], a2["valid"]) == (
        "expectation", '{"answer": 6}', "a-1", "HUMAN", "default", 1718007200500, None, 1)
    assert json.loads(a3["error"]) == {"error_code": "TIMEOUT", "error_message": None,
                                       "stack_trace": None}
    assert (a3["value"], a3["source_type"], a3["is_numeric_value"], a3["created_timestamp"]) == (
        "null", "LLM_JUDGE", 0, 1718007200000)


def test_the_file_integral_float_is_kept(tmp_path):
    """5.0 stays "5.0": MLflow's SQL store then returns 5.0, exactly what its FileStore returns
    (the file holds protobuf doubles; a serialized_value keeps its integers)."""
    a = traces.read_assessment(str(write_files(tmp_path, {"a-9.yaml": assessment(
        "a-9", "assessment_name: n\nfeedback:\n  value:\n    k: 2.0\n    l: [1.0, 3]\n"
        "source:\n  source_type: CODE\n")}) / "a-9.yaml"), V3_ID)
    assert a.value == '{"k": 2.0, "l": [1.0, 3]}'
    assert (a.aggregate_value, a.is_numeric_value, a.source_id) == (None, False, "default")


def test_run_id_comes_from_the_assessment_metadata(tmp_path):
    """Assessment.__post_init__ takes run_id from metadata mlflow.assessment.sourceRunId."""
    body = ("assessment_name: n\nfeedback:\n  value: 'Yes'\nmetadata:\n"
            "  mlflow.assessment.sourceRunId: abc\nsource:\n  source_type: CODE\n")
    path = write_files(tmp_path, {"a-8.yaml": assessment("a-8", body)}) / "a-8.yaml"
    a = traces.read_assessment(str(path), V3_ID)
    assert (a.run_id, a.aggregate_value, a.is_numeric_value) == ("abc", 1.0, False)


@pytest.mark.parametrize("value, expected", [
    (True, (1.0, False)), (False, (0.0, False)), (3, (3.0, True)), (0.5, (0.5, True)),
    (float("nan"), (None, False)), (10**400, (None, False)), (" NO ", (0.0, False)),
    ("maybe", (None, False)), ([1], (None, False)), ({"a": 1}, (None, False)), (None, (None, False)),
])
def test_assessment_aggregate(value, expected):
    assert traces.assessment_aggregate(value) == expected


@pytest.mark.parametrize("value, expected", [
    (10, 10), (10.0, 10), ("12", 12), (1.5, None), (True, None), (None, None), ("x", None),
    (2**63, None), (-(2**63), -(2**63)), (float("inf"), None), ({"a": 1}, None),
])
def test_token_count(value, expected):
    assert traces.token_count(value) == expected


@pytest.mark.parametrize("value, expected", [
    (1, 1.0), ("0.5", 0.5), (True, None), ("nan", None), (10**400, None), ([1], None),
])
def test_finite_float(value, expected):
    assert traces.finite_float(value) == expected


@pytest.mark.parametrize("text, ms", [
    ("2024-06-10T08:13:20Z", 1718007200000),
    ("2024-06-10T08:13:20.1Z", 1718007200100),
    ("2024-06-10T08:13:20.110Z", 1718007200110),
    ("2024-06-10T08:13:20.110999Z", 1718007200110),
    ("2024-06-10T08:13:20.110999999Z", 1718007200110),
    ("2024-06-10T10:13:20.110+02:00", 1718007200110),
    ("2024-06-10T03:13:20.110-05:00", 1718007200110),
    ("1969-12-31T23:59:59.999Z", -1),
])
def test_parse_timestamp(text, ms):
    assert traces.parse_timestamp(text) == ms


@pytest.mark.parametrize("text", [
    "2024-06-10 08:13:20Z", "2024-06-10T08:13:20", "2024-06-10T08:13:20.1234567891Z",
    "2024-13-10T08:13:20Z", "2024-06-10t08:13:20Z", 1718007200110, None,
])
def test_parse_timestamp_rejects(text):
    with pytest.raises(ValueError):
        traces.parse_timestamp(text)


@given(st.datetimes(min_value=datetime.datetime(1, 1, 2),
                    max_value=datetime.datetime(9999, 12, 30)),
       st.integers(0, 999_999_999), st.sampled_from([0, 1, 3, 6, 9]),
       st.sampled_from(["Z", "+00:00", "+05:30", "-11:00"]))
def test_parse_timestamp_agrees_with_protobuf(when, nanos, digits, zone):
    from google.protobuf.timestamp_pb2 import Timestamp

    frac = "" if digits == 0 else "." + str(nanos).rjust(9, "0")[:digits]
    text = when.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + frac + zone
    expected = Timestamp()
    try:
        expected.FromJsonString(text)
    except ValueError:
        with pytest.raises(ValueError):
            traces.parse_timestamp(text)
        return
    assert traces.parse_timestamp(text) == expected.ToMilliseconds()


# -- older target schemas ----------------------------------------------------------------------
def test_schema_before_analytics_columns_keeps_promoted_keys_as_rows(tmp_path):
    require_revision(REV_3_16)
    out, _ = run(tmp_path, trace_store(tmp_path), revision=REV_3_16)
    assert rows(out, "SELECT request_id, status FROM trace_info ORDER BY 1") == [
        (V2_ID, "STATE_UNSPECIFIED"), (V3_ID, "OK")]
    assert ("mlflow.traceName", "add ✓") in rows(
        out, "SELECT key, value FROM trace_tags WHERE request_id = ?", V3_ID)
    metadata = dict(rows(out, "SELECT key, value FROM trace_request_metadata "
                              "WHERE request_id = ?", V3_ID))
    assert metadata["mlflow.trace.session"] == "s-1"
    assert metadata["mlflow.trace.cost"] == '{"input_cost": 1, "total_cost": "NaN"}'
    assert rows(out, "SELECT count(*) FROM assessments") == [(3,)]


def test_schema_before_v3_traces_uses_trace_status_names(tmp_path):
    """MLflow <= 3.1 reads status with TraceStatus(...), which has no STATE_UNSPECIFIED."""
    t3 = f"{EXP}/traces/{V3_ID}"
    # (without client_request_id, which a 3.1 schema has no column for: that would be refused)
    store = trace_store(tmp_path, extra={f"{t3}/trace_info.yaml": v3_info(
        state="STATE_UNSPECIFIED").replace("client_request_id: req-42\n", "")},
        drop=[f"{t3}/assessments/a-{i}.yaml" for i in (1, 2, 3)])
    out, _ = run(tmp_path, store, revision=REV_3_1)
    assert rows(out, "SELECT request_id, status FROM trace_info ORDER BY 1") == [
        (V2_ID, "TRACE_STATUS_UNSPECIFIED"), (V3_ID, "TRACE_STATUS_UNSPECIFIED")]


def test_assessments_need_a_schema_with_their_table(tmp_path):
    """A schema that cannot hold what the store has is refused with counts; nothing written."""
    from mlflow_fs2sql.errors import SchemaError

    store = trace_store(tmp_path)
    for skip in (False, True):
        with pytest.raises(SchemaError, match=r"assessments: 3 rows"):
            migrate(str(store), str(tmp_path / "a.db"),
                    MigrateOptions(revision=REV_3_1, skip_invalid=skip))
        assert not (tmp_path / "a.db").exists()


# -- walking -----------------------------------------------------------------------------------
def test_folder_without_trace_info_and_junk_are_ignored(tmp_path):
    t3 = f"{EXP}/traces/{V3_ID}"
    store = trace_store(tmp_path, extra={
        f"{EXP}/traces/tr-half-written/tags/x": "y",
        f"{EXP}/traces/.DS_Store": "junk",
        f"{t3}/assessments/.DS_Store": "junk",
        f"{t3}/assessments/notes.txt": "not an assessment",
        f"{t3}/tags/._key": "junk",
    })
    _, report = run(tmp_path, store)
    ignored = {p.split("/mlruns/")[1] for p in report.ignored}
    assert ignored >= {f"{EXP}/traces/tr-half-written", f"{EXP}/traces/.DS_Store",
                       f"{t3}/assessments/.DS_Store", f"{t3}/assessments/notes.txt",
                       f"{t3}/tags/._key"}
    assert report.found["trace_info"] == 2 and "traces" not in report.not_migrated


def test_deterministic(tmp_path):
    store = trace_store(tmp_path)
    dumps = []
    for name in ("a.db", "b.db"):
        migrate(str(store), str(tmp_path / name))
        dumps.append([rows(tmp_path / name, f"SELECT * FROM {t} ORDER BY 1, 2")
                      for t in ("trace_info", "trace_tags", "trace_request_metadata",
                                "assessments")])
    assert dumps[0] == dumps[1]


# -- invalid input: strict stops, --skip-invalid skips the trace (with its assessments) ----------
T3 = f"{EXP}/traces/{V3_ID}"
T2 = f"{EXP}/traces/{V2_ID}"


@pytest.mark.parametrize("extra, match", [
    ({f"{T3}/trace_info.yaml": v3_info(trace_id="tr-other")}, "but lies in folder"),
    ({f"{T2}/trace_info.yaml": v2_info(request_id="x" * 32)}, "but lies in folder"),
    ({f"{T3}/trace_info.yaml": v3_info(state="DONE")}, "field 'state'"),
    ({f"{T2}/trace_info.yaml": v2_info(status="STATE_UNSPECIFIED")}, "field 'status'"),
    ({f"{T3}/trace_info.yaml": v3_info(request_time="yesterday")}, "request_time"),
    ({f"{T3}/trace_info.yaml": "state: OK\n"}, "trace_id None"),
    ({f"{T3}/assessments/a-4.yaml": assessment("a-5", ERROR)}, "file is named a-4"),
    ({f"{T3}/assessments/a-4.yaml": assessment("a-4", ERROR, trace_id="tr-x")}, "trace_id"),
    ({f"{T3}/assessments/a-4.yaml": assessment("a-4", "assessment_name: x\n"
                                               "source:\n  source_type: CODE\n")},
     "none of 'feedback'"),
    ({f"{T3}/assessments/a-4.yaml": assessment("a-4", "assessment_name: x\nfeedback:\n"
                                               "  value: 1\nsource:\n  source_type: ROBOT\n")},
     "unknown source type"),
    ({f"{T3}/assessments/a-4.yaml": assessment("a-4", ERROR, when="now")}, "create_time"),
    ({f"{T3}/assessments/a-4.yaml": assessment("a-4", "assessment_name: x\nexpectation:\n"
                                               "  serialized_value:\n    value: '{oops'\n"
                                               "source:\n  source_type: HUMAN\n")}, "not JSON"),
    ({f"{T3}/assessments/a-4.yaml": "- a list\n"}, "mapping"),
])
def test_invalid_trace_stops_or_is_skipped(tmp_path, extra, match):
    store = trace_store(tmp_path, extra=extra)
    with pytest.raises(InvalidSource, match=match) as exc:
        migrate(str(store), str(tmp_path / "a.db"))
    assert exc.value.kind == "trace"
    report = migrate(str(store), str(tmp_path / "b.db"),
                     MigrateOptions(skip_invalid=True, verify=True))
    assert report.ok and len(report.skipped) == 1 and report.skipped[0].kind == "trace"
    assert report.found["trace_info"] == 1
    skipped = report.skipped[0].entity_id
    assert rows(tmp_path / "b.db", "SELECT count(*) FROM assessments WHERE trace_id = ?",
                skipped) == [(0,)]


def test_duplicate_trace_id_in_two_experiments(tmp_path):
    store = trace_store(tmp_path, extra={
        "7/meta.yaml": experiment_meta("7", "other"),
        f"7/traces/{V2_ID}/trace_info.yaml": v2_info(),
    })
    with pytest.raises(InvalidSource, match="also exists in"):
        migrate(str(store), str(tmp_path / "a.db"))
    report = migrate(str(store), str(tmp_path / "b.db"), MigrateOptions(skip_invalid=True))
    assert [(s.kind, s.entity_id) for s in report.skipped] == [("trace", V2_ID)]
    assert rows(tmp_path / "b.db", "SELECT experiment_id FROM trace_info WHERE request_id = ?",
                V2_ID) == [(7,)]  # experiment 7 is walked first (numeric order)


def test_duplicate_assessment_id_in_two_traces(tmp_path):
    other = "tr-" + "f" * 32
    store = trace_store(tmp_path, extra={
        f"{EXP}/traces/{other}/trace_info.yaml": v3_info(trace_id=other),
        f"{EXP}/traces/{other}/assessments/a-1.yaml": assessment("a-1", ERROR, trace_id=other),
    })
    with pytest.raises(InvalidSource, match="unique assessment IDs"):
        migrate(str(store), str(tmp_path / "a.db"))


def test_value_too_long_for_its_column(tmp_path):
    store = trace_store(tmp_path, extra={f"{T3}/request_metadata/mlflow.trace.session": "s" * 251})
    with pytest.raises(InvalidSource, match="session_id holds at most 250"):
        migrate(str(store), str(tmp_path / "a.db"))


# -- verify ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sql, fragment", [
    ("UPDATE trace_info SET status = 'OK' WHERE request_id = '{V2_ID}'", "field 'status'"),
    ("UPDATE trace_info SET input_tokens = 11", "field 'input_tokens'"),
    ("UPDATE trace_tags SET value = 'x' WHERE key = 'empty'", "field 'value'"),
    ("DELETE FROM trace_request_metadata WHERE key = 'mlflow.sourceRun'", "missing in target"),
    ("UPDATE assessments SET valid = 1 WHERE assessment_id = 'a-1'", "field 'valid'"),
    ("UPDATE assessments SET created_timestamp = 0 WHERE assessment_id = 'a-2'",
     "field 'created_timestamp'"),
])
def test_verify_reports_damage_in_trace_tables(tmp_path, sql, fragment):
    store = trace_store(tmp_path)
    out, _ = run(tmp_path, store)
    con = sqlite3.connect(out)
    con.execute(sql.format(V2_ID=V2_ID))
    con.commit()
    con.close()
    report = verify(str(store), str(out))
    assert not report.ok
    assert any(fragment in m and "Trace " in m for m in report.mismatches), report.mismatches


def test_tables_follow_their_parents():
    from mlflow_fs2sql.rows import table_order

    order = table_order()
    at = {t: order.index(t) for t in ("experiments", "trace_info", "trace_tags",
                                      "trace_request_metadata", "assessments")}
    assert at["experiments"] < at["trace_info"] < at["trace_tags"] < \
        at["trace_request_metadata"] < at["assessments"]
