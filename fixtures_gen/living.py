"""A store that keeps being written, and a database a server keeps writing to, for sync tests.

* ``living_store(version, folder)`` writes a fresh FileStore with ``write_store.py`` in the
  fixture venv of ``version`` into ``folder/mlruns`` -- not the cached, read-only stores of
  ``build.py``: MLflow writes absolute paths into a store (artifact locations), so a store that
  will be written to again must live where it was made.
* ``edit_store(version, folder, phase)`` runs ``edit_store.py`` on it (MLflow's API again).
* ``server_writes(version, target, phase)`` runs ``server_writes.py``: MLflow's
  ``SqlAlchemyStore`` writing to the database as its server would.
* ``dump_db(version, target)`` is ``oracle.dump`` for an SQLite file or a server URL;
  ``Reader(version)`` does the same dumps (and FileStore ones) in one long-lived process of the
  reader's MLflow, for tests that dump a dozen times (importing MLflow costs seconds each time).

Each returns what the script reports (JSON). The MLflow version of the server and the reader is
the caller's choice (tests keep it in one place).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from .envs import ensure_venv
from .oracle import DUMPER, OracleError, _copy_sqlite, _run, dump

HERE = Path(__file__).parent


def _script(python: Path, script: str, args, cwd: Path, timeout: float = 600) -> str:
    # Run a copy from ``cwd``: MLflow records the caller's script path and git info in runs.
    copy = cwd / script
    shutil.copyfile(HERE / script, copy)
    try:
        proc = subprocess.run([str(python), str(copy), *args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)
    finally:
        copy.unlink()
    if proc.returncode != 0:
        raise OracleError(f"{script} {' '.join(args)} failed with {python} "
                          f"(exit {proc.returncode}):\n" + "\n".join(
                              (proc.stdout + proc.stderr).splitlines()[-30:]))
    return proc.stdout


def living_store(version: str, folder: Path, size: str = "small") -> Path:
    """``folder/mlruns`` written by MLflow ``version`` (``write_store.py --size size``)."""
    folder.mkdir(parents=True, exist_ok=True)
    _script(ensure_venv(version), "write_store.py", ["--size", size, "--out", str(folder)],
            folder)
    return folder / "mlruns"


def manifest(folder: Path) -> dict:
    return json.loads((folder / "fixture_manifest.json").read_text(encoding="utf-8"))


def edit_store(version: str, folder: Path, phase: int) -> dict:
    """One phase of ``edit_store.py`` on ``folder/mlruns``; what it did."""
    out = _script(ensure_venv(version), "edit_store.py",
                  ["--out", str(folder), "--phase", str(phase)], folder)
    return json.loads(out.strip().splitlines()[-1])


def mlflow_uri(target: str) -> str:
    """The URI MLflow's stores open ``target`` (an SQLite path or fs2sql's server URL) with:
    the driver fs2sql uses (psycopg 3, PyMySQL), which the fixture venvs carry."""
    if "://" not in target:
        return f"sqlite:///{Path(target).resolve()}"
    if target.startswith("sqlite:"):
        return target
    from mlflow_fs2sql.targets.server import parse_server_url

    return parse_server_url(target).url.render_as_string(hide_password=False)


def server_writes(version: str, target: str, phase: int, timeout: float = 600) -> dict:
    """One phase of ``server_writes.py`` on the database; what it wrote."""
    with tempfile.TemporaryDirectory(prefix="fs2sql-server-writes-") as tmp:
        out = Path(tmp) / "wrote.json"
        _script(ensure_venv(version), "server_writes.py",
                ["--uri", mlflow_uri(target), "--phase", str(phase), "--out", str(out)],
                Path(tmp), timeout=timeout)
        return json.loads(out.read_text(encoding="utf-8"))


def dump_db(version: str, target: str) -> dict:
    """What MLflow ``version``'s SqlAlchemyStore sees in the database (SQLite: on a copy, as
    ``oracle.dump`` does; a server database is read in place -- a store at the database's own
    revision writes nothing when it opens one that has experiments)."""
    uri = mlflow_uri(target)
    if uri.startswith("sqlite:"):
        return dump(version, uri)
    with tempfile.TemporaryDirectory(prefix="fs2sql-oracle-") as tmp:
        result = _run(ensure_venv(version), uri, Path(tmp))
    result["_oracle"] = {"source": uri.split("@")[-1]}
    return result


# One process, many dumps: oracle_dump.py's Dumper on each request line (JSON: uri, out).
_WORKER = r"""
import importlib.util, json, sys, traceback
spec = importlib.util.spec_from_file_location("oracle_dump", sys.argv[1])
oracle_dump = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oracle_dump)
for line in sys.stdin:
    request = json.loads(line)
    try:
        result = oracle_dump.Dumper(request["uri"]).dump()
        with open(request["out"], "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1, sort_keys=True, ensure_ascii=False)
        answer = {"ok": True}
    except Exception:
        answer = {"ok": False, "error": traceback.format_exc()[-3000:]}
    print(json.dumps(answer), flush=True)
"""


class Reader:
    """``oracle.dump`` for many URIs in one process of full MLflow ``version``: FileStores and
    SQLite files are read on copies (MLflow's readers write), server databases in place."""

    def __init__(self, version: str):
        self.version = version
        self._tmp = Path(tempfile.mkdtemp(prefix="fs2sql-reader-"))
        self._n = 0
        self._proc: Optional[subprocess.Popen] = None

    def _ask(self, uri: str) -> dict:
        if self._proc is None:
            self._errors = open(self._tmp / "stderr.log", "w+", encoding="utf-8")
            self._proc = subprocess.Popen(
                [str(ensure_venv(self.version)), "-c", _WORKER, str(DUMPER)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors, text=True,
                cwd=self._tmp)
        out = self._tmp / f"dump-{self._n}.json"
        self._proc.stdin.write(json.dumps({"uri": uri, "out": str(out)}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            self._errors.seek(0)
            raise OracleError(f"the dump process of MLflow {self.version} died:\n"
                              + self._errors.read()[-3000:])
        answer = json.loads(line)
        if not answer["ok"]:
            raise OracleError(f"dumping {uri} failed:\n{answer['error']}")
        result = json.loads(out.read_text(encoding="utf-8"))
        out.unlink()
        return result

    def store(self, mlruns: Path) -> dict:
        """What MLflow's FileStore sees in ``mlruns`` (read on a copy)."""
        self._n += 1
        copy = self._tmp / f"store-{self._n}" / Path(mlruns).name
        shutil.copytree(mlruns, copy, symlinks=True)
        try:
            result = self._ask(copy.as_uri())
        finally:
            shutil.rmtree(copy.parent, ignore_errors=True)
        result["_oracle"] = {"source": Path(mlruns).as_uri()}
        return result

    def db(self, target: str) -> dict:
        """What MLflow's SqlAlchemyStore sees in the database (SQLite: on a copy)."""
        self._n += 1
        uri = mlflow_uri(target)
        if uri.startswith("sqlite:"):
            folder = self._tmp / f"db-{self._n}"
            folder.mkdir()
            try:
                result = self._ask(_copy_sqlite(uri, folder))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            result = self._ask(uri)
        result["_oracle"] = {"source": uri.split("@")[-1]}
        return result

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._errors.close()
            self._proc = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
