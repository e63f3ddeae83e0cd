"""What MLflow's own stores see: ``dump(mlflow_version, uri) -> dict``.

Runs ``oracle_dump.py`` in the fixture venv of ``mlflow_version`` (see ``envs.py``) against a
tracking+registry URI:

* ``file:///abs/mlruns`` (or a plain path) → MLflow's FileStore, on a copy in a temp dir
  (files that MLflow changed while reading are reported in ``_oracle``).
* ``sqlite:////abs/x.db`` → MLflow's SqlAlchemyStore on a **copy** of the DB in a temp dir,
  because opening it may write (experiment 0, migrations).

The dict is canonical (sorted keys, sorted lists where MLflow defines no order, non-finite
floats as ``"nan"``/``"inf"``/``"-inf"``); ``dump["unsupported"]`` names the sections that
release could not read, with the error.

CLI: ``python -m fixtures_gen.oracle --version 3.17.2 --uri file:///…/mlruns [--out f.json]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Tuple

from .envs import ensure_venv

DUMPER = Path(__file__).with_name("oracle_dump.py")


class OracleError(RuntimeError):
    """The dump script failed."""


def dump(mlflow_version: str, uri: str, package: str = "mlflow") -> dict:
    """Everything MLflow ``mlflow_version``'s stores see at ``uri``, as canonical JSON data.

    ``package`` picks the reader's venv (``envs.ensure_venv``): full ``mlflow`` or
    ``mlflow-skinny``; both hold the same FileStore and SqlAlchemyStore.

    The source is never touched: the reader works on a copy (MLflow's readers do write, e.g.
    SqlAlchemyStore creates experiment 0, and 3.x ``load_prompt`` tags the prompt with the
    active experiment). Files of a FileStore copy that changed while reading are listed in
    ``result["_oracle"]["filestore_writes_on_read"]``.
    """
    python = ensure_venv(mlflow_version, package)
    with tempfile.TemporaryDirectory(prefix="fs2sql-oracle-") as tmp:
        if uri.startswith("sqlite:"):
            result = _run(python, _copy_sqlite(uri, Path(tmp)), Path(tmp))
            result["_oracle"] = {"source": uri}
            return result
        source = _file_store_path(uri)
        if not source.is_dir():
            raise FileNotFoundError(f"FileStore {source} does not exist")
        # The copy keeps the directory name; artifact locations in the files still point to
        # the original store, which MLflow only reads (spans).
        copy = Path(tmp) / "store" / source.name
        shutil.copytree(source, copy, symlinks=True)
        before = _snapshot(copy)
        result = _run(python, copy.as_uri(), Path(tmp))
        after = _snapshot(copy)
        changed = sorted({k for k in set(before) | set(after) if before.get(k) != after.get(k)})
        result["_oracle"] = {"source": source.as_uri(), "filestore_writes_on_read": changed}
        return result


def _file_store_path(uri: str) -> Path:
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        raise ValueError(f"unsupported URI {uri!r}: use file:///abs/mlruns or sqlite:////abs.db")
    return Path(uri).resolve()


def _copy_sqlite(uri: str, tmp: Path) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix:
        raise ValueError(f"expected sqlite:////absolute/path.db, got {uri!r}")
    source = Path(uri[len(prefix):])
    if not source.is_file():
        raise FileNotFoundError(f"SQLite database {source} does not exist")
    copy = tmp / source.name
    shutil.copyfile(source, copy)
    return f"sqlite:///{copy}"


def _snapshot(root: Path) -> Dict[str, Tuple[int, int]]:
    snap = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            snap[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return snap


def _run(python: Path, uri: str, tmp: Path) -> dict:
    out = tmp / "dump.json"
    proc = subprocess.run([str(python), str(DUMPER), "--uri", uri, "--out", str(out)],
                          cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OracleError(f"oracle_dump.py failed for {uri} with {python}:\n"
                          + "\n".join(proc.stderr.splitlines()[-30:]))
    return json.loads(out.read_text(encoding="utf-8"))


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Dump what MLflow's stores see at a URI.")
    parser.add_argument("--version", required=True, help="MLflow version of the reader")
    parser.add_argument("--skinny", action="store_true", help="read with mlflow-skinny only")
    parser.add_argument("--uri", required=True, help="file:///abs/mlruns or sqlite:////abs.db")
    parser.add_argument("--out", help="write JSON here (default: stdout)")
    args = parser.parse_args(argv)
    text = json.dumps(dump(args.version, args.uri, "mlflow-skinny" if args.skinny else "mlflow"), indent=1, sort_keys=True, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
