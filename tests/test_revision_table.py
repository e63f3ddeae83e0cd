"""Checks of the committed MLflow release -> Alembic head table (mlflow_revisions.json).

The table is produced by ``scripts/mlflow_revisions.py`` from the published mlflow-skinny wheels;
fs2sql's ``--mlflow-version`` relies on it to stop ``alembic upgrade`` at the revision that
release's ``mlflow server`` expects (filestore-format.md §18-§19).

The checks on the JSON itself are plain functions returning a list of errors, so that the
meta-tests at the end can prove they catch a wrongly edited table. The tests against the
installed mlflow-skinny import ``mlflow`` lazily and skip when it is absent.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "src" / "mlflow_fs2sql" / "data" / "mlflow_revisions.json"
SCRIPT = REPO / "scripts" / "mlflow_revisions.py"

# From filestore-format.md §18 (heads of inspected releases), independently of the script.
KNOWN_HEADS = {
    "1.14.0": "a8c4a736bde6",
    "1.24.0": "c48cb773bb87",
    "1.25.0": "bd07f7e963c5",
    "1.27.0": "bd07f7e963c5",
    "2.0.0": "97727af70f4d",
    "2.2.0": "97727af70f4d",
    "2.9.0": "acf3f17fdcc7",
    "2.12.2": "acf3f17fdcc7",
    "2.16.0": "4465047574b1",
    "2.18.0": "0584bdc529eb",
    "2.22.5": "0584bdc529eb",
    "3.0.0": "6953534de441",
    "3.1.0": "6953534de441",
    "3.5.0": "bf29a5ff90ea",
    "3.7.0": "bf29a5ff90ea",
    "3.16.1": "b7e2c1a4d9f3",
    "3.17.0": "dc11669786a5",
    "3.17.2": "dc11669786a5",
    # issue 12: 3.18.0 adds the skill registry, issue contract and MCP version revisions
    "3.18.0": "f4a9b2c7d1e6",
}
KNOWN_COUNTS = {"2.22.5": 28, "3.17.2": 67, "3.18.0": 70}


# ------------------------------------------------------------------------------------------
# helpers / checks (pure functions over the loaded document)
# ------------------------------------------------------------------------------------------


def load_table() -> dict:
    with open(TABLE, encoding="utf-8") as fh:
        return json.load(fh)


def parents_of(down) -> List[str]:
    if down is None:
        return []
    if isinstance(down, str):
        return [down]
    return list(down)


def ancestry(revisions: Dict[str, dict], head: str, errors: List[str]) -> Set[str]:
    """All revisions reachable from ``head`` via down_revision; gaps/cycles go to ``errors``."""
    seen: Set[str] = set()
    bases: Set[str] = set()
    stack = [head]
    while stack:
        rid = stack.pop()
        if rid in seen:
            continue
        if rid not in revisions:
            errors.append(f"{head}: ancestor {rid} missing from revisions (gap)")
            continue
        seen.add(rid)
        ps = parents_of(revisions[rid]["down_revision"])
        if not ps:
            bases.add(rid)
        stack.extend(ps)
    if len(bases) != 1:
        errors.append(f"{head}: ancestry reaches {len(bases)} bases {sorted(bases)}, expected 1")
    if head in _descendants_of_self(revisions, head):
        errors.append(f"{head}: cycle in down_revision links")
    return seen


def _descendants_of_self(revisions: Dict[str, dict], head: str) -> Set[str]:
    """Revisions reachable from head's parents (contains head iff there is a cycle)."""
    out: Set[str] = set()
    stack = parents_of(revisions.get(head, {}).get("down_revision"))
    while stack:
        rid = stack.pop()
        if rid in out or rid not in revisions:
            continue
        out.add(rid)
        stack.extend(parents_of(revisions[rid]["down_revision"]))
    return out


def check_shape(doc: dict) -> List[str]:
    errors = []
    if doc.get("generated_by") != "scripts/mlflow_revisions.py":
        errors.append("generated_by is not scripts/mlflow_revisions.py")
    releases = doc.get("releases")
    if not isinstance(releases, dict) or not releases:
        return errors + ["releases missing or empty"]
    for v, e in releases.items():
        if not isinstance(e.get("head"), str) or not e["head"]:
            errors.append(f"{v}: head is not a single revision id ({e.get('head')!r})")
        if not isinstance(e.get("n_revisions"), int) or e["n_revisions"] < 1:
            errors.append(f"{v}: bad n_revisions {e.get('n_revisions')!r}")
        if "heads" in e:
            errors.append(f"{v}: more than one head {e['heads']}")
    if doc.get("anomalies"):
        errors.append(f"anomalies reported by the script: {doc['anomalies']}")
    for v in doc.get("skipped", {}):
        if v in releases:
            errors.append(f"{v} is both skipped and covered")
    return errors


def check_sorted(doc: dict) -> List[str]:
    keys = list(doc["releases"])
    versions = [Version(k) for k in keys]
    errors = []
    for k, v in zip(keys, versions):
        if str(v) != k:
            errors.append(f"release key {k!r} is not a normalised version ({v})")
    for a, b in zip(versions, versions[1:]):
        if not a < b:
            errors.append(f"releases not in strictly increasing version order: {a} then {b}")
    return errors


def check_chains(doc: dict) -> List[str]:
    """Each head's ancestry is gap-free, reaches one base, counts n_revisions, and
    first_release is exactly the first covered release whose ancestry contains the revision."""
    releases, revisions = doc["releases"], doc["revisions"]
    errors: List[str] = []
    first_seen: Dict[str, str] = {}
    for v in sorted(releases, key=Version):
        e = releases[v]
        head = e["head"]
        if head not in revisions:
            errors.append(f"{v}: head {head} not in revisions")
            continue
        anc = ancestry(revisions, head, errors)
        if len(anc) != e["n_revisions"]:
            errors.append(f"{v}: ancestry of {head} has {len(anc)} revisions, "
                          f"n_revisions says {e['n_revisions']}")
        for rid in anc:
            first_seen.setdefault(rid, v)
    # A release whose head the next release does not contain (parallel release branches, e.g.
    # 3.0.1 vs 3.1.0) must be called out in "notes": fs2sql cannot move such a DB forward.
    notes = " ".join(doc.get("notes", []))
    ordered = sorted(releases, key=Version)
    for a, b in zip(ordered, ordered[1:]):
        ha, hb = releases[a]["head"], releases[b]["head"]
        if ha in revisions and hb in revisions and ha not in ancestry(revisions, hb, []):
            if f"{a}'s head {ha}" not in notes:
                errors.append(f"{b} does not contain {a}'s head {ha} and no note says so")
    for rid, r in revisions.items():
        if rid not in first_seen:
            errors.append(f"revision {rid} is in no release's ancestry")
        elif r.get("first_release") != first_seen[rid]:
            errors.append(f"{rid}: first_release {r.get('first_release')!r}, "
                          f"but first covered release containing it is {first_seen[rid]}")
        if not isinstance(r.get("description"), str):
            errors.append(f"{rid}: description missing")
    return errors


def check_known(doc: dict) -> List[str]:
    errors = []
    for v, head in KNOWN_HEADS.items():
        got = doc["releases"].get(v, {}).get("head")
        if got != head:
            errors.append(f"{v}: head {got!r}, doc says {head}")
    for v, n in KNOWN_COUNTS.items():
        got = doc["releases"].get(v, {}).get("n_revisions")
        if got != n:
            errors.append(f"{v}: n_revisions {got!r}, doc says {n}")
    return errors


ALL_CHECKS = (check_shape, check_sorted, check_chains, check_known)


# ------------------------------------------------------------------------------------------
# tests on the committed table
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> dict:
    return load_table()


def test_table_loads(table):
    assert check_shape(table) == []
    # skinny starts at 1.14.0; the table must cover the 2.x and 3.x lines fs2sql targets
    assert "1.14.0" in table["releases"]
    assert "2.4.0" in table["releases"]
    assert len(table["releases"]) >= 100


def test_versions_sorted(table):
    assert check_sorted(table) == []


def test_every_head_is_a_known_revision(table):
    missing = {v: e["head"] for v, e in table["releases"].items()
               if e["head"] not in table["revisions"]}
    assert missing == {}


def test_revision_chains_consistent(table):
    assert check_chains(table) == []


def test_known_pairs_from_doc(table):
    assert check_known(table) == []


def test_releases_share_one_base_and_heads_are_monotonic_per_line(table):
    """Within one release line (X.Y.*) later patches never lose a migration."""
    revisions = table["revisions"]
    by_minor: Dict[tuple, List[str]] = {}
    for v in table["releases"]:
        by_minor.setdefault(Version(v).release[:2], []).append(v)
    for vs in by_minor.values():
        prev: Optional[Set[str]] = None
        for v in vs:
            anc = ancestry(revisions, table["releases"][v]["head"], [])
            if prev is not None:
                assert prev <= anc, f"{v} lost {sorted(prev - anc)}"
            prev = anc


# ------------------------------------------------------------------------------------------
# tests against the installed mlflow-skinny
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed():
    """(version, ScriptDirectory) of the installed mlflow's migrations."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("alembic")
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    # As mlflow.store.db.utils._get_alembic_config builds it.
    alembic_dir = os.path.join(os.path.dirname(mlflow.__file__), "store", "db_migrations")
    config = Config(os.path.join(alembic_dir, "alembic.ini"))
    config.set_main_option("script_location", alembic_dir)
    config.set_main_option("sqlalchemy.url", "")
    return Version(mlflow.__version__), ScriptDirectory.from_config(config)


def test_installed_release_maps_to_its_own_head(table, installed):
    version, script = installed
    heads = script.get_heads()
    assert len(heads) == 1, f"installed mlflow {version} has heads {heads}"
    if str(version) not in table["releases"]:
        # fs2sql knows it anyway (releases.installed_release, tests/test_releases.py); the
        # newest session (FS2SQL_NEWEST) asks for the table to be regenerated.
        if os.environ.get("FS2SQL_NEWEST"):
            pytest.fail(f"installed mlflow {version} is not in the table: run "
                        "python scripts/mlflow_revisions.py")
        pytest.skip(f"installed mlflow {version} is not in the table (regenerate it?)")
    assert table["releases"][str(version)]["head"] == heads[0]
    assert table["releases"][str(version)]["n_revisions"] == len(list(script.walk_revisions()))


def test_installed_scripts_agree_with_table(table, installed):
    """Every installed script's down_revision is the one recorded in the table."""
    version, script = installed
    wrong = {}
    for sc in script.walk_revisions():
        rec = table["revisions"].get(sc.revision)
        if rec is None:
            if version <= Version(list(table["releases"])[-1]):
                wrong[sc.revision] = "missing from table"
            continue
        if parents_of(rec["down_revision"]) != parents_of(sc.down_revision):
            wrong[sc.revision] = (rec["down_revision"], sc.down_revision)
    assert wrong == {}


def test_older_release_heads_exist_in_installed_scripts(table, installed):
    """fs2sql can `alembic upgrade <head of R>` with the installed scripts, for R <= installed."""
    version, script = installed
    # Release branches can diverge: 3.0.1 ships bda7b8c39065, which 3.1.0 lacks. Per the table,
    # the heads unreachable from the newest covered release <= installed are exactly those.
    covered = [v for v in table["releases"] if Version(v) <= version]
    if not covered:
        pytest.skip(f"installed mlflow {version} is older than the table")
    reachable = ancestry(table["revisions"], table["releases"][covered[-1]]["head"], [])
    expected_missing = sorted(v for v in covered if table["releases"][v]["head"] not in reachable)
    notes = " ".join(table.get("notes", []))
    for v in expected_missing:
        assert f"{v}'s head" in notes, f"{v}'s head is unreachable but no note in the table says so"
    absent, wrong = [], {}
    for v in covered:
        head = table["releases"][v]["head"]
        try:
            rev = script.get_revision(head)
        except Exception:  # alembic.util.CommandError / ResolutionError: unknown revision
            rev = None
        if rev is None:
            absent.append(v)
            continue
        if v in expected_missing:
            continue  # reported by the absent == expected_missing assertion
        # the installed ancestry of that head matches the table's
        installed_anc = {r.revision for r in script.iterate_revisions(head, "base")}
        table_anc = ancestry(table["revisions"], head, [])
        if installed_anc != table_anc:
            wrong[v] = f"ancestry of {head} differs: {sorted(installed_anc ^ table_anc)}"
    assert absent == expected_missing, "heads missing from the installed scripts"
    assert wrong == {}

# ------------------------------------------------------------------------------------------
# the checks can fail: wrongly edited copies of the table are rejected
# ------------------------------------------------------------------------------------------


def _mutations(doc: dict):
    rel, revs = doc["releases"], doc["revisions"]

    def wrong_head(d):
        d["releases"]["2.22.5"]["head"] = "f5a4f2784254"

    def unknown_head(d):
        d["releases"]["3.17.2"]["head"] = "deadbeef0000"

    def gap(d):
        del d["revisions"]["cc1f77228345"]

    def broken_link(d):
        d["revisions"]["97727af70f4d"]["down_revision"] = "000000000000"

    def two_bases(d):
        d["revisions"]["3500859a5d39"]["down_revision"] = None

    def cycle(d):
        d["revisions"]["451aebb31d03"]["down_revision"] = "90e64c465722"

    def unsorted(d):
        items = list(d["releases"].items())
        items[3], items[4] = items[4], items[3]
        d["releases"] = dict(items)

    def count(d):
        d["releases"]["3.0.0"]["n_revisions"] += 1

    def first_release(d):
        d["revisions"]["0584bdc529eb"]["first_release"] = "2.17.0"

    def diverging_head(d):
        d["releases"]["2.4.0"].update(head="1a0cddfcaa16", n_revisions=36)
        d["revisions"]["1a0cddfcaa16"]["first_release"] = "2.4.0"

    def multi_head(d):
        d["releases"]["3.0.0"]["heads"] = ["6953534de441", "bda7b8c39065"]
        d["releases"]["3.0.0"]["head"] = None

    assert "2.22.5" in rel and "cc1f77228345" in revs
    return [wrong_head, unknown_head, gap, broken_link, two_bases, cycle, unsorted, count,
            first_release, diverging_head, multi_head]


@pytest.mark.parametrize("index", range(11))
def test_checks_reject_wrong_edits(table, index):
    mutate = _mutations(table)[index]
    doc = copy.deepcopy(table)
    mutate(doc)
    errors = []
    for check in ALL_CHECKS:
        try:
            errors += check(doc)
        except (KeyError, TypeError) as exc:  # a crash is a failure too
            errors.append(f"{check.__name__} crashed: {exc!r}")
    assert errors, f"mutation {mutate.__name__} went unnoticed"


# ------------------------------------------------------------------------------------------
# the generator's parser handles merge revisions (none are published yet)
# ------------------------------------------------------------------------------------------


def _load_script_module():
    spec = importlib.util.spec_from_file_location("mlflow_revisions_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_generator_parses_merges_and_finds_heads():
    mod = _load_script_module()
    src = {
        "a": '"""base rev\n\nRevision ID: a\nRevises:\nCreate Date: 2020-01-01\n"""\n'
             'revision = "a"\ndown_revision = None\n',
        "b": '"""left"""\nrevision = "b"\ndown_revision = "a"\n',
        "c": '"""right"""\nrevision: str = "c"\ndown_revision: str = "a"\n',
        "m": '"""merge b and c"""\nrevision = "m"\ndown_revision = ("b", "c")\n',
    }
    revs = {k: mod.parse_script(v, f"{k}.py") for k, v in src.items()}
    assert revs["a"]["description"] == "base rev" and revs["a"]["created"] == "2020-01-01"
    assert revs["m"]["down_revision"] == ["b", "c"]
    an = mod.analyse(revs)
    assert an["heads"] == ["m"] and an["bases"] == ["a"] and an["problems"] == []
    assert an["chain"][0] == "a" and an["chain"][-1] == "m" and len(an["chain"]) == 4

    del revs["m"]
    an = mod.analyse(revs)
    assert an["heads"] == ["b", "c"] and an["problems"]  # two heads are flagged
    del revs["a"]
    assert any("gap" in p for p in mod.analyse(revs)["problems"])
