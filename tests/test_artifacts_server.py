"""Artifacts through a real ``mlflow server`` (full MLflow 3.17.2, its own virtualenv).

The store (``fixtures_gen/artifact_store.py``) was written by MLflow 3.17.2 with real files: run
artifacts, a pyfunc logged model, two registered model versions (from the logged model and from
a folder of run artifacts) and a trace. fs2sql migrates it with ``--artifacts-to DEST`` (or
rewrites with ``--artifact-root-map`` after the files were moved by hand); the server is started
as fs2sql's report says (``--artifacts-destination DEST``); MLflow's client then downloads the
run's files, loads the logged model and the registered version, downloads the other version's
files, reads the trace's spans, logs a new file to the migrated run and creates a new run whose
artifacts must land beside the old ones.

Migrations use ``--mlflow-version 3.17.2``: the newest full MLflow that installs is 3.17.2, and
it opens only its own schema revision (mlflow-skinny 3.18 would make a newer one).
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from artifact_servers import mlflow_server, moto_s3, s3_client
from conftest import query

from fixtures_gen.artifact_store import ensure_artifact_store, ensure_package
from mlflow_fs2sql.artifacts import ArtifactOptions, parse_root_maps
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

pytestmark = [pytest.mark.oracle, pytest.mark.slow]
SERVER = "3.17.2"
CLIENT = Path(__file__).with_name("artifact_client.py")


def _client(python: Path, url: str, manifest: dict, experiment_id, env=None) -> dict:
    request = {"run_id": manifest["run_id"], "model_id": manifest["model_id"],
               "adder_version": manifest["registered"]["adder"],
               "notes_version": manifest["registered"]["notes"],
               "trace_id": manifest["trace_id"], "experiment_id": str(experiment_id)}
    import os

    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    run_env.update(env or {})
    done = subprocess.run([str(python), str(CLIENT), url, json.dumps(request)],
                          capture_output=True, text=True, env=run_env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_round_trip(got: dict, manifest: dict, experiment_id) -> None:
    """What MLflow's client saw through the server is what MLflow wrote into the store."""
    run, exp = manifest["run_id"], str(experiment_id)
    assert got["run_artifact_uri"] == f"mlflow-artifacts:/{exp}/{run}/artifacts"
    want = dict(manifest["run_files"])
    assert {k: v for k, v in got["run_files"].items() if not k.startswith("after")} == want
    assert got["model_predict"] == [2, 3] and got["registered_predict"] == [11]
    assert got["model_artifact_location"] == \
        f"mlflow-artifacts:/{exp}/models/{manifest['model_id']}/artifacts"
    assert got["notes_files"] == ["hello.txt", "my file.txt"]
    assert got["notes_storage"] == f"mlflow-artifacts:/{exp}/{run}/artifacts/notes"
    assert got["trace_spans"] == ["add_one"]
    assert got["listed_after"] == ["after/logged-after-migration.txt"]
    # A run MLflow creates now lands beside the migrated ones, under the database's ID.
    assert got["new_run_artifact_uri"] == f"mlflow-artifacts:/{exp}/{got['new_run_id']}/artifacts"


def _python() -> Path:
    return ensure_package(SERVER, "boto3")


# -- a local folder, PostgreSQL, experiments renumbered ------------------------------------------
def test_round_trip_through_the_server_on_renumbered_postgresql(pg, tmp_path):
    store, manifest = ensure_artifact_store()
    dest = tmp_path / "mlartifacts"
    url = pg.new_db()
    report = migrate(str(store), url, MigrateOptions(
        experiment_ids="renumber", verify=True, mlflow_version=SERVER,
        artifacts=ArtifactOptions(to=str(dest))))
    assert report.ok, report.mismatches[:5]
    new_id = report.experiment_ids["renumbered"][manifest["experiment_id"]]
    assert new_id < 2**31
    # The files are where the server looks for the database's experiment ID.
    for rel, digest in manifest["files"].items():
        exp, rest = rel.split("/", 1)
        at = dest / (str(new_id) if exp == manifest["experiment_id"] else exp) / rest
        assert hashlib.md5(at.read_bytes()).hexdigest() == digest, at
    assert report.artifacts["copy"]["copied_files"] == len(manifest["files"])
    assert report.artifacts["check"]["files"] == len(manifest["files"])
    assert f"--artifacts-destination {dest.as_uri()}" in report.start_command
    backend = "postgresql+psycopg2://" + url.split("://", 1)[1]
    python = _python()
    with mlflow_server(python, backend, tmp_path, ["--artifacts-destination", str(dest)]) as u:
        got = _client(python, u, manifest, new_id)
    _assert_round_trip(got, manifest, new_id)
    run = manifest["run_id"]
    assert (dest / str(new_id) / run / "artifacts/after/logged-after-migration.txt").is_file()
    assert (dest / str(new_id) / got["new_run_id"] / "artifacts").is_dir()
    # verify (files included) still finds every migrated file, and only the new run as new.
    again = verify(str(store), url, artifacts_options=ArtifactOptions(to=str(dest)))
    assert again.artifacts["check"] == {**again.artifacts["check"], "problem_count": 0,
                                        "files": len(manifest["files"])}
    assert again.mismatches and all(got["new_run_id"] in m for m in again.mismatches)


# -- S3 (moto on loopback), SQLite ------------------------------------------------------------------
def test_round_trip_through_the_server_with_s3(tmp_path, monkeypatch):
    store, manifest = ensure_artifact_store()
    with moto_s3(tmp_path) as env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        dest = "s3://team-bucket/mlflow"
        db = tmp_path / "team.db"
        report = migrate(str(store), str(db), MigrateOptions(
            verify=True, mlflow_version=SERVER, artifacts=ArtifactOptions(to=dest)))
        assert report.ok, report.mismatches[:5]
        keys = {o["Key"] for o in s3_client(env).list_objects_v2(
            Bucket="team-bucket")["Contents"]}
        assert keys == {f"mlflow/{rel}" for rel in manifest["files"]}
        exp = manifest["experiment_id"]
        python = _python()
        copy = tmp_path / "server.db"
        shutil.copy(db, copy)
        with mlflow_server(python, f"sqlite:///{copy}", tmp_path,
                           ["--artifacts-destination", dest], env) as u:
            got = _client(python, u, manifest, exp, env)
        _assert_round_trip(got, manifest, exp)
        assert f"mlflow/{exp}/{manifest['run_id']}/artifacts/after/logged-after-migration.txt" \
            in {o["Key"] for o in s3_client(env).list_objects_v2(
                Bucket="team-bucket")["Contents"]}
        # verify reads every object back through MLflow's S3 repository: one changed byte fails
        options = ArtifactOptions(to=dest)
        assert verify(str(store), str(db), artifacts_options=options).ok
        key = f"mlflow/{exp}/{manifest['run_id']}/artifacts/notes/hello.txt"
        s3_client(env).put_object(Bucket="team-bucket", Key=key, Body=b"hello from the stpre\n")
        bad = verify(str(store), str(db), artifacts_options=options)
        assert not bad.ok and bad.exit_code == 3
        assert any("notes/hello.txt" in m and "MD5" in m for m in bad.mismatches), \
            bad.mismatches


# -- files moved by hand: Windows, WSL, relative and %-escaped URIs, --artifact-root-map -----------
def _respell(store: Path, manifest: dict, tmp_path: Path) -> Path:
    """A copy of the store as if written on Windows (``C:\\Users\\alice\\My Runs``) and read
    through WSL and a relative path: every artifact URI in another spelling."""
    copy = tmp_path / "copied" / "mlruns"
    shutil.copytree(store, copy)
    old = store.as_uri()
    exp, run, model = manifest["experiment_id"], manifest["run_id"], manifest["model_id"]
    spellings = {
        f"{exp}/meta.yaml": "file:///C:/Users/alice/My%20Runs/mlruns",
        f"{exp}/{run}/meta.yaml": "/mnt/c/Users/alice/My Runs/mlruns",
        f"{exp}/models/{model}/meta.yaml": "C:\\Users\\alice\\My Runs\\mlruns",
        f"0/{manifest['default_run_id']}/meta.yaml": "../elsewhere/../mlruns",
        f"{exp}/traces/{manifest['trace_id']}/tags/mlflow.artifactLocation":
            "file:///C:/Users/alice/My%20Runs/mlruns",
        f"models/notes/version-{manifest['registered']['notes']}/meta.yaml":
            "file:///C:/Users/alice/My%20Runs/mlruns",
    }
    for rel, new in spellings.items():
        path = copy / rel
        path.chmod(0o644)
        text = path.read_text(encoding="utf-8")
        assert old in text, rel
        if "\\" in new:  # a Windows path: backslashes all the way down
            import re

            text = re.sub(re.escape(old) + r"[^\s']*",
                          lambda m, new=new: new + m.group(0)[len(old):].replace("/", "\\"), text)
        else:
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    return copy


def test_root_map_rewrites_every_spelling_for_files_moved_by_hand(tmp_path):
    store, manifest = ensure_artifact_store()
    source = _respell(store, manifest, tmp_path)
    dest = tmp_path / "moved"
    shutil.copytree(source, dest)  # what `rsync -a mlruns/ DEST/` gives: the server's layout
    db = tmp_path / "mapped.db"
    maps = parse_root_maps(["C:\\Users\\alice\\My Runs\\mlruns=mlflow-artifacts:/",
                            "../mlruns=mlflow-artifacts:/", f"{store}=mlflow-artifacts:/"])
    report = migrate(str(source), str(db), MigrateOptions(
        mlflow_version=SERVER, verify=True, artifacts=ArtifactOptions(root_maps=maps)))
    assert report.ok, report.mismatches[:5]
    assert report.artifacts["copy"] is None  # rewritten only
    uris = [r[0] for r in query(db, "SELECT artifact_uri FROM runs")]
    uris += [r[0] for r in query(db, "SELECT artifact_location FROM logged_models")]
    uris += [r[0] for r in query(db, "SELECT value FROM trace_tags WHERE key = "
                                     "'mlflow.artifactLocation'")]
    assert uris and all(u.startswith("mlflow-artifacts:/") for u in uris), uris
    exp = manifest["experiment_id"]
    python = _python()
    copy = tmp_path / "server.db"
    shutil.copy(db, copy)
    with mlflow_server(python, f"sqlite:///{copy}", tmp_path,
                       ["--artifacts-destination", str(dest)]) as u:
        got = _client(python, u, manifest, exp)
        # verify checks the files through the server (mlflow-artifacts:/ via the tracking URI)
        import os

        os.environ["MLFLOW_TRACKING_URI"] = u
        try:
            checked = verify(str(source), str(db), artifacts_options=ArtifactOptions(
                root_maps=maps))
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
    _assert_round_trip(got, manifest, exp)
    assert checked.ok, checked.mismatches[:5]
    assert checked.artifacts["check"]["files"] == len(manifest["files"])
