"""Bad input and faults: each case damages a COPY of a real store written by MLflow 3.17.2.

The contract (README "Exit codes"): the first invalid thing stops the migration with one paragraph
naming the file, what is wrong and what to do, exit code 1, no traceback and no target file;
``--skip-invalid`` migrates everything else, lists each skipped entity, exits 4, and ``verify
--skip-invalid`` agrees. The source is never changed: every test hashes it before and after.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import cli_runner, damage_source_version, fixture_store, tree_hash

from mlflow_fs2sql.cli import app

runner = cli_runner()


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path) -> Path:
    """A writable copy of the small 3.17.2 fixture store (the cached original is read-only)."""
    dst = tmp_path / "mlruns"
    shutil.copytree(fixture_store(damage_source_version(), "small"), dst, symlinks=True)
    subprocess.run(["chmod", "-R", "u+w", str(dst)], check=True)
    return dst


def run_dir(store: Path, run_name: str) -> Path:
    """The folder of the run called ``run_name`` (IDs are random; names are the fixture's)."""
    for meta in sorted(store.glob("*/*/meta.yaml")):
        data = yaml.safe_load(meta.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("run_name") == run_name:
            return meta.parent
    raise LookupError(run_name)


def experiment_dir(store: Path, name: str) -> Path:
    for meta in sorted(store.glob("*/meta.yaml")):
        if yaml.safe_load(meta.read_text(encoding="utf-8")).get("name") == name:
            return meta.parent
    raise LookupError(name)


KILLED = "run-killed"  # a small run: params/status_param, metrics/m, tags
ASCII = "fixture-ascii"  # the experiment holding most runs, traces, datasets and models


def edit_yaml(path: Path, **fields) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(fields)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def leftovers(folder: Path, keep=("mlruns", "ext", "saved")) -> list:
    return sorted(n for n in os.listdir(folder) if n not in keep)


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    # Every way out is a deliberate exit: never an exception escaping the command.
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    assert "Traceback" not in result.output
    assert "unexpectedly" not in result.output, result.output
    return result


def first_error_line(result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("Error:"))


def assert_strict_failure(store: Path, out: Path, *fragments: str) -> str:
    """Exit 1, one paragraph naming every fragment, no target, no temporary, source unchanged."""
    before = tree_hash(store)
    result = cli("migrate", store, out)
    assert result.exit_code == 1, result.output
    message = first_error_line(result)
    for fragment in fragments:
        assert fragment in message, message
    assert "--skip-invalid" in message or "Fix" in message or "Choose" in message
    assert leftovers(out.parent) == [], leftovers(out.parent)
    assert tree_hash(store) == before
    return message


def assert_skipped(store: Path, out: Path, *expected: tuple) -> dict:
    """--skip-invalid: exit 4, each (kind, entity_id) listed with path and reason, verify agrees."""
    before = tree_hash(store)
    report_file = out.parent / "report.json"
    result = cli("migrate", store, out, "--skip-invalid", "--json", report_file, "-q")
    assert result.exit_code == 4, result.output
    report = json.loads(report_file.read_text())
    skipped = {(s["kind"], s["entity_id"]): s for s in report["skipped"]}
    for key in expected:
        assert key in skipped, (key, report["skipped"])
        assert skipped[key]["path"] and skipped[key]["reason"]
    result = cli("verify", store, out, "--skip-invalid", "--json", "-")
    assert result.exit_code == 0, result.output  # verify passes; the skips are listed
    verified = json.loads(result.stdout)
    assert verified["mismatch_count"] == 0 and len(verified["skipped"]) == len(report["skipped"])
    assert tree_hash(store) == before
    os.unlink(report_file)
    return report


# -- meta.yaml ---------------------------------------------------------------------------------
def _damage_run_meta(how):
    def damage(store):
        meta = run_dir(store, KILLED) / "meta.yaml"
        how(meta)
        return meta
    return damage


RUN_META_CASES = {
    "corrupt": (lambda m: m.write_text("run_id: [abc\nstatus: 3\n"), "is not valid YAML"),
    "empty": (lambda m: m.write_bytes(b""), "is empty"),
    "truncated": (lambda m: m.write_bytes(m.read_bytes()[:40]), "has no run_id field"),
    "missing": (lambda m: m.unlink(), "meta.yaml: is missing"),
    "a folder": (lambda m: (m.unlink(), m.mkdir()), "is a folder where MLflow writes a file"),
    "not a mapping": (lambda m: m.write_text("- a\n- b\n"), "should hold a YAML mapping"),
    "impossible date": (lambda m: edit_yaml(m) or m.write_text(
        m.read_text() + "when: 2024-13-45\n"), "is not valid YAML"),
    "wrong type start_time": (lambda m: edit_yaml(m, start_time="yesterday"),
                              "field 'start_time' should be an integer but is 'yesterday'"),
    "wrong type end_time list": (lambda m: edit_yaml(m, end_time=[1, 2]),
                                 "field 'end_time' should be an integer but is [1, 2]"),
    "huge time": (lambda m: edit_yaml(m, start_time=10**30),
                  "too large for MLflow's 64-bit integer column"),
    "wrong type user_id": (lambda m: edit_yaml(m, user_id={"a": 1}),
                           "field 'user_id' should be text but is a dict"),
    "unknown status": (lambda m: edit_yaml(m, status=9), "field 'status' has the unknown value 9"),
    "status list": (lambda m: edit_yaml(m, status=[3]), "field 'status' has the unknown value"),
    "unknown lifecycle": (lambda m: edit_yaml(m, lifecycle_stage="archived"),
                          "field 'lifecycle_stage' is 'archived'"),
    "experiment_id mismatch": (lambda m: edit_yaml(m, experiment_id="0"),
                               "says experiment_id '0' but lies in experiment folder"),
    "run_id mismatch": (lambda m: edit_yaml(m, run_id="f" * 32),
                        "says run_id 'ffffffffffffffffffffffffffffffff' but lies in folder"),
}


@pytest.mark.parametrize("case", sorted(RUN_META_CASES))
def test_run_meta_yaml(store, tmp_path, case):
    how, fragment = RUN_META_CASES[case]
    meta = _damage_run_meta(how)(store)
    rid = meta.parent.name
    assert_strict_failure(store, tmp_path / "o.db", f"{meta}: ", fragment)
    assert_skipped(store, tmp_path / "o.db", ("run", rid))


EXPERIMENT_META_CASES = {
    "corrupt": (lambda m: m.write_text("name: 'unclosed\n"), "is not valid YAML"),
    "empty": (lambda m: m.write_text(""), "is empty"),
    "missing": (lambda m: m.unlink(), "is missing"),
    "wrong type name": (lambda m: edit_yaml(m, name=["a"]), "field 'name' should be text"),
    "wrong type creation_time": (lambda m: edit_yaml(m, creation_time=True),
                                 "field 'creation_time' should be an integer but is True"),
    "unknown lifecycle": (lambda m: edit_yaml(m, lifecycle_stage="gone"),
                          "field 'lifecycle_stage' is 'gone'"),
    "experiment_id mismatch": (lambda m: edit_yaml(m, experiment_id="5"),
                               "says experiment_id '5' but lies in folder"),
}


@pytest.mark.parametrize("case", sorted(EXPERIMENT_META_CASES))
def test_experiment_meta_yaml(store, tmp_path, case):
    how, fragment = EXPERIMENT_META_CASES[case]
    exp = run_dir(store, "ラン-日本語-中文").parent  # a small experiment with one run
    meta = exp / "meta.yaml"
    how(meta)
    assert_strict_failure(store, tmp_path / "o.db", f"{meta}: ", fragment)
    report = assert_skipped(store, tmp_path / "o.db", ("experiment", exp.name))
    (run,) = [s for s in report["skipped"] if s["kind"] == "run"]
    assert run["reason"] == f"its experiment {exp.name} was skipped"


def test_same_run_id_in_two_experiments(store, tmp_path):
    run = run_dir(store, KILLED)
    other = run_dir(store, "ラン-日本語-中文").parent
    copy = other / run.name
    shutil.copytree(run, copy)
    edit_yaml(copy / "meta.yaml", experiment_id=other.name)
    first, second = sorted([run, copy], key=lambda p: int(p.parent.name))
    message = assert_strict_failure(store, tmp_path / "o.db", f"{second}/meta.yaml: ",
                                    f"run {run.name} also exists in {first}")
    assert "a run ID must be unique" in message
    assert_skipped(store, tmp_path / "o.db", ("run", run.name))


def test_two_experiments_with_the_same_name(store, tmp_path):
    a = experiment_dir(store, ASCII)
    b = run_dir(store, "ラン-日本語-中文").parent
    edit_yaml(b / "meta.yaml", name=ASCII)
    first, second = sorted([a, b], key=lambda p: int(p.name))
    assert_strict_failure(store, tmp_path / "o.db", f"{second}/meta.yaml: ",
                          f"has the name '{ASCII}', which experiment {first.name} has too")
    assert_skipped(store, tmp_path / "o.db", ("experiment", second.name))


def test_experiment_in_both_active_and_trash(store, tmp_path):
    (trashed,) = (store / ".trash").iterdir()
    shutil.copytree(trashed, store / trashed.name)
    assert_strict_failure(store, tmp_path / "o.db", "exists both in",
                          f"experiment {trashed.name}")


def test_a_file_where_a_run_folder_has_a_folder(store, tmp_path):
    for sub in ("params", "tags", "metrics"):
        folder = run_dir(store, KILLED) / sub
        saved = tmp_path / "saved"
        shutil.move(folder, saved)
        folder.write_text("x")
        assert_strict_failure(store, tmp_path / "o.db", f"{folder}: ",
                              "is a file where MLflow keeps a folder")
        folder.unlink()
        shutil.move(saved, folder)


def test_a_folder_where_a_value_file_should_be(store, tmp_path):
    param = run_dir(store, KILLED) / "params" / "status_param"
    param.unlink()
    (param / "inner").mkdir(parents=True)  # an empty key folder holds no key: fine
    assert cli("migrate", store, tmp_path / "o.db", "-q").exit_code == 0
    os.unlink(tmp_path / "o.db")
    metric = run_dir(store, KILLED) / "metrics" / "m"
    metric.unlink()
    metric.mkdir()
    (metric / "x").write_text("1 nonsense 0\n")  # a key "m/x" whose line is bad
    assert_strict_failure(store, tmp_path / "o.db", f"{metric}/x: ", "line 1 cannot be parsed")


# -- metrics, params, tags ---------------------------------------------------------------------
METRIC_CASES = {
    "too few fields": (b"1718000000000\n", "line 1 has 1 fields; MLflow writes 'timestamp value "
                                           "step'"),
    "too many fields": (b"1718000000000 0.5 0 a\n", "line 1 has 4 fields"),
    "six fields": (b"1 0.5 0 d e f\n", "line 1 has 6 fields"),
    "non-numeric value": (b"1718000000000 high 0\n", "line 1 cannot be parsed"),
    "non-numeric timestamp": (b"yesterday 0.5 0\n", "line 1 cannot be parsed"),
    "non-numeric step": (b"1718000000000 0.5 1.5\n", "line 1 cannot be parsed"),
    "blank line in the middle": (b"1 0.5 0\n\n2 0.5 1\n", "line 2 is blank"),
    "huge timestamp": (b"99999999999999999999 0.5 0\n", "too large for MLflow's 64-bit"),
    "empty file": (b"", "is an empty metric file"),
    "not UTF-8": (b"1 0.5 0\n\xff\xfe\n", "is not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(METRIC_CASES))
def test_metric_files(store, tmp_path, case):
    data, fragment = METRIC_CASES[case]
    metric = run_dir(store, KILLED) / "metrics" / "m"
    metric.write_bytes(data)
    assert_strict_failure(store, tmp_path / "o.db", f"{metric}: ", fragment)
    assert_skipped(store, tmp_path / "o.db", ("run", metric.parent.parent.name))


@pytest.mark.parametrize("sub, data, fragment", [
    ("params/status_param", b"caf\xe9", "is not valid UTF-8 (byte 3: b'\\xe9')"),
    ("tags/kind", b"\xc3\x28", "is not valid UTF-8 (byte 0"),
    ("params/status_param", b"x" * 8001, "params.value holds at most 8000"),
    ("tags/kind", "é" * 8001, "tags.value holds at most 8000"),
    ("params/" + "k" * 251, b"v", "params.key holds at most 250"),
])
def test_params_and_tags(store, tmp_path, sub, data, fragment):
    path = run_dir(store, KILLED) / sub
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    message = assert_strict_failure(store, tmp_path / "o.db", fragment)
    assert str(path) in message or str(path.parent.parent) in message
    assert_skipped(store, tmp_path / "o.db", ("run", path.parent.parent.name))


def test_experiment_tag_not_utf8(store, tmp_path):
    exp = experiment_dir(store, ASCII)
    tag = next((exp / "tags").iterdir())
    tag.write_bytes(b"\xff")
    assert_strict_failure(store, tmp_path / "o.db", f"{tag}: ", "is not valid UTF-8")
    report = assert_skipped(store, tmp_path / "o.db", ("experiment", exp.name))
    # Everything inside the experiment goes with it, each listed with a reason.
    kinds = {s["kind"] for s in report["skipped"]}
    inside = {"traces", "datasets", "models"} & {p.name for p in exp.iterdir()}
    assert {"experiment", "run"} | inside <= kinds, kinds
    assert {"traces", "datasets"} <= inside  # the fixture has them (models only since MLflow 3)


# -- stray files and folders -------------------------------------------------------------------
def test_stray_files_and_folders_are_ignored_and_listed(store, tmp_path):
    run = run_dir(store, KILLED)
    exp = run.parent
    strays = [
        store / ".DS_Store", store / "._0", store / "notes",  # a folder that is no experiment
        store / ".ipynb_checkpoints" / "x.ipynb",
        exp / ".DS_Store", exp / "Thumbs.db", exp / ".ipynb_checkpoints" / "a",
        exp / "README.txt",
        run / "params" / ".DS_Store",
        run / "metrics" / "m~", run / "tags" / "__MACOSX" / "x",
        exp / "scratch" / "notes.txt",  # a folder that is no run (no meta.yaml, nothing of a run)
    ]
    # Beside a run's meta.yaml (not listed: fs2sql does not list run folders, only reads the
    # files MLflow writes there) -- never an error either.
    unlisted = [run / "meta.yaml~", run / ".meta.yaml.swp", run / ".DS_Store"]
    for path in unlisted:
        path.write_text("junk")
    for path in strays:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("junk")
    before = tree_hash(store)
    out = tmp_path / "o.db"
    result = cli("migrate", store, out, "--json", "-", "--verify")
    assert result.exit_code == 0, result.output
    ignored = set(json.loads(result.stdout)["ignored"])
    expected = {str(p) for p in strays if p.parent in (store, exp, run, run / "params",
                                                       run / "metrics")}
    expected |= {str(store / ".ipynb_checkpoints"), str(exp / ".ipynb_checkpoints"),
                 str(run / "tags" / "__MACOSX"), str(exp / "scratch")}
    expected -= {str(store / "notes")}
    assert expected <= ignored, expected - ignored
    assert str(store / "notes") in ignored  # a file at the root is not an experiment
    assert cli("verify", store, out).exit_code == 0
    assert tree_hash(store) == before


# -- symbolic links ----------------------------------------------------------------------------
@contextmanager
def no_hang(seconds=60):
    def boom(*_):
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_symlinks_inside_the_store_are_followed(store, tmp_path):
    run = run_dir(store, KILLED)
    # A run folder moved aside (into a folder that is no experiment) and linked back.
    shared = store / "shared"
    shared.mkdir()
    shutil.move(run, shared / run.name)
    os.symlink(Path("..") / "shared" / run.name, run)
    # A value file linked to another file inside the store, by absolute path.
    other = run_dir(store, "run-failed")
    (other / "params" / "status_param").unlink()
    os.symlink(shared / run.name / "params" / "status_param", other / "params" / "status_param")
    out = tmp_path / "o.db"
    result = cli("migrate", store, out, "--verify", "--json", "-")
    assert result.exit_code == 0, result.output
    assert str(shared) in json.loads(result.stdout)["ignored"]
    con = sqlite3.connect(out)
    got = con.execute("SELECT run_uuid, value FROM params WHERE key='status_param' "
                      "ORDER BY run_uuid").fetchall()
    con.close()
    want = (shared / run.name / "params" / "status_param").read_text()
    assert (run.name, want) in got and (other.name, want) in got


def test_symlink_out_of_the_store_is_invalid(store, tmp_path):
    outside = tmp_path / "ext"
    outside.mkdir()
    (outside / "value").write_text("from elsewhere")
    param = run_dir(store, KILLED) / "params" / "status_param"
    param.unlink()
    os.symlink(outside / "value", param)
    message = assert_strict_failure(store, tmp_path / "o.db", f"{param}: ",
                                    f"is a symbolic link to {outside / 'value'}, outside the store")
    assert "Replace the link with a copy" in message
    assert_skipped(store, tmp_path / "o.db", ("run", param.parent.parent.name))


def test_run_folder_linked_out_of_the_store_is_invalid(store, tmp_path):
    run = run_dir(store, KILLED)
    shutil.move(run, tmp_path / "ext")
    os.symlink(tmp_path / "ext", run)
    assert_strict_failure(store, tmp_path / "o.db", f"{run}: ", "outside the store")
    assert_skipped(store, tmp_path / "o.db", ("run", run.name))


def test_experiment_folder_linked_out_of_the_store_is_invalid(store, tmp_path):
    exp = run_dir(store, "ラン-日本語-中文").parent
    shutil.move(exp, tmp_path / "ext")
    os.symlink(tmp_path / "ext", exp)
    assert_strict_failure(store, tmp_path / "o.db", f"{exp}: ", "outside the store")
    assert_skipped(store, tmp_path / "o.db", ("experiment", exp.name))


@pytest.mark.parametrize("make, fragment", [
    (lambda d: os.symlink(".", d / "loop"), "is a symbolic link back to"),
    (lambda d: os.symlink(d.parent, d / "up"), "is a symbolic link back to"),
    (lambda d: (os.symlink(d / "b", d / "a"), os.symlink(d / "a", d / "b")),
     "which does not exist (or is a loop of links)"),
    (lambda d: os.symlink(d / "nowhere", d / "dangling"),
     "which does not exist (or is a loop of links)"),
])
def test_symlink_loops_and_dangling_links_do_not_hang(store, tmp_path, make, fragment):
    params = run_dir(store, KILLED) / "params"
    make(params)
    with no_hang():
        assert_strict_failure(store, tmp_path / "o.db", f"{params}/", fragment)
        assert_skipped(store, tmp_path / "o.db", ("run", params.parent.name))


def test_experiment_linked_to_the_store_itself_does_not_hang(store, tmp_path):
    os.symlink(".", store / "77")
    with no_hang():
        assert_strict_failure(store, tmp_path / "o.db", f"{store}/77/meta.yaml: ", "is missing")


# -- the source --------------------------------------------------------------------------------
@pytest.mark.parametrize("make, fragment", [
    (lambda p: p, "does not exist. Give the path of your mlruns folder."),
    (lambda p: (p.mkdir(), p)[1], "is an empty folder: there is nothing to migrate."),
    (lambda p: (p.mkdir(), (p / "x.txt").write_text("hi"), p)[2],
     "is not an MLflow FileStore"),
    (lambda p: (p.write_text("x"), p)[1], "is a file, not a folder."),
])
def test_source_missing_empty_or_not_a_store(tmp_path, make, fragment):
    src = make(tmp_path / "src")
    out = tmp_path / "o.db"
    for command in ("migrate", "verify"):
        result = cli(command, src, out)
        assert result.exit_code == 1
        assert first_error_line(result) .startswith(f"Error: {src}: ")
        assert fragment in result.stderr
    assert not out.exists()


def test_unreadable_source_folder(store, tmp_path, monkeypatch):
    """Root reads any folder, so the permission error is simulated where fs2sql lists it."""
    real_scandir = os.scandir
    exp = run_dir(store, KILLED).parent

    def scandir(path="."):
        if os.fspath(path) == str(exp):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert_strict_failure(store, tmp_path / "o.db", f"{exp}: cannot be read (Permission denied)")
    report = assert_skipped(store, tmp_path / "o.db", ("experiment", exp.name))
    assert any(s["kind"] == "run" and s["entity_id"] == "*" for s in report["skipped"])


def test_unreadable_value_file(store, tmp_path, monkeypatch):
    real_open = os.open
    param = run_dir(store, KILLED) / "params" / "status_param"

    def fake_open(file, *args, **kwargs):  # as if root had not run the tests
        if not isinstance(file, int) and os.fspath(file) == str(param):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    assert_strict_failure(store, tmp_path / "o.db", f"{param}: cannot be read (Permission denied)")
    assert_skipped(store, tmp_path / "o.db", ("run", param.parent.parent.name))


# -- the target --------------------------------------------------------------------------------
def test_target_folder_missing(store, tmp_path):
    out = tmp_path / "nope" / "o.db"
    result = cli("migrate", store, out)
    assert result.exit_code == 1
    assert first_error_line(result) == (
        f"Error: {out.parent}: the folder for the database does not exist. Create it first "
        "(mkdir -p) or choose another target path.")


def test_target_folder_is_a_file(store, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = cli("migrate", store, tmp_path / "afile" / "o.db")
    assert result.exit_code == 1 and "is a file, not a folder" in first_error_line(result)


def test_target_is_a_folder(store, tmp_path):
    (tmp_path / "o.db").mkdir()
    result = cli("migrate", store, tmp_path / "o.db")
    assert result.exit_code == 1 and "is a folder, not a database file" in result.stderr


def _mount(*args) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A tiny tmpfs (root only); skipped where mounting is not allowed."""
    mounted = []

    def make(name, *options):
        folder = tmp_path / name
        folder.mkdir()
        if not _mount("-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)):
            pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_target_folder_not_writable_read_only_mount(store, tmp_path, tmpfs):
    """As root ``os.access`` says yes to everything: a read-only mount really refuses."""
    folder = tmpfs("ro", "ro", "size=64k")
    result = cli("migrate", store, folder / "o.db")
    assert result.exit_code == 1
    assert first_error_line(result).startswith(
        f"Error: {folder}: fs2sql cannot create files in this folder (Read-only file system).")
    assert os.listdir(folder) == []


def test_target_folder_not_writable_simulated(store, tmp_path, monkeypatch):
    """The same refusal where mounting is not possible: the probe file cannot be created."""
    real_open = os.open
    folder = tmp_path / "locked"
    folder.mkdir()

    def fake_open(path, flags, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(folder) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    result = cli("migrate", store, folder / "o.db")
    assert result.exit_code == 1
    assert first_error_line(result) == (
        f"Error: {folder}: fs2sql cannot create files in this folder (Permission denied). "
        "Choose a target in a folder you can write to.")
    assert os.listdir(folder) == []


def test_target_exists_without_terminal_is_refused_unless_force(store, tmp_path):
    out = tmp_path / "o.db"
    out.write_text("precious")
    result = cli("migrate", store, out)  # CliRunner's stdin is no terminal: no prompt
    assert result.exit_code == 1
    assert first_error_line(result).startswith(
        f"Error: {out}: already exists and is a file that is not an SQLite database. fs2sql "
        "never writes into an existing database.")
    assert "--force" in result.stderr and out.read_text() == "precious"
    assert cli("verify", store, out).exit_code == 1  # verify: "is a file that is not an SQLite"
    assert cli("migrate", store, out, "--force", "-q").exit_code == 0
    assert cli("verify", store, out, "-q").exit_code == 0


def test_target_is_a_non_empty_mlflow_database(store, tmp_path):
    out = tmp_path / "o.db"
    assert cli("migrate", store, out, "-q").exit_code == 0
    before = out.read_bytes()
    con = sqlite3.connect(out)
    n_exp, n_run = (con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                    for t in ("experiments", "runs"))
    con.close()
    result = cli("migrate", store, out)
    assert result.exit_code == 1
    assert first_error_line(result).startswith(
        f"Error: {out}: already exists and is an MLflow database with {n_exp} experiments and "
        f"{n_run} runs. fs2sql never writes into an existing database.")
    assert out.read_bytes() == before and leftovers(tmp_path) == ["o.db"]


def test_target_is_a_damaged_sqlite_file(store, tmp_path):
    out = tmp_path / "o.db"
    out.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)
    result = cli("verify", store, out)
    assert result.exit_code == 1 and "is a damaged SQLite file" in result.stderr


DISK_FULL = "the disk is full; nothing was written. Free some space"


def test_disk_full_real_tmpfs(store, tmp_path, tmpfs):
    folder = tmpfs("small", "size=200k")
    result = cli("migrate", store, folder / "o.db")
    assert result.exit_code == 1, result.output
    message = first_error_line(result)
    assert DISK_FULL in message, message
    assert os.listdir(folder) == []  # no target, no temporary


@pytest.mark.parametrize("where", ["insert", "copy", "commit", "publish"])
def test_disk_full_simulated(store, tmp_path, monkeypatch, where):
    from mlflow_fs2sql.targets import sqlite as target

    if where == "insert":
        def boom(self, *a, **k):
            raise target._wrap_db_error(sqlite3.OperationalError("database or disk is full"),
                                        self.tmp_path)
        monkeypatch.setattr(target.SqliteTarget, "insert_many", boom)
    elif where == "copy":
        def boom(src, dst):
            with open(dst, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        monkeypatch.setattr(target, "copy_file", boom)
    elif where == "commit":
        real = target.SqliteTarget.publish

        def publish(self, before=None):
            def fail():
                raise sqlite3.OperationalError("database or disk is full")
            self.conn.commit = fail
            return real(self, before)
        monkeypatch.setattr(target.SqliteTarget, "publish", publish)
    else:
        def boom(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(target.os, "replace", boom)
    before = tree_hash(store)
    result = cli("migrate", store, tmp_path / "o.db")
    assert result.exit_code == 1, result.output
    assert DISK_FULL in first_error_line(result)
    assert leftovers(tmp_path) == []
    assert tree_hash(store) == before


def test_ctrl_c_mid_walk_is_exit_130_and_leaves_nothing(store, tmp_path, monkeypatch):
    from mlflow_fs2sql import walk

    real = walk.Walk._read_run
    calls = []

    def read_run(self, unit, experiment, path, **kw):  # on an I/O thread
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, unit, experiment, path, **kw)

    monkeypatch.setattr(walk.Walk, "_read_run", read_run)
    before = tree_hash(store)
    result = runner.invoke(app, ["migrate", str(store), str(tmp_path / "o.db")])
    assert result.exit_code == 130
    assert "Interrupted: nothing was written" in result.stderr
    assert "Traceback" not in result.output
    assert leftovers(tmp_path) == [] and tree_hash(store) == before


# -- a store that is still being written -------------------------------------------------------
def test_files_changing_during_the_migration_are_a_warning(store, tmp_path, monkeypatch):
    """MLflow still logging: a metric line appended while fs2sql walks the store."""
    from mlflow_fs2sql import walk

    running = run_dir(store, "run-running ⏳")
    metric = running / "metrics" / "m"
    real = walk.Walk._take_run
    seen = []

    def take_run(self, unit):  # runs come in walk order, after their files were read
        if seen == [str(running)]:  # the next run after the running one
            with open(metric, "a") as f:  # the user's training script, not fs2sql
                f.write("1900000000000 1.0 99\n")
        if unit.path == str(running) or seen:
            seen.append(unit.path)
        return real(self, unit)

    monkeypatch.setattr(walk.Walk, "_take_run", take_run)
    result = cli("migrate", store, tmp_path / "o.db", "--json", "-")
    assert result.exit_code == 0
    warnings = json.loads(result.stdout)["warnings"]
    assert any("runs are still RUNNING" in w for w in warnings)
    assert any(f"1 files were changed while fs2sql read the store (first: {metric})" in w
               for w in warnings), warnings


def test_a_file_written_just_before_it_is_read_is_a_warning(store, tmp_path, monkeypatch):
    from mlflow_fs2sql import parse

    param = run_dir(store, KILLED) / "metrics" / "m"  # metric files and meta.yaml are watched
    real = parse.read_bytes

    def read_bytes(path, *a, **k):
        if path == str(param):
            now = time.time_ns()  # touched now, i.e. after the walk started (set exactly: the
            os.utime(path, ns=(now, now))  # kernel's own "now" may lag by a clock tick)
        return real(path, *a, **k)

    monkeypatch.setattr(parse, "read_bytes", read_bytes)
    monkeypatch.setattr("mlflow_fs2sql.walk.read_bytes", read_bytes, raising=False)
    result = cli("migrate", store, tmp_path / "o.db", "--json", "-")
    assert result.exit_code == 0
    assert any(f"(first: {param})" in w for w in json.loads(result.stdout)["warnings"])


def test_a_quiet_store_has_no_change_warning(store, tmp_path):
    # Files dated in the future (a clock ahead on the machine that wrote them) are no change.
    future = 4102444800  # 2100-01-01
    os.utime(run_dir(store, KILLED) / "meta.yaml", (future, future))
    result = cli("migrate", store, tmp_path / "o.db", "--json", "-")
    assert result.exit_code == 0
    assert not any("changed while" in w for w in json.loads(result.stdout)["warnings"])


def test_permissions_of_the_source_are_untouched(store, tmp_path):
    """Read-only source files (as a backup or a mounted share has them) migrate fine."""
    subprocess.run(["chmod", "-R", "a-w", str(store)], check=True)
    try:
        before = tree_hash(store)
        assert cli("migrate", store, tmp_path / "o.db", "-q").exit_code == 0
        assert tree_hash(store) == before
        assert not os.stat(store).st_mode & stat.S_IWUSR
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(store)], check=True)
