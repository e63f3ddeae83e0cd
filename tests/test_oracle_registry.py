"""Oracle: MLflow sees the same registry and prompts in the migrated DB as in the FileStore.

For fixture stores written by MLflow 2.22.5, 3.2.0 and 3.17.2 (size ``full``): migrate, verify,
then run the dump script below in the oracle reader's venv (the installed mlflow-skinny,
``conftest.oracle_reader``) once against a copy of the FileStore and once against a copy of the
DB (both stores write while reading), and compare.

The dump covers registered models (tags, aliases, latest versions), every version number up to
the highest plus two (deleted ones are hidden by both stores: the error is compared), versions by
alias, search results, prompts through ``mlflow.genai.load_prompt("prompts:/name/N")`` and
``prompts:/name@alias``, and finally the number a new version gets (deleted versions count).
"""

import json
import os
import shutil
import sqlite3
import subprocess
import textwrap

import pytest
from conftest import fixture_store, oracle_python

from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify

pytestmark = pytest.mark.oracle


DUMP = textwrap.dedent(r'''
    import json, os, sys, warnings
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    warnings.filterwarnings("ignore")
    import mlflow
    from mlflow import MlflowClient

    uri, out = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    store = client._get_registry_client().store

    def canon(obj):
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, dict):
            return {str(k): canon(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [canon(v) for v in obj]
        if isinstance(obj, (set, frozenset)):
            return sorted(canon(v) for v in obj)
        props = sorted(n for c in type(obj).__mro__ for n, a in vars(c).items()
                       if isinstance(a, property) and not n.startswith("_"))
        if not props:
            return str(obj)
        res = {}
        for n in props:
            try:
                res[n] = canon(getattr(obj, n))
            except Exception as exc:
                res[n] = f"<error {type(exc).__name__}>"
        return res

    def error(exc):
        return {"_error": type(exc).__name__, "code": getattr(exc, "error_code", None),
                "message": str(exc)[:300]}

    def attempt(fn):
        try:
            return canon(fn())
        except Exception as exc:
            return error(exc)

    def versions_sorted(items):
        return sorted(items, key=lambda v: int(v["version"]))

    result = {"models": {}, "prompts": {}}
    models = store.search_registered_models(max_results=1000)
    prompts = store.search_prompts(max_results=1000)
    result["search_models"] = sorted(m.name for m in models)
    result["search_prompts"] = sorted(p.name for p in prompts)
    result["search_versions"] = versions_sorted(
        [canon(v) for v in store.search_model_versions(max_results=1000)])
    for name in result["search_models"] + result["search_prompts"]:
        rm = store.get_registered_model(name)
        d = canon(rm)
        d["latest_versions"] = versions_sorted(d["latest_versions"])
        d["get_latest_versions"] = versions_sorted(canon(store.get_latest_versions(name)))
        visible = [int(v["version"]) for v in result["search_versions"] if v["name"] == name]
        highest = max(visible + [int(v["version"]) for v in d["latest_versions"]] + [0])
        # every number up to the highest visible one plus two (gaps are deleted versions)
        for number in range(1, highest + 3):
            got = attempt(lambda: store.get_model_version(name, str(number)))
            d.setdefault("versions", {})[str(number)] = got
        d["by_alias"] = {a: attempt(lambda: store.get_model_version_by_alias(name, a))
                         for a in sorted(rm.aliases)}
        d["by_alias"]["latest"] = attempt(lambda: store.get_model_version_by_alias(name, "latest"))
        result["models"][name] = d
    for name in result["search_prompts"]:
        p = {"prompt": attempt(lambda: store.get_prompt(name)), "versions": {}}
        p["search_prompt_versions"] = attempt(
            lambda: sorted((v.version for v in store.search_prompt_versions(name)), key=int))
        for number in range(1, 6):
            p["versions"][str(number)] = attempt(lambda: store.get_prompt_version(name, number))
        aliases = sorted(result["models"][name]["aliases"])
        # Last: the fluent load_prompt links the prompt to the active experiment (a write).
        loaded = {}
        for number in range(1, 6):
            loaded[str(number)] = attempt(
                lambda: mlflow.genai.load_prompt(f"prompts:/{name}/{number}").template)
        for alias in aliases:
            loaded["@" + alias] = attempt(
                lambda: mlflow.genai.load_prompt(f"prompts:/{name}@{alias}").template)
        p["load_prompt"] = loaded
        result["prompts"][name] = p
    # Writes: the next version number (deleted versions count in both stores).
    result["next_version"] = {
        name: attempt(lambda: client.create_model_version(name, source="s3://bucket/m").version)
        for name in result["search_models"]}
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True, ensure_ascii=False)
''')


def run_dump(uri: str, tmp) -> dict:
    script = tmp / "dump_registry.py"
    script.write_text(DUMP, encoding="utf-8")
    out = tmp / f"dump-{len(list(tmp.glob('dump-*')))}.json"
    proc = subprocess.run([str(oracle_python()), str(script), uri, str(out)], cwd=tmp,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


# Documented differences between what the two stores return for the same data (MLflow 3.17.2,
# unchanged in 3.18.0);
# they come from the stores' code, not from the data:
# * ``model_id``, ``metrics``, ``params`` of a version: FileStore reads ``model_id`` from the
#   version's meta.yaml and fetches the logged model's metrics/params
#   (``FileStore._get_file_model_version_from_dir``); ``SqlModelVersion`` has no such column and
#   ``SqlModelVersion.to_mlflow_entity`` passes none, so the SQL store returns None for them.
# * Alias versions in ``RegisteredModel.aliases``: FileStore returns the alias file's text
#   (``RegisteredModelAlias(alias_name, alias_data)`` in ``_get_registered_model_alias_from_file``);
#   the SQL store returns the INTEGER column (``SqlRegisteredModelAlias.to_mlflow_entity``).
#   Compared as text.
# * ``aliases`` of the versions in ``search_model_versions`` results and in
#   ``RegisteredModel.latest_versions``: ``SqlModelVersion.to_mlflow_entity`` always passes ``[]``
#   and only ``get_model_version``/``get_model_version_by_alias``/``get_latest_versions`` fill
#   them in (``_populate_model_version_aliases``); FileStore fills them everywhere. Those lists are
#   compared without ``aliases``; the other reads compare them.
VERSION_ONLY_IN_FILESTORE = ("model_id", "metrics", "params")


def normalise(dump: dict) -> dict:
    def version(v, drop_aliases=False):
        for key in VERSION_ONLY_IN_FILESTORE + (("aliases",) if drop_aliases else ()):
            v.pop(key, None)

    def walk(obj, key=""):
        if isinstance(obj, dict):
            if "current_stage" in obj and "version" in obj:
                version(obj)
            if "latest_versions" in obj and "aliases" in obj:  # a registered model
                obj["aliases"] = {k: str(v) for k, v in obj["aliases"].items()}
                for v in obj["latest_versions"]:
                    version(v, drop_aliases=True)
            for k, v in obj.items():
                walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key)
        return obj

    for v in dump["search_versions"]:
        version(v, drop_aliases=True)
    return walk(dump)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    made = {}

    def get(version):
        if version not in made:
            src = fixture_store(version, "full")
            tmp = tmp_path_factory.mktemp(f"reg-{version}")
            out = str(tmp / "out.db")
            report = migrate(str(src), out, MigrateOptions(verify=True))
            assert report.ok, report.mismatches
            made[version] = (src, out, tmp, report)
        return made[version]

    return get


@pytest.mark.parametrize("version", ["2.22.5", "3.2.0", "3.17.2"])
def test_registry_as_mlflow_sees_it(version, migrated, tmp_path):
    src, out, _, report = migrated(version)
    assert report.written["registered_models"] >= 6
    assert report.written["registered_model_aliases"] >= 3
    assert verify(str(src), out).ok

    fs_copy = tmp_path / "fs" / "mlruns"
    shutil.copytree(src, fs_copy)
    for dirpath, _, files in os.walk(fs_copy):  # fixture stores are read-only; MLflow writes
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    db_copy = tmp_path / "copy.db"
    shutil.copyfile(out, db_copy)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    want = normalise(run_dump(fs_copy.as_uri(), tmp_path / "a"))
    got = normalise(run_dump(f"sqlite:///{db_copy}", tmp_path / "b"))

    # What the fixtures hold must be visible at all (guards against an empty comparison).
    assert "fixture-model" in want["search_models"]
    assert want["search_prompts"] and all(p.startswith("fixture-") for p in want["search_prompts"])
    model = want["models"]["fixture-model"]
    assert model["aliases"] == {"champion": "1", "challenger": "5"}
    assert model["versions"]["2"]["_error"] == "MlflowException"  # deleted: hidden
    assert model["versions"]["3"]["current_stage"] == "Staging"
    assert model["tags"]["crlf"] == "a\r\nb"
    assert str(want["next_version"]["fixture-model"]) == "6"
    loaded = want["prompts"]["fixture-prompt-0"]["load_prompt"]
    assert loaded["1"] == "Hello {{name}} ✓!" == loaded["@production"]
    assert loaded["2"] == "Hi {{name}}, answer {{question}}\r\nThanks"

    for section in sorted(want):
        assert got[section] == want[section], section


@pytest.mark.parametrize("version", ["2.22.5", "3.17.2"])
def test_deleted_versions_are_rows_hidden_by_mlflow(version, migrated):
    """Deleted versions are kept with their values (not redacted) and stay hidden."""
    _, out, _, _ = migrated(version)
    con = sqlite3.connect(out)
    rows = con.execute("SELECT name, version, source, run_id FROM model_versions "
                       "WHERE current_stage = 'Deleted_Internal'").fetchall()
    con.close()
    assert [(n, v) for n, v, _, _ in rows] == [("fixture-model", 2)]
    assert rows[0][2].endswith("/model-2") and len(rows[0][3]) == 32


def test_verify_fails_on_a_changed_registry_value(migrated, tmp_path):
    from typer.testing import CliRunner

    from mlflow_fs2sql.cli import app

    src, out, _, _ = migrated("3.17.2")
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(out, damaged)
    con = sqlite3.connect(damaged)
    con.execute("UPDATE model_version_tags SET value = 'Bye' WHERE name = 'fixture-prompt-0' "
                "AND version = 1 AND key = 'mlflow.prompt.text'")
    con.commit()
    con.close()
    report = verify(str(src), str(damaged))
    assert report.mismatch_count == 1
    assert report.mismatches[0] == (
        "FAILED: Model version tag ('fixture-prompt-0', 1, 'mlflow.prompt.text') — field "
        "'value': source='Hello {{name}} ✓!', target='Bye'")
    result = CliRunner().invoke(app, ["verify", str(src), str(damaged)])
    assert result.exit_code == 3, result.output
