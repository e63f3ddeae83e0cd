"""Model registry and prompts (kinds/registry.py) on tiny literal stores."""

import sqlite3

import pytest
import yaml
from conftest import experiment_meta, query, require_schema, tree_hash, write_files

from mlflow_fs2sql.errors import InvalidSource
from mlflow_fs2sql.kinds import registry
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

RID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def model_meta(name, **fields):
    """A registered model meta.yaml as MLflow 3.x's FileStore writes it."""
    meta = {"aliases": {}, "creation_timestamp": 1718000000400, "deployment_job_id": None,
            "deployment_job_state": None, "description": None,
            "last_updated_timestamp": 1718000000700, "name": name, "workspace": "default"}
    meta.update(fields)
    return yaml.safe_dump(meta, default_flow_style=False, allow_unicode=True)


def version_meta(name, version, **fields):
    meta = {"aliases": [], "creation_timestamp": 1718000000500, "current_stage": "None",
            "deployment_job_state": None, "description": None,
            "last_updated_timestamp": 1718000000600, "metrics": None, "model_id": None,
            "name": name, "params": None, "run_id": RID, "run_link": None,
            "source": f"file:///srv/mlruns/1/{RID}/artifacts/model",
            "status": "READY", "status_message": None,
            "storage_location": f"file:///srv/mlruns/1/{RID}/artifacts/model",
            "user_id": None, "version": version, "workspace": "default"}
    meta.update(fields)
    return yaml.safe_dump(meta, default_flow_style=False, allow_unicode=True)


def registry_store(tmp_path, extra=None, drop=()):
    files = {
        "0/meta.yaml": experiment_meta("0", "Default"),
        "models/churn/meta.yaml": model_meta("churn", description="churn ✓ model"),
        "models/churn/tags/team": "ml",
        "models/churn/tags/nested/key": "a\r\nb",
        "models/churn/tags/empty": "",
        "models/churn/aliases/champion": "1",
        "models/churn/aliases/challenger": "3",
        "models/churn/version-1/meta.yaml": version_meta(
            "churn", 1, description="first", user_id="alice", run_link="http://x/1"),
        "models/churn/version-1/tags/v": "1",
        "models/churn/version-2/meta.yaml": version_meta(
            "churn", 2, current_stage="Deleted_Internal", description="gone",
            status_message="msg"),
        "models/churn/version-2/tags/kept": "yes",
        "models/churn/version-3/meta.yaml": version_meta("churn", 3, current_stage="Staging"),
        "models/churn/version-10/meta.yaml": version_meta("churn", 10),
        "models/p/meta.yaml": model_meta("p", description="first"),
        "models/p/tags/mlflow.prompt.is_prompt": "true",
        "models/p/tags/_mlflow_experiment_ids": ",0,",
        "models/p/aliases/production": "1",
        "models/p/version-1/meta.yaml": version_meta(
            "p", 1, source="dummy-source", storage_location="dummy-source", run_id=None),
        "models/p/version-1/tags/mlflow.prompt.is_prompt": "true",
        "models/p/version-1/tags/mlflow.prompt.text": "Hello {{name}} ✓!\r\nBye",
        "models/p/version-1/tags/_mlflow_prompt_type": "text",
        "models/p/version-1/tags/mlflow.prompt.run_ids": RID,
    }
    files.update(extra or {})
    for key in drop:
        files.pop(key)
    return write_files(tmp_path / "mlruns", files)


def registry_dump(db):
    return {t: query(db, f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4")
            for t in ("registered_models", "registered_model_tags", "model_versions",
                      "model_version_tags", "registered_model_aliases")}


def test_round_trip_every_field(tmp_path):
    require_schema("registered_models", "workspace")
    store = registry_store(tmp_path)
    before = tree_hash(store)
    out = str(tmp_path / "o.db")
    report = migrate(str(store), out)
    assert report.written["registered_models"] == 2
    assert report.written["model_versions"] == 5
    assert report.written["registered_model_aliases"] == 3
    assert query(out, "SELECT workspace, name, creation_time, last_updated_time, description "
                      "FROM registered_models ORDER BY name") == [
        ("default", "churn", 1718000000400, 1718000000700, "churn ✓ model"),
        ("default", "p", 1718000000400, 1718000000700, "first")]
    assert query(out, "SELECT workspace, name, key, value FROM registered_model_tags "
                      "WHERE name = 'churn' ORDER BY key") == [
        ("default", "churn", "empty", ""), ("default", "churn", "nested/key", "a\r\nb"),
        ("default", "churn", "team", "ml")]
    cols = ("workspace, name, version, creation_time, last_updated_time, description, user_id, "
            "current_stage, source, storage_location, run_id, run_link, status, status_message")
    rows = query(out, f"SELECT {cols} FROM model_versions WHERE name = 'churn' ORDER BY version")
    src = f"file:///srv/mlruns/1/{RID}/artifacts/model"
    assert rows == [
        ("default", "churn", 1, 1718000000500, 1718000000600, "first", "alice", "None", src, src,
         RID, "http://x/1", "READY", None),
        # Deleted versions are kept (as the SQL store keeps them) and not redacted.
        ("default", "churn", 2, 1718000000500, 1718000000600, "gone", None, "Deleted_Internal",
         src, src, RID, None, "READY", "msg"),
        ("default", "churn", 3, 1718000000500, 1718000000600, None, None, "Staging", src, src,
         RID, None, "READY", None),
        ("default", "churn", 10, 1718000000500, 1718000000600, None, None, "None", src, src,
         RID, None, "READY", None),
    ]
    assert query(out, "SELECT workspace, name, alias, version FROM registered_model_aliases "
                      "ORDER BY name, alias") == [
        ("default", "churn", "challenger", 3), ("default", "churn", "champion", 1),
        ("default", "p", "production", 1)]
    assert query(out, "SELECT name, version, key, value FROM model_version_tags "
                      "WHERE name = 'churn' ORDER BY version, key") == [
        ("churn", 1, "v", "1"), ("churn", 2, "kept", "yes")]
    assert query(out, "PRAGMA foreign_key_check") == []
    assert verify(str(store), out).ok
    assert tree_hash(store) == before


def test_prompt_tags_are_copied_verbatim(tmp_path):
    store = registry_store(tmp_path)
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    assert query(out, "SELECT key, value FROM registered_model_tags WHERE name = 'p' "
                      "ORDER BY key") == [("_mlflow_experiment_ids", ",0,"),
                                          ("mlflow.prompt.is_prompt", "true")]
    # 2.2x's mlflow.prompt.run_ids stays as it is (no MLflow SQL path renames it).
    assert query(out, "SELECT key, value FROM model_version_tags WHERE name = 'p' "
                      "ORDER BY key") == [
        ("_mlflow_prompt_type", "text"), ("mlflow.prompt.is_prompt", "true"),
        ("mlflow.prompt.run_ids", RID), ("mlflow.prompt.text", "Hello {{name}} ✓!\r\nBye")]
    assert query(out, "SELECT source, storage_location, run_id, description FROM model_versions "
                      "WHERE name = 'p'") == [("dummy-source", "dummy-source", None, None)]


def test_redaction_switch_redacts_like_sqlalchemy_store(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "REDACT_DELETED_VERSIONS", True)
    store = registry_store(tmp_path)
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    assert query(out, "SELECT description, user_id, source, run_id, run_link, status_message, "
                      "current_stage FROM model_versions WHERE name='churn' AND version=2") == [
        (None, None, "REDACTED-SOURCE-PATH", "REDACTED-RUN-ID", "REDACTED-RUN-LINK", None,
         "Deleted_Internal")]
    assert query(out, "SELECT count(*) FROM model_versions WHERE source LIKE 'REDACTED%'") == [
        (1,)]
    assert verify(str(store), out).ok


def test_pre_2_8_version_without_storage_location_and_registry_only_store(tmp_path):
    meta = yaml.safe_load(version_meta("m", 1))
    del meta["storage_location"], meta["model_id"], meta["metrics"], meta["params"]
    store = write_files(tmp_path / "mlruns", {
        "models/m/meta.yaml": model_meta("m"),
        "models/m/version-1/meta.yaml": yaml.safe_dump(meta),
    })
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    assert query(out, "SELECT storage_location, source FROM model_versions") == [
        (None, meta["source"])]
    assert verify(str(store), out).ok


def test_deterministic(tmp_path):
    require_schema("registered_models", "workspace")
    store = registry_store(tmp_path)
    migrate(str(store), str(tmp_path / "a.db"))
    migrate(str(store), str(tmp_path / "b.db"))
    assert registry_dump(str(tmp_path / "a.db")) == registry_dump(str(tmp_path / "b.db"))


def test_junk_and_stray_entries_are_ignored_and_reported(tmp_path):
    store = registry_store(tmp_path, {
        "models/.DS_Store": b"\0\1",
        "models/README.txt": "notes",
        "models/churn/notes.txt": "x",
        "models/churn/old/file": "x",
        "models/churn/tags/.DS_Store": b"\xff",
        "models/churn/aliases/._champion": b"\xff",
    })
    report = migrate(str(store), str(tmp_path / "o.db"))
    names = sorted(p.rsplit("/models/", 1)[1] for p in report.ignored)
    assert names == [".DS_Store", "README.txt", "churn/aliases/._champion", "churn/notes.txt",
                     "churn/old", "churn/tags/.DS_Store"]
    assert report.written["registered_model_tags"] == 5


# -- aliases -------------------------------------------------------------------------------------
def test_alias_file_parser(tmp_path):
    path = tmp_path / "a"
    path.write_text(" 7\n")
    assert registry.read_alias("m", "a", str(path)).version == 7
    for bad in ("", "v1", "1.0", "-1", "1 2"):
        path.write_text(bad)
        with pytest.raises(InvalidSource, match="should hold a version number") as exc:
            registry.read_alias("m", "a", str(path))
        assert (exc.value.kind, exc.value.entity_id) == ("model alias", "m@a")


@pytest.mark.parametrize("target, why", [("4", "version 4, which does not exist"),
                                         ("2", "version 2, which was deleted")])
def test_alias_to_missing_or_deleted_version(tmp_path, target, why):
    store = registry_store(tmp_path, {"models/churn/aliases/stale": target})
    with pytest.raises(InvalidSource, match=why) as exc:
        migrate(str(store), str(tmp_path / "strict.db"))
    assert (exc.value.kind, exc.value.entity_id) == ("model alias", "churn@stale")
    assert not (tmp_path / "strict.db").exists()

    out = str(tmp_path / "o.db")
    report = migrate(str(store), out, MigrateOptions(skip_invalid=True, verify=True))
    assert [(s.kind, s.entity_id) for s in report.skipped] == [("model alias", "churn@stale")]
    assert report.exit_code == 4
    # Only the alias is left out: the model, its versions and other aliases are there.
    assert report.written["registered_models"] == 2 and report.written["model_versions"] == 5
    assert query(out, "SELECT alias FROM registered_model_aliases WHERE name = 'churn' "
                      "ORDER BY alias") == [("challenger",), ("champion",)]
    assert verify(str(store), out, skip_invalid=True).ok


# -- invalid models and versions -----------------------------------------------------------------
def test_model_name_mismatch_skips_model_with_versions_and_aliases(tmp_path):
    store = registry_store(tmp_path, {"models/churn/meta.yaml": model_meta("churn2")})
    with pytest.raises(InvalidSource, match="says name 'churn2' but lies in folder 'churn'") as e:
        migrate(str(store), str(tmp_path / "strict.db"))
    assert (e.value.kind, e.value.entity_id) == ("registered model", "churn")

    out = str(tmp_path / "o.db")
    report = migrate(str(store), out, MigrateOptions(skip_invalid=True))
    skipped = sorted((s.kind, s.entity_id) for s in report.skipped)
    assert skipped == [("model alias", "churn@challenger"), ("model alias", "churn@champion"),
                       ("model version", "churn/1"), ("model version", "churn/10"),
                       ("model version", "churn/2"), ("model version", "churn/3"),
                       ("registered model", "churn")]
    assert all("its registered model churn was skipped" in s.reason
               for s in report.skipped if s.kind != "registered model")
    assert query(out, "SELECT name FROM registered_models") == [("p",)]
    assert query(out, "SELECT DISTINCT name FROM model_versions") == [("p",)]
    assert verify(str(store), out, skip_invalid=True).ok


def test_missing_model_meta_is_invalid(tmp_path):
    store = registry_store(tmp_path, drop=["models/p/meta.yaml"])
    with pytest.raises(InvalidSource, match="is missing") as e:
        migrate(str(store), str(tmp_path / "o.db"))
    assert (e.value.kind, e.value.entity_id) == ("registered model", "p")


@pytest.mark.parametrize("extra, match", [
    ({"models/churn/version-3/meta.yaml": version_meta("churn", 4)},
     "says version 4 but lies in folder 'version-3'"),
    ({"models/churn/version-3/meta.yaml": version_meta("other", 3)},
     "says name 'other' but lies in registered model folder 'churn'"),
    ({"models/churn/version-3/meta.yaml": version_meta("churn", 3, creation_timestamp="soon")},
     "field 'creation_timestamp' should be an integer"),
    ({"models/churn/version-3/tags/bad": b"\xff\xfe"}, "is not valid UTF-8"),
])
def test_invalid_version_skips_it_and_its_aliases(tmp_path, extra, match):
    store = registry_store(tmp_path, extra)
    with pytest.raises(InvalidSource, match=match) as e:
        migrate(str(store), str(tmp_path / "strict.db"))
    assert (e.value.kind, e.value.entity_id) == ("model version", "churn/3")

    out = str(tmp_path / "o.db")
    report = migrate(str(store), out, MigrateOptions(skip_invalid=True))
    assert [(s.kind, s.entity_id) for s in report.skipped] == [
        ("model version", "churn/3"), ("model alias", "churn@challenger")]
    assert "its model version churn/3 was skipped" in report.skipped[1].reason
    assert query(out, "SELECT version FROM model_versions WHERE name = 'churn' "
                      "ORDER BY version") == [(1,), (2,), (10,)]
    assert verify(str(store), out, skip_invalid=True).ok


def test_value_too_long_for_its_column_skips_the_model(tmp_path):
    store = registry_store(tmp_path, {"models/churn/tags/huge": "x" * 5001})
    with pytest.raises(InvalidSource, match="registered_model_tags.value holds at most 5000"):
        migrate(str(store), str(tmp_path / "strict.db"))
    out = str(tmp_path / "o.db")
    report = migrate(str(store), out, MigrateOptions(skip_invalid=True))
    assert ("registered model", "churn") in [(s.kind, s.entity_id) for s in report.skipped]
    assert len(report.skipped) == 7  # the model, its 4 versions and 2 aliases
    assert query(out, "SELECT name FROM registered_models") == [("p",)]


def test_version_value_too_long_skips_only_that_version(tmp_path):
    store = registry_store(tmp_path, {"models/churn/version-10/meta.yaml": version_meta(
        "churn", 10, source="s" * 501)})
    out = str(tmp_path / "o.db")
    report = migrate(str(store), out, MigrateOptions(skip_invalid=True))
    assert [(s.kind, s.entity_id) for s in report.skipped] == [("model version", "churn/10")]
    assert "model_versions.source holds at most 500" in report.skipped[0].reason


# -- verify --------------------------------------------------------------------------------------
def test_verify_reports_damage_in_registry_tables(tmp_path):
    from typer.testing import CliRunner

    from mlflow_fs2sql.cli import app

    store = registry_store(tmp_path)
    out = str(tmp_path / "o.db")
    migrate(str(store), out)
    con = sqlite3.connect(out)
    con.execute("UPDATE model_versions SET source = 'elsewhere' WHERE name='churn' AND version=3")
    con.execute("UPDATE registered_model_tags SET value = 'x' WHERE key = 'team'")
    con.execute("UPDATE registered_model_aliases SET version = 10 WHERE alias = 'champion'")
    con.execute("DELETE FROM model_version_tags WHERE key = 'mlflow.prompt.text'")
    con.execute("UPDATE registered_models SET description = NULL WHERE name = 'churn'")
    con.commit()
    con.close()
    report = verify(str(store), out)
    text = "\n".join(report.mismatches)
    assert report.mismatch_count == 5, text
    assert ("Model version ('churn', 3) — field 'source': source='file:///srv/mlruns/1/"
            f"{RID}/artifacts/model', target='elsewhere'") in text
    assert "Registered model tag ('churn', 'team') — field 'value': source='ml', target='x'" \
        in text
    assert "('churn', 'champion') — field 'version': source=1, target=10" in text
    assert "('p', 1, 'mlflow.prompt.text') — row: missing in target" in text
    assert "Registered model ('churn',) — field 'description': source='churn ✓ model', " \
           "target=None" in text
    result = CliRunner().invoke(app, ["verify", str(store), out])
    assert result.exit_code == 3
    assert "field 'source'" in result.output
