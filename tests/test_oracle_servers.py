"""Oracle on real servers: MLflow's own SqlAlchemyStore reading fs2sql's PostgreSQL and
MariaDB databases sees what it sees in fs2sql's SQLite database of the same store -- which
``test_oracle_core`` and the kind oracles prove equal to what MLflow's FileStore sees -- and
the experiments the FileStore itself shows.

``fixtures_gen.oracle.dump`` reads only file:// and sqlite:// URIs (it works on copies), so the
dumps here run ``fixtures_gen/oracle_dump.py`` directly, in the oracle reader's venv (the
installed mlflow-skinny with psycopg, psycopg2 and PyMySQL, ``conftest.oracle_reader``) on every
side alike.

With ``--experiment-ids renumber`` experiments are paired through the mapping fs2sql records
(tag ``fs2sql.source_experiment_id``): every ``experiment_id`` the server dump shows is mapped
back, the prompt tag ``_mlflow_experiment_ids`` too, and that one tag is removed; nothing else
is normalised.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import fixture_store, oracle_dump, oracle_python
from servers import MYSQL_ADMIN, PG_ADMIN, Server, _driver_url, _require

from mlflow_fs2sql.ids import PROMPT_EXPERIMENTS_TAG, SOURCE_ID_TAG
from mlflow_fs2sql.migrate import MigrateOptions, migrate

pytestmark = pytest.mark.oracle
DUMPER = Path(__file__).resolve().parents[1] / "fixtures_gen" / "oracle_dump.py"


def _dump(uri: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="fs2sql-oracle-") as tmp:
        out = Path(tmp) / "dump.json"
        proc = subprocess.run([str(oracle_python()), str(DUMPER), "--uri", uri, "--out", str(out)],
                              cwd=tmp, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        data = json.loads(out.read_text(encoding="utf-8"))
    for key in ("stores", "uri_scheme", "_oracle"):
        data.pop(key, None)
    return data


def _map_back(obj, back):
    """Server IDs -> source IDs wherever MLflow shows an experiment ID."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "experiment_id" and isinstance(v, (str, int)) and str(v).isdigit() \
                    and int(v) in back:
                v = type(v)(back[int(v)]) if isinstance(v, int) else str(back[int(v)])
            elif k == PROMPT_EXPERIMENTS_TAG and isinstance(v, str):
                v = ",".join(str(back.get(int(p), p)) if p.isdigit() else p
                             for p in v.split(","))
            elif k == "tags" and isinstance(v, dict):
                v = {tk: tv for tk, tv in v.items() if tk != SOURCE_ID_TAG}
            elif k == "tags" and isinstance(v, list):
                v = [t for t in v if not (isinstance(t, dict) and t.get("key") == SOURCE_ID_TAG)]
            out[k] = _map_back(v, back)
        return out
    if isinstance(obj, list):
        return [_map_back(v, back) for v in obj]
    return obj


def _canon(dump: dict) -> dict:
    """Lists of entities in one order (IDs changed, so ID-sorted lists are re-sorted)."""
    return {k: sorted(v, key=lambda e: json.dumps(e, sort_keys=True))
            if isinstance(v, list) else v for k, v in dump.items()}


_SQLITE: dict = {}


def _sqlite_dump(version: str) -> dict:
    if version not in _SQLITE:
        store = fixture_store(version, "full")
        folder = Path(tempfile.mkdtemp(prefix="fs2sql-oracle-db-"))
        migrate(str(store), str(folder / "out.db"))
        shutil.copyfile(folder / "out.db", folder / "copy.db")  # MLflow may write on open
        _SQLITE[version] = _dump(f"sqlite:///{folder / 'copy.db'}")
    return _SQLITE[version]


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
@pytest.mark.parametrize("version", ["2.22.5", "3.17.2"])
def test_mlflow_sees_the_same_on_servers_as_on_sqlite(kind, version):
    admin = PG_ADMIN if kind == "postgresql" else MYSQL_ADMIN
    _require(kind, admin)
    server = Server(kind, admin)
    try:
        url = server.new_db()
        store = fixture_store(version, "full")
        report = migrate(str(store), url, MigrateOptions(verify=True, experiment_ids="renumber"))
        assert report.ok, report.mismatches[:5]
        key = "`key`" if kind == "mysql" else "key"
        back = {new: int(old) for new, old in server.query(
            url, f"SELECT experiment_id, value FROM experiment_tags WHERE {key} = "
            f"'{SOURCE_ID_TAG}'")}
        assert back, "the fixture has 18-digit experiment IDs: some must be renumbered"
        got = _canon(_map_back(_dump(_driver_url(url)), back))
        want = _canon(_sqlite_dump(version))
        assert got.get("unsupported") == want.get("unsupported") == {}
        for section in sorted(set(want) | set(got)):
            assert got.get(section) == want.get(section), (kind, version, section)
    finally:
        server.drop_all()


@pytest.mark.parametrize("version", ["2.22.5", "3.17.2"])
def test_experiments_on_postgres_match_the_filestore(version):
    """Directly against MLflow's FileStore (the oracle reader): experiments, names, tags."""
    _require("postgresql", PG_ADMIN)
    server = Server("postgresql", PG_ADMIN)
    try:
        url = server.new_db()
        store = fixture_store(version, "full")
        migrate(str(store), url, MigrateOptions(experiment_ids="renumber"))
        back = {new: int(old) for new, old in server.query(
            url, f"SELECT experiment_id, value FROM experiment_tags WHERE key = "
            f"'{SOURCE_ID_TAG}'")}
        sql = _map_back(_dump(_driver_url(url)), back)
        fs = oracle_dump(store.as_uri())
        by_id = lambda exps: sorted(exps, key=lambda e: int(e["experiment_id"]))  # noqa: E731
        assert by_id(sql["experiments"]) == by_id(fs["experiments"])
        assert sorted(r["info"]["run_id"] for r in sql["runs"]) == \
            sorted(r["info"]["run_id"] for r in fs["runs"])
        fs_runs = {r["info"]["run_id"]: r for r in fs["runs"]}
        for run in sql["runs"]:
            mine = fs_runs[run["info"]["run_id"]]
            assert run["info"]["experiment_id"] == mine["info"]["experiment_id"]
            assert run["params"] == mine["params"] and run["tags"] == mine["tags"]
    finally:
        server.drop_all()
