"""Oracle: MLflow's SQL store sees the same traces and assessments as its FileStore.

For fixture stores written by MLflow 2.22.5 (v2 trace files), 3.2.0 and 3.17.2 (v3 files and
assessments), size ``full``, plus a copy of a store with hand-written edge traces: migrate,
verify, then ``fixtures_gen.oracle.dump`` by the oracle reader (the installed mlflow-skinny,
``conftest.oracle_reader``) once against the FileStore and once
against the migrated DB (``search_traces`` + ``get_trace_info`` with assessments + span names
loaded through ``mlflow.artifactLocation``), and compare the ``traces`` sections.

One difference is normalised, the only one MLflow's own code makes: ``Expectation.from_dictionary``
(used by the FileStore) never sets ``valid``, so the FileStore returns ``valid=None`` for every
expectation, while ``SqlAssessments.to_mlflow_entity`` returns the column (MLflow writes True, and
False once overridden). The rows keep the file's value.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fixture_store, oracle_dump, write_files

from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

VERSIONS = ("2.22.5", "3.2.0", "3.17.2")


def _migrate(src: Path, tmp: Path) -> Path:
    db = tmp / "out.db"
    report = migrate(str(src), str(db), MigrateOptions(verify=True))
    assert report.ok, report.mismatches[:5]
    assert not report.skipped and "traces" not in report.not_migrated
    again = verify(str(src), str(db))
    assert again.ok and again.verified["assessments"] == report.found.get("assessments", 0)
    return db


def _traces(dump: dict) -> list:
    assert "traces" not in dump["unsupported"], dump["unsupported"]
    traces = dump["traces"]
    for trace in traces:
        for assessment in trace["info"].get("assessments") or []:
            if assessment.get("expectation") is not None:
                # Expectation.from_dictionary drops `valid` (FileStore side): see module doc.
                assessment["valid"] = None
    return traces


def _compare(src: Path, db: Path) -> list:
    on_files = _traces(oracle_dump(src.as_uri()))
    on_sql = _traces(oracle_dump(f"sqlite:///{db}"))
    assert [t["trace_id"] for t in on_sql] == [t["trace_id"] for t in on_files]
    for want, got in zip(on_files, on_sql):
        assert got == want, want["trace_id"]
    return on_files


@pytest.mark.parametrize("version", VERSIONS)
def test_sql_store_returns_what_the_file_store_returns(version, tmp_path):
    src = fixture_store(version, "full")
    db = _migrate(src, tmp_path)
    traces = _compare(src, db)
    assert len(traces) >= 2
    assessments = [a for t in traces for a in t["info"].get("assessments") or []]
    if version != "2.22.5":
        assert {a["name"] for a in assessments} >= {"quality", "expected_dict", "judge_error"}
    assert all(isinstance(t["span_names"], list) for t in traces)  # spans found via the tag


# -- hand-written edge traces ---------------------------------------------------------------
V2_UNSPECIFIED = """\
assessments: []
execution_time_ms: null
experiment_id: '{exp}'
request_id: 0123456789abcdef0123456789abcdef
status: TRACE_STATUS_UNSPECIFIED
timestamp_ms: 1718000000766
"""
V3_EDGE = """\
client_request_id: req-42
execution_duration_ms: 0
request_preview: ''
request_time: '2024-06-10T10:13:20.123456789+02:00'
state: STATE_UNSPECIFIED
trace_id: tr-00000000000000000000000000000ed9
trace_location:
  mlflow_experiment:
    experiment_id: '{exp}'
  type: MLFLOW_EXPERIMENT
"""
TID = "tr-00000000000000000000000000000ed9"


def _assessment(aid: str, body: str, when: str = "2024-06-10T08:13:20.144Z") -> str:
    return (f"assessment_id: {aid}\ncreate_time: '{when}'\nlast_update_time: '{when}'\n"
            f"trace_id: {TID}\n{body}")


EDGE_ASSESSMENTS = {
    # integral float (protobuf double), kept as 5.0
    "a-01": "assessment_name: score\nfeedback:\n  value: 5.0\nsource:\n  source_id: bob\n"
            "  source_type: HUMAN\nvalid: true\nspan_id: 3a2b1c0d9e8f7a6b\n",
    # a YAML integer (hand-written): read as int by both stores
    "a-02": "assessment_name: count\nfeedback:\n  value: 7\nsource:\n  source_type: CODE\n",
    "a-03": "assessment_name: nested\nfeedback:\n  value:\n    a: 1.0\n    b: [true, x]\n"
            "source:\n  source_id: j\n  source_type: ai_judge\nrationale: \"multi\\nline \\u2713\"\n",
    "a-04": "assessment_name: answer\nfeedback:\n  value: ' Yes '\nmetadata:\n"
            "  mlflow.assessment.sourceRunId: 0123456789abcdef0123456789abcdef\n  k: v\n"
            "source:\n  source_id: j\n  source_type: LLM_JUDGE\n",
    "a-05": "assessment_name: failed\nfeedback:\n  error:\n    error_code: RATE_LIMIT\n"
            "    error_message: slow down\n    stack_trace: \"Traceback\\n  line 1\"\n  value: null\n"
            "source:\n  source_id: j\n  source_type: LLM_JUDGE\n",
    "a-06": "assessment_name: expected_n\nexpectation:\n  value: 3.0\nsource:\n"
            "  source_id: alice\n  source_type: HUMAN\n",
    "a-07": "assessment_name: expected_obj\nexpectation:\n  serialized_value:\n"
            "    serialization_format: JSON_FORMAT\n    value: '{\"n\": 6, \"xs\": [1, 2.5, null]}'\n"
            "source:\n  source_id: alice\n  source_type: HUMAN\n",
    "a-08": "assessment_name: score\nfeedback:\n  value: 0.25\noverrides: a-01\nsource:\n"
            "  source_id: bob\n  source_type: HUMAN\nvalid: false\n",
}
EDGE_TIMES = {"a-02": ("2024-06-10T08:13:20Z",), "a-03": ("2024-06-10T08:13:20.144999Z",),
              "a-04": ("2024-06-10T08:13:20.144999999Z",)}


def _edge_store(tmp: Path) -> Path:
    src = tmp / "mlruns"
    shutil.copytree(fixture_store("3.17.2", "small"), src)
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            p = os.path.join(dirpath, name)
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
    exp = next(p.parent.name for p in sorted(src.glob("*/traces")))
    base = f"{exp}/traces"
    v2 = f"{base}/0123456789abcdef0123456789abcdef"
    v3 = f"{base}/{TID}"
    files = {
        f"{v2}/trace_info.yaml": V2_UNSPECIFIED.format(exp=exp),
        f"{v2}/tags/mlflow.traceName": "old trace",
        f"{v2}/tags/mlflow.artifactLocation": (src / v2 / "artifacts").as_uri(),
        f"{v2}/request_metadata/mlflow.trace_schema.version": "2",
        f"{v2}/artifacts/traces.json": '{"spans": []}',
        f"{v3}/trace_info.yaml": V3_EDGE.format(exp=exp),
        f"{v3}/tags/mlflow.traceName": "edge ✓",
        f"{v3}/tags/nested/key": "a\r\nb",
        f"{v3}/tags/mlflow.artifactLocation": (src / v3 / "artifacts").as_uri(),
        f"{v3}/artifacts/traces.json": '{"spans": []}',
        f"{v3}/request_metadata/mlflow.trace.session": "session-1",
        f"{v3}/request_metadata/mlflow.trace.tokenUsage":
            '{"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}',
        f"{v3}/request_metadata/mlflow.trace.cost":
            '{"input_cost": 0.001, "output_cost": 0.5, "total_cost": 0.501}',
        f"{v3}/request_metadata/mlflow.user": "",
        f"{base}/tr-without-info/tags/x": "not a trace to MLflow",
    }
    for aid, body in EDGE_ASSESSMENTS.items():
        files[f"{v3}/assessments/{aid}.yaml"] = _assessment(aid, body, *EDGE_TIMES.get(aid, ()))
    write_files(src, files)
    return src


def test_edge_traces(tmp_path):
    src = _edge_store(tmp_path)
    db = _migrate(src, tmp_path)
    ignored = migrate(str(src), str(tmp_path / "dry.db"), MigrateOptions(dry_run=True)).ignored
    assert any(p.endswith("tr-without-info") for p in ignored)  # MLflow ignores it too
    traces = {t["trace_id"]: t for t in _compare(src, db)}
    edge = traces[TID]["info"]
    assert edge["state"] == "STATE_UNSPECIFIED"
    assert edge["request_time"] == 1718007200123  # 08:13:20.123 UTC, nanoseconds cut
    assert edge["trace_metadata"]["mlflow.trace.session"] == "session-1"
    by_name = {a["assessment_id"]: a for a in edge["assessments"]}
    assert by_name["a-01"]["value"] == 5.0 and isinstance(by_name["a-01"]["value"], float)
    assert by_name["a-07"]["value"] == {"n": 6, "xs": [1, 2.5, None]}
    assert by_name["a-04"]["run_id"] == "0123456789abcdef0123456789abcdef"
    assert by_name["a-03"]["source"]["source_type"] == "LLM_JUDGE"
    assert by_name["a-01"]["create_time_ms"] == 1718007200144
    old = traces["0123456789abcdef0123456789abcdef"]["info"]
    assert old["state"] == "STATE_UNSPECIFIED" and old["execution_duration"] is None
    # The promoted keys live in columns, not rows (SqlAlchemyStore.start_trace).
    con = sqlite3.connect(db)
    row = con.execute("SELECT trace_name, session_id, input_tokens, total_tokens, total_cost, "
                      "status FROM trace_info WHERE request_id = ?", (TID,)).fetchone()
    assert row == ("edge ✓", "session-1", 10, 15, 0.501, "STATE_UNSPECIFIED")
    keys = {k for (k,) in con.execute("SELECT key FROM trace_request_metadata")}
    assert not keys & {"mlflow.trace.session", "mlflow.trace.tokenUsage", "mlflow.trace.cost"}
    assert con.execute("SELECT count(*) FROM trace_tags WHERE key = 'mlflow.traceName'"
                       ).fetchone() == (0,)
    con.close()


# -- verify can fail -------------------------------------------------------------------------
def test_verify_reports_a_changed_assessment(tmp_path):
    src = fixture_store("3.17.2", "small")
    db = _migrate(src, tmp_path)
    con = sqlite3.connect(db)
    aid, tid = con.execute("SELECT assessment_id, trace_id FROM assessments "
                           "WHERE name = 'quality' ORDER BY assessment_id").fetchone()
    con.execute("UPDATE assessments SET value = '0.1' WHERE assessment_id = ?", (aid,))
    con.execute("UPDATE trace_info SET execution_time_ms = 999999 WHERE request_id = ?", (tid,))
    con.commit()
    con.close()
    proc = subprocess.run([sys.executable, "-m", "mlflow_fs2sql", "verify", str(src), str(db)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 3, proc.stderr
    out = proc.stdout + proc.stderr
    assert f"Trace {tid}" in out
    assert "field 'value'" in out and "target='0.1'" in out
    assert "field 'execution_time_ms'" in out and "target=999999" in out
