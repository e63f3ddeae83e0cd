"""The command line: exit codes, messages, --json, prompts, and a real subprocess killed with -9."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    cli_runner,
    experiment_meta,
    metric_heavy_store,
    tree_hash,
    write_files,
)

from mlflow_fs2sql.cli import app

runner = cli_runner()


def fs2sql(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mlflow_fs2sql", *args], capture_output=True,
                          text=True, **kwargs)


def test_help_and_version_do_not_import_heavy_modules():
    code = ("import sys; from mlflow_fs2sql.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('sqlalchemy', 'alembic', 'mlflow', 'yaml') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "HEAVY []" in out
    result = fs2sql("--version")
    assert result.returncode == 0 and result.stdout.startswith("fs2sql ")


def test_every_command_has_help():
    for command in ("migrate", "verify"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "SOURCE" in result.output


def test_migrate_then_verify_exit_0_and_report(tiny_store, tmp_path):
    out = tmp_path / "o.db"
    result = runner.invoke(app, ["migrate", str(tiny_store), str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert "Metric points" in result.output
    assert result.output.rstrip().splitlines()[-1] == (
        f"Start MLflow on it: mlflow server --backend-store-uri sqlite:///{out}")
    result = runner.invoke(app, ["verify", str(tiny_store), str(out)])
    assert result.exit_code == 0 and "Verified" in result.output


def test_json_report_contract(tiny_store, tmp_path):
    out, js = tmp_path / "o.db", tmp_path / "r.json"
    result = runner.invoke(app, ["migrate", str(tiny_store), str(out), "--json", str(js), "-q"])
    assert result.exit_code == 0 and result.output == ""
    report = json.loads(js.read_text())
    assert report["fs2sql_report"] == 1 and report["ok"] and report["exit_code"] == 0
    kinds = {k["table"]: k for k in report["kinds"]}
    assert kinds["metrics"] == {"kind": "Metric points", "table": "metrics", "found": 2,
                                "written": 2, "verified": None}
    assert set(report) >= {"schema", "skipped", "ignored", "not_migrated", "warnings",
                           "mismatches", "elapsed_s", "start_command", "start_requires", "source", "target"}


def test_existing_target_without_terminal_is_refused_with_exit_1(tiny_store, tmp_path):
    out = tmp_path / "o.db"
    out.write_text("x")
    result = fs2sql("migrate", str(tiny_store), str(out), stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert out.read_text() == "x"
    result = fs2sql("migrate", str(tiny_store), str(out), "--force")
    assert result.returncode == 0, result.stderr


def test_bad_input_is_one_paragraph_exit_1_and_traceback_only_with_verbose(tmp_path):
    rid = "e" * 32
    store = write_files(tmp_path / "mlruns", {
        "0/meta.yaml": experiment_meta("0", "Default"),
        f"0/{rid}/meta.yaml": "a: [1,\n",
    })
    result = fs2sql("migrate", str(store), str(tmp_path / "o.db"))
    assert result.returncode == 1
    assert f"{store}/0/{rid}/meta.yaml: is not valid YAML" in result.stderr
    assert "--skip-invalid" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.db").exists()
    result = fs2sql("migrate", str(store), str(tmp_path / "o.db"), "--verbose")
    assert "Traceback" in result.stderr
    result = fs2sql("migrate", str(store), str(tmp_path / "o.db"), "--skip-invalid")
    assert result.returncode == 4
    assert f"SKIPPED run {rid}" in result.stdout


def test_verify_exit_3_on_damage(tiny_store, tmp_path):
    import sqlite3

    out = tmp_path / "o.db"
    assert runner.invoke(app, ["migrate", str(tiny_store), str(out), "-q"]).exit_code == 0
    con = sqlite3.connect(out)
    con.execute("UPDATE runs SET user_id = 'mallory'")
    con.commit()
    con.close()
    result = fs2sql("verify", str(tiny_store), str(out))
    assert result.returncode == 3
    assert f"FAILED: Run {'a' * 32} — field 'user_id': source='alice', target='mallory'" in \
        result.stdout


def test_usage_error_is_exit_2():
    assert runner.invoke(app, ["migrate"]).exit_code == 2


def _wait_for_temporary(folder, proc, timeout=60):
    """Until the migration's temporary database exists (the load has begun)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if any(n.endswith(".tmp") for n in os.listdir(folder)):
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_no_target_and_a_rerun_succeeds(tmp_path):
    store = metric_heavy_store(tmp_path / "mlruns")
    before = tree_hash(store)
    out = tmp_path / "o.db"
    # Warm the schema cache so kills land during the load, not only during schema creation.
    assert fs2sql("migrate", str(store), str(tmp_path / "warm.db")).returncode == 0
    os.unlink(tmp_path / "warm.db")
    rng = random.Random(7)
    for delay in [0.0] + [rng.uniform(0.0, 0.6) for _ in range(3)]:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow_fs2sql", "migrate", str(store),
                                 str(out), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if delay:  # kill during the load; the first kill lands while Python still starts
            _wait_for_temporary(tmp_path, proc)
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == 0:  # finished before the kill: a complete result is fine
            assert fs2sql("verify", str(store), str(out), "-q").returncode == 0
            os.unlink(out)
            continue
        assert not out.exists()
    result = fs2sql("migrate", str(store), str(out), "-q", "--verify")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["mlruns", "o.db"]  # stale temporaries removed
    assert tree_hash(store) == before


@pytest.mark.slow
def test_sigint_is_exit_130_and_leaves_nothing(tmp_path):
    store = metric_heavy_store(tmp_path / "mlruns")
    out = tmp_path / "o.db"
    assert fs2sql("migrate", str(store), str(tmp_path / "warm.db")).returncode == 0
    os.unlink(tmp_path / "warm.db")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_fs2sql", "migrate", str(store),
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_temporary(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    if proc.returncode == 0:
        pytest.fail("migration finished before the interrupt; make the store bigger")
    assert proc.returncode == 130
    assert "Interrupted" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["mlruns"]


def test_example_store_migrates_and_verifies(tmp_path):
    out = tmp_path / "demo.db"
    result = runner.invoke(app, ["migrate", "--example", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert "Verified" in result.output
    assert runner.invoke(app, ["verify", "--example", str(out)]).exit_code == 0
    assert runner.invoke(app, ["migrate", "--example"]).exit_code == 2
