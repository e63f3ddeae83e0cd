"""The release table fs2sql uses at run time: the shipped table plus what the installed
mlflow-skinny says about itself (``releases.installed_release``), never stale for that package.

``FS2SQL_NEWEST=1`` (set by ``nox -s newest``, which installs the newest mlflow-skinny past
pyproject's bound) also requires the *shipped* table to list the installed release: a session
testing a new mlflow-skinny then learns that it must regenerate ``data/mlflow_revisions.json``
before lifting the bound. There, the installed release may lie outside the tested range.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import installed_head

from mlflow_fs2sql import releases
from mlflow_fs2sql.errors import SchemaError
from mlflow_fs2sql.migrate import MigrateOptions, migrate
from mlflow_fs2sql.schema import mlflow_skinny_version


@pytest.fixture(autouse=True)
def _fresh_caches():
    cached = (releases.installed_release, releases.table)  # the tests monkeypatch them
    for function in cached:
        function.cache_clear()
    yield
    for function in cached:
        function.cache_clear()


def _alembic_revisions() -> set:
    import mlflow
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    folder = os.path.join(os.path.dirname(mlflow.__file__), "store", "db_migrations")
    config = Config(os.path.join(folder, "alembic.ini"))
    config.set_main_option("script_location", folder)
    return {s.revision for s in ScriptDirectory.from_config(config).walk_revisions()}


def test_installed_mlflow_skinny_is_a_known_release_at_its_own_head():
    version, head = mlflow_skinny_version(), installed_head()  # Alembic's own reading
    known = releases.known_releases()
    assert version in known, f"mlflow-skinny {version} is missing from the release table"
    assert known[version] == head, f"the table puts {version} at {known[version]}, not {head}"
    shipped = releases.table()["releases"]
    if version in shipped:  # the shipped table must agree with the package where both speak
        assert shipped[version]["head"] == head
    elif os.environ.get("FS2SQL_NEWEST"):
        pytest.fail(f"mlflow-skinny {version} is not in src/mlflow_fs2sql/data/"
                    "mlflow_revisions.json: run python scripts/mlflow_revisions.py")


def test_installed_release_is_read_as_alembic_reads_it():
    mine = releases.installed_release()
    assert mine is not None
    assert mine.version == mlflow_skinny_version()
    assert mine.head == installed_head()
    assert mine.revisions == _alembic_revisions()


def _table_without(version: str) -> dict:
    import copy

    doc = copy.deepcopy(releases.table())
    doc["releases"].pop(version, None)
    return doc


def test_a_release_the_shipped_table_lacks_is_known_from_the_package(monkeypatch, tiny_store,
                                                                    tmp_path):
    """The day a new mlflow-skinny is installed (e.g. injected), before any table lists it."""
    version, head = mlflow_skinny_version(), installed_head()
    stale = _table_without(version)
    monkeypatch.setattr(releases, "table", lambda: stale)
    assert version not in releases.table()["releases"]
    assert releases.known_releases()[version] == head
    assert releases.revision_for(version) == (head, version)
    minor = ".".join(version.split(".")[:2])
    assert releases.revision_for(minor)[1].startswith(minor + ".")
    assert version in releases.describe_releases(head)
    report = migrate(str(tiny_store), str(tmp_path / "o.db"),
                     MigrateOptions(mlflow_version=version))
    assert report.revision == head and version in report.opens_in


def test_without_the_package_only_the_shipped_table_counts(monkeypatch):
    """What the derivation adds, proven by taking it away: a stale table then lacks the
    installed release (so the test above can fail)."""
    version = mlflow_skinny_version()
    stale = _table_without(version)
    monkeypatch.setattr(releases, "table", lambda: stale)
    monkeypatch.setattr(releases, "installed_release", lambda: None)
    assert version not in releases.known_releases()
    with pytest.raises(SchemaError, match=f"does not know MLflow {version}"):
        releases.revision_for(version)


def test_a_dev_build_is_not_taken_for_a_published_release(monkeypatch):
    fake = releases.InstalledRelease("9.1.0.dev0", "0123456789ab", frozenset({"0123456789ab"}))
    monkeypatch.setattr(releases, "installed_release", lambda: fake)
    assert "9.1.0.dev0" not in releases.known_releases()
    assert releases.describe_releases("0123456789ab").startswith("no published MLflow release")


def test_a_revision_the_package_does_not_ship_is_refused_before_alembic(monkeypatch):
    mine = releases.installed_release()
    fewer = releases.InstalledRelease(mine.version, mine.head,
                                      mine.revisions - {"0584bdc529eb"})
    monkeypatch.setattr(releases, "installed_release", lambda: fewer)
    with pytest.raises(SchemaError, match="does not ship") as exc:
        releases.check_buildable("0584bdc529eb", "2.22.5")
    assert "pipx inject --force fs2sql 'mlflow-skinny==2.22.5'" in str(exc.value)
    releases.check_buildable(mine.head, mine.version)  # what it ships passes


def test_newer_releases_than_fs2sql_knows_name_the_inject_command():
    newest = list(releases.known_releases())[-1]
    major, minor = newest.split(".")[:2]
    later = f"{major}.{int(minor) + 1}"
    with pytest.raises(SchemaError, match=f"does not know MLflow {later}") as exc:
        releases.revision_for(later)
    assert f"pipx inject --force fs2sql 'mlflow-skinny=={later}.0'" in str(exc.value)


@pytest.mark.parametrize("spec, version, expect", [
    ("<3.19,>=2.4", "3.18.0", None),
    ("<3.19,>=2.4", "3.18.5", None),
    ("<3.18,>=2.4", "3.18.0", "newer than"),
    ("<3.19,>=2.4", "3.19.0", "newer than"),
    ("<=3.18.0,>=2.4", "3.18.1", "newer than"),
    ("<3.19,>=3.0", "2.22.5", "outside"),
])
def test_an_injected_release_outside_the_tested_range_is_named(monkeypatch, spec, version,
                                                                expect):
    monkeypatch.setattr(releases, "tested_range", lambda: spec)
    monkeypatch.setattr(releases, "installed_release",
                        lambda: releases.InstalledRelease(version, "x", frozenset({"x"})))
    said = releases.untested_installed()
    if expect is None:
        assert said is None
    else:
        assert said and f"mlflow-skinny {version} is {expect} the releases" in said
        assert f"mlflow-skinny{spec}" in said


def _past_the_bound() -> bool:
    """``nox -s newest`` installed an mlflow-skinny newer than the tested range on purpose."""
    return bool(os.environ.get("FS2SQL_NEWEST")) and releases.untested_installed() is not None


def test_the_installed_package_declares_its_tested_range():
    spec = releases.tested_range()
    assert spec and "<" in spec, spec  # pyproject bounds mlflow-skinny (README policy)
    if _past_the_bound():
        assert "is newer than the releases" in releases.untested_installed()
    else:
        assert releases.untested_installed() is None  # pip resolved inside the bound


def test_version_names_mlflow_skinny_and_the_releases_it_can_target():
    proc = subprocess.run([sys.executable, "-m", "mlflow_fs2sql", "--version"],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    version, head = mlflow_skinny_version(), installed_head()
    assert lines[0].startswith("fs2sql ")
    assert lines[1].startswith(f"mlflow-skinny {version}: default schema {head}, which opens in ")
    assert version in lines[1]
    assert lines[2].startswith(f"--mlflow-version can target MLflow 1.14.0 to {version} (")
    if _past_the_bound():
        assert lines[3] == releases.untested_installed()
    else:
        assert len(lines) == 3  # nothing about an untested release
