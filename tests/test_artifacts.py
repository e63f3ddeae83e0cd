"""Artifacts without a server: URI spellings, the rewrite (with renumbering), the copy (parallel,
resumable, retrying, a file changing under it, kill -9), the check, dry-run and errors.

Stores are tiny and literal; their run meta.yaml files point at ``file:///tmp/mlruns/...`` (a
store copied from elsewhere), so the files are found beside the metadata.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_runner, experiment_meta, query, run_meta, tree_hash, write_files

from mlflow_fs2sql.artifacts import ArtifactOptions, Copier, Unit, parse_root_maps
from mlflow_fs2sql.artifacts.copy import ArtifactCopyError, Destinations
from mlflow_fs2sql.artifacts.uris import join, place
from mlflow_fs2sql.cli import app
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

BIG = "412345678901234567"
RUN = "a" * 32
RUN2 = "b" * 32


def artifact_store(root: Path, n_runs: int = 1, files_per_run: int = 3, size: int = 100) -> Path:
    files = {"0/meta.yaml": experiment_meta("0", "Default"),
             f"{BIG}/meta.yaml": experiment_meta(BIG, "big")}
    for i in range(n_runs):
        rid = RUN if i == 0 else f"{i:032x}"
        files[f"{BIG}/{rid}/meta.yaml"] = run_meta(rid, BIG)
        for j in range(files_per_run):
            files[f"{BIG}/{rid}/artifacts/d{j % 2}/f {j}.txt"] = f"{i}-{j}-".encode() * size
    files[f"0/{RUN2}/meta.yaml"] = run_meta(RUN2, "0")
    files[f"0/{RUN2}/artifacts/x.bin"] = bytes(range(256)) * 4
    return write_files(root, files)


# -- URIs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", [
    "file:///C:/Users/alice/My%20Runs/mlruns/1",
    "file://C:/Users/alice/My Runs/mlruns/1",
    "C:\\Users\\alice\\My Runs\\mlruns\\1",
    "c:/Users/alice/My Runs/mlruns/1/",
    "/mnt/c/Users/alice/My Runs/mlruns/1",
    "file:///mnt/c/Users/alice/My%20Runs/mlruns/./1",
])
def test_every_spelling_of_a_windows_root_is_one_place(spelling):
    assert place(spelling) == place("C:\\Users\\alice\\My Runs\\mlruns\\1")
    (m,) = parse_root_maps(["C:\\Users\\alice\\My Runs\\mlruns=s3://team/mlruns"])
    assert m.apply(spelling) == "s3://team/mlruns/1"


def test_root_maps_match_whole_folders_relative_paths_and_escapes():
    maps = parse_root_maps(["/home/alice/mlruns=mlflow-artifacts:/", "../../mlruns=/srv/art"])
    from mlflow_fs2sql.artifacts.uris import rewrite

    assert rewrite("file:///home/alice/mlruns/5/r/artifacts", maps) == \
        "mlflow-artifacts:/5/r/artifacts"
    assert rewrite("/home/alice/mlruns", maps) == "mlflow-artifacts:/"
    assert rewrite("file:///home/alice/mlruns2/5", maps) is None  # not below the root
    assert rewrite("../../mlruns/0/r/artifacts", maps) == "file:///srv/art/0/r/artifacts"
    assert rewrite("./../../mlruns/0", maps) == "file:///srv/art/0"
    assert rewrite("s3://bucket/mlruns/0", maps) is None
    (m,) = parse_root_maps(["file:///home/a/my%20runs=file:///srv/new runs"])
    assert m.apply("/home/a/my runs/0/x y") == "file:///srv/new runs/0/x%20y"


def test_join_is_mlflows_append_to_uri_path():
    from mlflow.utils.uri import append_to_uri_path

    for root in ("mlflow-artifacts:/", "mlflow-artifacts:/5", "s3://b/p", "s3://b",
                 "file:///d", "gs://b/p/"):
        assert join(root, "5", "r", "artifacts") == append_to_uri_path(root, "5", "r",
                                                                       "artifacts")


def test_a_map_without_equals_sign_is_one_clear_error():
    from mlflow_fs2sql.errors import Fs2sqlError

    with pytest.raises(Fs2sqlError, match="is not OLD=NEW"):
        parse_root_maps(["/home/alice/mlruns"])


# -- migrate --artifacts-to: layout, renumbering, verify -------------------------------------------
def test_renumbered_experiments_get_the_servers_layout_and_verify_follows(tmp_path):
    store = artifact_store(tmp_path / "mlruns")
    before = tree_hash(store)
    dest, db = tmp_path / "mlartifacts", tmp_path / "out.db"
    options = ArtifactOptions(to=str(dest))
    report = migrate(str(store), str(db), MigrateOptions(experiment_ids="renumber", verify=True,
                                                         artifacts=options))
    assert report.ok and report.experiment_ids["renumbered"] == {BIG: 1}
    assert query(db, "SELECT experiment_id, artifact_location FROM experiments ORDER BY 1") == \
        [(0, "mlflow-artifacts:/0"), (1, "mlflow-artifacts:/1")]
    assert sorted(query(db, "SELECT artifact_uri FROM runs")) == sorted(
        [(f"mlflow-artifacts:/1/{RUN}/artifacts",), (f"mlflow-artifacts:/0/{RUN2}/artifacts",)])
    assert (dest / "1" / RUN / "artifacts/d0/f 0.txt").read_bytes() == b"0-0-" * 100
    assert (dest / "0" / RUN2 / "artifacts/x.bin").stat().st_size == 1024
    assert report.artifacts["copy"]["copied_files"] == 4 == report.artifacts["files"]
    assert tree_hash(store) == before  # the source is never changed
    assert verify(str(store), str(db), artifacts_options=options).ok
    plain = verify(str(store), str(db))  # without the flags the old URIs are expected
    assert not plain.ok and all("artifact" in m for m in plain.mismatches)


def test_direct_uris_point_at_dest_itself(tmp_path):
    store = artifact_store(tmp_path / "mlruns")
    dest, db = tmp_path / "art", tmp_path / "out.db"
    report = migrate(str(store), str(db), MigrateOptions(
        artifacts=ArtifactOptions(to=str(dest), uris="direct")))
    assert (f"{dest.as_uri()}/{BIG}/{RUN}/artifacts",) in query(db, "SELECT artifact_uri "
                                                                    "FROM runs")
    assert report.start_command.endswith(f"--default-artifact-root {dest.as_uri()}")


def test_uris_that_are_already_remote_stay(tmp_path):
    store = artifact_store(tmp_path / "mlruns")
    meta = store / BIG / RUN / "meta.yaml"
    meta.write_text(run_meta(RUN, BIG, artifact_uri=f"s3://old/{RUN}/artifacts"))
    db = tmp_path / "out.db"
    report = migrate(str(store), str(db), MigrateOptions(
        artifacts=ArtifactOptions(to=str(tmp_path / "dest"))))
    assert (f"s3://old/{RUN}/artifacts",) in query(db, "SELECT artifact_uri FROM runs")
    assert report.artifacts["kept"] == {"s3": 1}
    assert not (tmp_path / "dest" / BIG / RUN).exists()


# -- the copier ---------------------------------------------------------------------------------
class FlakyRepo:
    """A real local repository whose ``log_artifact`` fails or changes the source first."""

    def __init__(self, uri, fail=0, change=0, always_change=False):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        self.repo = get_artifact_repository(uri)
        self.fail, self.change, self.always_change = fail, change, always_change
        self.calls = 0

    def log_artifact(self, local, path=None):
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError("connection reset by peer")
        self.repo.log_artifact(local, path)
        if self.change or self.always_change:
            self.change -= 1
            time.sleep(0.01)
            with open(local, "ab") as f:  # a writer appends while we copy
                f.write(b"+")

    def list_artifacts(self, path=None):
        return self.repo.list_artifacts(path)


def _unit(tmp_path, name="u"):
    src = write_files(tmp_path / f"src-{name}", {"a.txt": "a" * 10, "sub/b.txt": "b" * 20})
    from mlflow_fs2sql.artifacts.plan import list_files

    return Unit("run", name, str(src), (tmp_path / "dest" / name).as_uri(), list_files(str(src)))


def test_transient_errors_are_retried_and_a_changed_file_is_copied_again(tmp_path):
    unit = _unit(tmp_path)
    repos = {}

    def factory(uri):
        repos[uri] = FlakyRepo(uri, fail=2, change=1)
        return repos[uri]

    options = ArtifactOptions(to=str(tmp_path / "dest"), workers=1)
    stats = Copier(options, Destinations(options, factory), sleep=lambda s: None).run([unit])
    assert stats.copied_files == 2 and stats.retries >= 3 and stats.recopied_changed == 1
    src = Path(unit.source_dir)
    for rel in ("a.txt", "sub/b.txt"):  # the destination holds the final content
        assert (tmp_path / "dest/u" / rel).read_bytes() == (src / rel).read_bytes()


def test_a_file_that_keeps_changing_fails_after_every_other_file(tmp_path):
    unit = _unit(tmp_path)
    options = ArtifactOptions(to=str(tmp_path / "dest"), workers=2, retries=2)
    dests = Destinations(options, lambda uri: FlakyRepo(uri, always_change=True))
    with pytest.raises(ArtifactCopyError, match="2 of 2 artifact files could not be copied") as e:
        Copier(options, dests, sleep=lambda s: None).run([unit])
    assert "changed while it was being copied" in str(e.value)
    assert "run the same command again" in str(e.value)


def test_a_rerun_copies_only_what_is_missing_or_different(tmp_path):
    unit = _unit(tmp_path)
    options = ArtifactOptions(to=str(tmp_path / "dest"))
    assert Copier(options).run([unit]).copied_files == 2
    again = Copier(options).run([unit])
    assert (again.copied_files, again.present_files) == (0, 2)
    (tmp_path / "dest/u/sub/b.txt").write_text("short")  # a copy cut off by a kill
    third = Copier(options).run([unit])
    assert (third.copied_files, third.present_files) == (1, 1)
    assert (tmp_path / "dest/u/sub/b.txt").read_text() == "b" * 20
    (tmp_path / "dest/u/a.txt").write_text("x" * 10)  # same size: the mtime tells (a folder)
    assert Copier(options).run([unit]).copied_files == 1
    assert (tmp_path / "dest/u/a.txt").read_text() == "a" * 10


# -- errors, dry run, missing files ----------------------------------------------------------------
def test_dest_inside_the_store_is_refused(tmp_path):
    store = artifact_store(tmp_path / "mlruns")
    result = cli_runner().invoke(app, ["migrate", str(store), str(tmp_path / "o.db"),
                                       "--artifacts-to", str(store / "art")])
    assert result.exit_code == 1
    assert "lies inside the store" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.db").exists() and not (store / "art").exists()


def test_a_missing_cloud_sdk_names_the_extra(tmp_path, monkeypatch):
    import mlflow.store.artifact.artifact_repository_registry as registry

    def no_boto3(uri, *a, **k):
        raise ModuleNotFoundError("No module named 'boto3'", name="boto3")

    monkeypatch.setattr(registry, "get_artifact_repository", no_boto3)
    store = artifact_store(tmp_path / "mlruns")
    result = cli_runner().invoke(app, ["migrate", str(store), str(tmp_path / "o.db"),
                                       "--artifacts-to", "s3://bucket/x"])
    assert result.exit_code == 1, result.output
    assert "fs2sql[s3]" in result.stderr and not (tmp_path / "o.db").exists()


def test_dry_run_counts_and_sizes_and_writes_nothing(tmp_path):
    store = artifact_store(tmp_path / "mlruns", n_runs=2, files_per_run=3, size=10)
    out = tmp_path / "r.json"
    result = cli_runner().invoke(app, ["migrate", "--dry-run", str(store), str(tmp_path / "o.db"),
                                       "--artifacts-to", str(tmp_path / "dest"), "--json",
                                       str(out)])
    assert result.exit_code == 0, result.stderr
    a = json.loads(out.read_text())["artifacts"]
    assert a["files"] == 7 and a["bytes"] == 2 * (3 * 40) + 1024
    assert a["rewritten"] == {"experiment": 2, "run": 3} and a["copy"] is None
    assert "Artifact files: 7" in result.stdout and "would copy" in result.stdout
    assert not (tmp_path / "dest").exists() and not (tmp_path / "o.db").exists()


def test_artifacts_missing_in_the_source_are_a_warning(tmp_path):
    store = artifact_store(tmp_path / "mlruns")
    tid = "tr-" + "c" * 32
    write_files(store, {
        f"{BIG}/traces/{tid}/trace_info.yaml":
            f"trace_id: {tid}\nrequest_time: '2024-06-10T06:13:20.123Z'\nstate: OK\n"
            "trace_location:\n  type: MLFLOW_EXPERIMENT\n  mlflow_experiment:\n"
            f"    experiment_id: '{BIG}'\nexecution_duration: 0.5s\n",
        f"{BIG}/traces/{tid}/tags/mlflow.artifactLocation":
            f"file:///tmp/mlruns/{BIG}/traces/{tid}/artifacts",
        f"{BIG}/traces/{tid}/artifacts/other.txt": "no spans here",
    })
    report = migrate(str(store), str(tmp_path / "o.db"), MigrateOptions(
        artifacts=ArtifactOptions(to=str(tmp_path / "dest"))))
    assert report.ok
    assert any("traces.json is missing in the source" in w for w in report.warnings), \
        report.warnings
    assert report.artifacts["missing_count"] == 1


def test_verify_finds_a_changed_file_at_the_destination(tmp_path):
    store = artifact_store(tmp_path / "mlruns")
    dest, db = tmp_path / "dest", tmp_path / "o.db"
    args = [str(store), str(db), "--artifacts-to", str(dest)]
    assert cli_runner().invoke(app, ["migrate", *args]).exit_code == 0
    assert cli_runner().invoke(app, ["verify", *args]).exit_code == 0
    f = dest / BIG / RUN / "artifacts/d1/f 1.txt"
    f.write_bytes(f.read_bytes()[:-1] + b"X")  # same size, other content
    result = cli_runner().invoke(app, ["verify", *args])
    assert result.exit_code == 3
    assert "MD5" in result.stdout and "f 1.txt" in result.stdout
    assert cli_runner().invoke(app, ["verify", *args, "--no-artifacts"]).exit_code == 0


# -- kill -9 during the copy, then a run that resumes ----------------------------------------------
@pytest.mark.slow
def test_kill_during_the_copy_publishes_nothing_and_the_rerun_resumes(tmp_path):
    store = artifact_store(tmp_path / "mlruns", n_runs=40, files_per_run=100, size=500)
    before = tree_hash(store)
    dest, db = tmp_path / "dest", tmp_path / "o.db"
    cmd = [sys.executable, "-m", "mlflow_fs2sql", "migrate", str(store), str(db),
           "--artifacts-to", str(dest), "--artifact-workers", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while sum(len(f) for _, _, f in os.walk(dest)) < 200:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    copied = sum(len(f) for _, _, f in os.walk(dest))
    assert 200 <= copied < 4001
    assert not db.exists()  # nothing published
    out = tmp_path / "r.json"
    done = subprocess.run(cmd[:-1] + ["--verify", "--json", str(out)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    copy = json.loads(out.read_text())["artifacts"]["copy"]
    assert copy["present_files"] >= copied - 2  # at most a file in flight is redone
    assert copy["present_files"] + copy["copied_files"] == 4001
    assert tree_hash(store) == before


@pytest.mark.parametrize("flags, words", [
    (["--artifact-uris", "direct"], "needs --artifacts-to"),
    (["--artifacts-to", "d", "--artifact-uris", "both"], "proxied or direct"),
    (["--artifact-root-map", "/only/old"], "is not OLD=NEW"),
])
def test_wrong_artifact_flags_are_usage_errors(tmp_path, flags, words):
    result = cli_runner().invoke(app, ["migrate", str(tmp_path), str(tmp_path / "o.db"), *flags])
    assert result.exit_code == 2 and words in result.stderr, result.stderr


def test_the_progress_bar_counts_bytes_on_a_terminal():
    import io

    from rich.console import Console

    from mlflow_fs2sql.report import RichProgress

    out = io.StringIO()
    bar = RichProgress(Console(file=out, force_terminal=True, width=100))
    bar.start("Migrating runs", 3)
    bar.advance()
    bar.start("Copying artifacts", 5_000_000, unit="bytes")
    bar.advance(2_500_000)
    bar._progress.refresh()
    assert "2.5/5.0 MB" in out.getvalue()
    bar.start("Verifying runs", 3)  # back to counts
    bar.advance()
    bar.stop()
