"""Fuzzing: random damage to a copy of a small real store (written by MLflow 3.17.2).

The property, for any damage: either the migration succeeds and ``verify`` agrees, or it fails
cleanly -- exit 1 (or 4 with ``--skip-invalid``), one ``Error:`` paragraph naming a file of the
store -- and never a traceback, never a target or temporary file left behind, never a changed
source. The CLI runs in-process (``CliRunner``) so that ~40 examples take well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import cli_runner, damage_source_version, fixture_store, tree_hash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_fs2sql.cli import app

runner = cli_runner()

OPS = ("truncate", "flip", "delete", "duplicate", "empty", "retype", "to_folder", "parent_to_file")
# Wrong-typed values a hand edit (or another tool) might leave in a YAML field.
ODD_VALUES = ([1], {"a": 1}, "x", 12, True, None, -1, 1.5, "2024-01-01", 10**30, "", "RUNNING")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One writable copy of the fixture store, and the files worth damaging (not artifacts)."""
    root = tmp_path_factory.mktemp("pristine") / "mlruns"
    shutil.copytree(fixture_store(damage_source_version(), "small"), root, symlinks=True)
    subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)
    files = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, dirs, names in os.walk(root) for f in names
        if "artifacts" not in os.path.relpath(d, root).split(os.sep))
    return root, files


damage = st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from(OPS), st.floats(0, 1), st.integers(0, 255),
              st.sampled_from(range(len(ODD_VALUES)))),
    min_size=1, max_size=3)


def apply(root, files, plan):
    """Damage files of ``root`` as ``plan`` says; returns what was done (for the failure report)."""
    done = []
    for index, op, where, byte, odd in plan:
        rel = files[index % len(files)]
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if op == "truncate":
            data = data[: int(len(data) * where)]
        elif op == "flip" and data:
            at = min(int(len(data) * where), len(data) - 1)
            data = data[:at] + bytes([byte]) + data[at + 1:]
        elif op == "duplicate":
            data = data + data
        elif op == "empty":
            data = b""
        elif op == "retype":
            try:
                meta = yaml.safe_load(data)
            except Exception:
                meta = None
            if not isinstance(meta, dict) or not meta:
                continue
            key = sorted(meta, key=str)[int(where * (len(meta) - 1))]
            meta[key] = ODD_VALUES[odd]
            data = yaml.safe_dump(meta, allow_unicode=True).encode("utf-8")
            rel = f"{rel} [{key}={ODD_VALUES[odd]!r}]"
        if op == "to_folder":  # a folder where MLflow wrote a file
            os.unlink(path)
            os.mkdir(path)
        elif op == "parent_to_file":  # a file where MLflow made a folder
            parent = os.path.dirname(path)
            if parent == str(root):
                continue
            shutil.rmtree(parent)
            with open(parent, "wb") as f:
                f.write(data)
            rel = os.path.dirname(rel)
        elif op == "delete":
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
        done.append((op, rel))
    return done


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {result.exception!r}")
    assert "Traceback" not in result.output
    assert "unexpectedly" not in result.output, result.output
    return result


def check_one(store, out, skip_invalid: bool, done):
    extra = ["--skip-invalid"] if skip_invalid else []
    result = invoke("migrate", store, out, "-q", *extra)
    allowed = (0, 1, 4) if skip_invalid else (0, 1)
    assert result.exit_code in allowed, (done, result.output)
    if result.exit_code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, (done, result.stderr)
        assert f"Error: {store}" in errors[0], (done, errors[0])  # names a file of the store
        assert sorted(os.listdir(out.parent)) == ["mlruns"], (done, os.listdir(out.parent))
        return
    verified = invoke("verify", store, out, "--json", "-", *extra)
    assert verified.exit_code == 0, (done, verified.output)  # the same skips: it passes
    assert json.loads(verified.stdout)["mismatch_count"] == 0, (done, verified.stdout)
    os.unlink(out)
    assert sorted(os.listdir(out.parent)) == ["mlruns"], (done, os.listdir(out.parent))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=damage)
def test_damaged_store_fails_cleanly_or_migrates_exactly(pristine, tmp_path_factory, plan):
    root, files = pristine
    work = tmp_path_factory.mktemp("fuzz")
    store = work / "mlruns"
    shutil.copytree(root, store, symlinks=True)
    done = apply(store, files, plan)
    before = tree_hash(store)
    out = work / "o.db"
    check_one(store, out, False, done)
    check_one(store, out, True, done)
    assert tree_hash(store) == before, done
    shutil.rmtree(work)
