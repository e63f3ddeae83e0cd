"""IDs MLflow 3.18's FileStore no longer accepts (``kinds/id_checks.py``): migrated as they are,
and counted in the report's notes."""

import os
import shutil
import stat

from conftest import fixture_store, require_schema

from mlflow_fs2sql.kinds.id_checks import (
    NOTE_PATH_LIKE,
    NOTE_TRACE_ID,
    path_like,
    url_unsafe_trace_id,
)
from mlflow_fs2sql.migrate import MigrateOptions, migrate, verify


def _rename_id(root, old, new):
    """Give an entity another ID everywhere: in file contents and in file and folder names."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                data = f.read()
            if old.encode() in data:
                with open(path, "wb") as f:
                    f.write(data.replace(old.encode(), new.encode()))
    for dirpath, dirs, files in os.walk(root, topdown=False):
        for name in dirs + files:
            if old in name:
                os.rename(os.path.join(dirpath, name), os.path.join(dirpath, name.replace(old, new)))


def test_the_checks_follow_mlflow_3_18():
    assert path_like("m-abc.") and path_like("m-abc ") and not path_like("m-abc")
    assert url_unsafe_trace_id("tr-a%3F") and url_unsafe_trace_id("tr-a#b")
    assert url_unsafe_trace_id("tr-a\tb") and not url_unsafe_trace_id("tr-0123abcd")


def test_odd_ids_are_migrated_and_counted(tmp_path):
    require_schema("assessments")  # the 3.17.2 store holds assessments (not on Python 3.9)
    src = tmp_path / "mlruns"
    shutil.copytree(fixture_store("3.17.2", "small"), src)
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            p = os.path.join(dirpath, name)
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
    plain = migrate(str(src), str(tmp_path / "plain.db"), MigrateOptions(dry_run=True))
    assert not any("3.18" in n for n in plain.notes)
    trace = sorted(p.name for p in src.glob("*/traces/tr-*"))[0]
    model = sorted(p.name for p in src.glob("*/models/m-*"))[0]
    _rename_id(src, trace, trace[:-2] + "%3F")
    _rename_id(src, model, model + ".")
    report = migrate(str(src), str(tmp_path / "odd.db"), MigrateOptions(verify=True))
    assert report.ok and not report.skipped
    assert NOTE_TRACE_ID.format(n=1) in report.notes
    assert NOTE_PATH_LIKE.format(n=1) in report.notes
    assert verify(str(src), str(tmp_path / "odd.db")).ok
