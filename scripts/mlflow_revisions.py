#!/usr/bin/env python3
"""Build ``src/mlflow_fs2sql/data/mlflow_revisions.json``: MLflow release -> Alembic head revision.

fs2sql's ``--mlflow-version X.Y.Z`` must create the schema at exactly the Alembic revision that
this release shipped as its head, because ``mlflow server`` refuses a database whose
``alembic_version.version_num`` differs from its own head (see filestore-format.md §19).

What it does, for every mlflow-skinny release that ``pip index versions`` lists from
``--min-version`` (1.14.0, skinny's first release) up to the newest:

1. ``pip download --no-deps`` the wheel into ``${FS2SQL_CACHE:-~/.cache/fs2sql-dev}/wheels``
   (reused between runs: a wheel already there is never fetched again);
2. opens the wheel as a zip (nothing is installed) and parses every
   ``mlflow/store/db_migrations/versions/*.py`` with :mod:`ast` (``revision``,
   ``down_revision`` -- a tuple for merge revisions --, the docstring's first line);
3. computes the head(s) (revisions no other script names as a parent), walks the ancestry from
   the head down to the base and checks it has no gaps and leaves no script out;
4. writes the JSON (releases in :class:`packaging.version.Version` order, one per line).

Versions missing from the index listing (patch gaps such as 3.11.0) are probed once with
``pip install --dry-run --report`` to tell "yanked" from "not published"; the probe result is
cached too. Anything surprising (more than one head, a missing parent, a script outside the
head's ancestry, a revision whose parent changed or that disappeared) is listed under
``anomalies`` in the JSON and in the summary, and makes the script exit with status 2.

Usage::

    python scripts/mlflow_revisions.py            # refresh the JSON
    python scripts/mlflow_revisions.py --check    # exit 1 if the committed JSON is stale
    python scripts/mlflow_revisions.py --offline  # use cached wheels only (no pip index)
    python scripts/mlflow_revisions.py --show-chain 2.22.5
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PACKAGE = "mlflow-skinny"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "src" / "mlflow_fs2sql" / "data" / "mlflow_revisions.json"
GENERATED_BY = "scripts/mlflow_revisions.py"
# mlflow-skinny's first release on PyPI is 1.14.0.
DEFAULT_MIN_VERSION = "1.14.0"
# Where the migration scripts live inside the wheel (mlflow/alembic/versions before ~1.1).
MIGRATION_RE = re.compile(r"^mlflow/(?:store/db_migrations|alembic)/versions/([^/]+)\.py$")

Revision = Dict[str, object]  # {"revision", "down_revision", "description", "created", "file"}


# --------------------------------------------------------------------------------------------
# Cache and pip
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    env = os.environ.get("FS2SQL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fs2sql-dev"


def pip_cmd(python: str) -> List[str]:
    return [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def list_index_versions(python: str) -> List[Version]:
    """Versions of mlflow-skinny that ``pip index versions`` lists (yanked ones are not)."""
    proc = subprocess.run(
        pip_cmd(python) + ["index", "versions", PACKAGE],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"pip index versions {PACKAGE} failed:\n{proc.stderr.strip()}")
    for line in proc.stdout.splitlines():
        if line.startswith("Available versions:"):
            out = []
            for item in line.split(":", 1)[1].split(","):
                item = item.strip()
                if item:
                    out.append(Version(item))
            return sorted(out)
    raise SystemExit(f"unexpected output of pip index versions:\n{proc.stdout}")


def wheel_version(path: Path) -> Optional[Version]:
    """Version of an mlflow-skinny wheel from its file name, or None for other files."""
    if path.suffix != ".whl":
        return None
    parts = path.name[:-4].split("-")
    if len(parts) < 5 or canonicalize_name(parts[0]) != canonicalize_name(PACKAGE):
        return None
    try:
        return Version(parts[1])
    except InvalidVersion:
        return None


def cached_wheels(wheel_dir: Path) -> Dict[Version, Path]:
    out: Dict[Version, Path] = {}
    if wheel_dir.is_dir():
        for p in sorted(wheel_dir.iterdir()):
            v = wheel_version(p)
            if v is not None and p.is_file():
                out[v] = p
    return out


def download_wheel(python: str, version: Version, wheel_dir: Path) -> Tuple[Optional[Path], str]:
    """Fetch one wheel into ``wheel_dir`` atomically. Returns (path, "") or (None, reason)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".dl-{version}-", dir=wheel_dir))
    try:
        proc = subprocess.run(
            pip_cmd(python)
            + [
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                "-d",
                str(tmp),
                f"{PACKAGE}=={version}",
            ],
            capture_output=True,
            text=True,
        )
        got = [p for p in tmp.iterdir() if wheel_version(p) == version]
        if proc.returncode != 0 or not got:
            err = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
            return None, (err[0] if err else proc.stderr.strip()[-300:]) or "no wheel"
        dest = wheel_dir / got[0].name
        os.replace(got[0], dest)
        return dest, ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def probe_missing(python: str, version: Version) -> str:
    """Why a version is absent from the index listing: 'yanked' or 'not published'."""
    with tempfile.TemporaryDirectory() as td:
        report = Path(td) / "report.json"
        proc = subprocess.run(
            pip_cmd(python)
            + [
                "install",
                "--dry-run",
                "--no-deps",
                "--ignore-installed",
                "--only-binary=:all:",
                "--quiet",
                "--report",
                str(report),
                f"{PACKAGE}=={version}",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not report.exists():
            return "not published"
        try:
            items = json.loads(report.read_text()).get("install", [])
        except ValueError:
            items = []
        # pip < 24 has no is_yanked in the report, but always warns about a yanked pick.
        m = re.search(r"Reason for being yanked: (.*)", proc.stderr)
        if any(it.get("is_yanked") for it in items) or "is a yanked version" in proc.stderr:
            reason = m.group(1).strip() if m else ""
            return "yanked" + (f": {reason}" if reason and reason != "<none given>" else "")
        return "available but not listed by pip index"


def patch_gaps(listed: Sequence[Version]) -> List[Version]:
    """X.Y.Z absent from the listing although a later X.Y.* is listed (e.g. 3.11.0)."""
    by_minor: Dict[Tuple[int, int], List[int]] = defaultdict(list)
    for v in listed:
        if not v.is_prerelease and not v.is_devrelease and len(v.release) == 3:
            by_minor[(v.major, v.minor)].append(v.micro)
    gaps = []
    for (major, minor), micros in by_minor.items():
        present = set(micros)
        for micro in range(max(micros)):
            if micro not in present:
                gaps.append(Version(f"{major}.{minor}.{micro}"))
    return sorted(gaps)


# --------------------------------------------------------------------------------------------
# Parsing migration scripts
# --------------------------------------------------------------------------------------------


def parse_script(source: str, filename: str) -> Optional[Revision]:
    """``revision``/``down_revision``/docstring of one Alembic script, via ast (no import)."""
    tree = ast.parse(source, filename=filename)
    values: Dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            value = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
            value = node.value
        else:
            continue
        for name in targets:
            if name in ("revision", "down_revision", "branch_labels", "depends_on"):
                values[name] = ast.literal_eval(value) if value is not None else None
    if "revision" not in values:
        return None
    down = values.get("down_revision")
    if isinstance(down, (list, tuple)):
        down = list(down) if len(down) != 1 else down[0]
    doc = ast.get_docstring(tree) or ""
    lines = [ln.strip() for ln in doc.splitlines()]
    description = next((ln for ln in lines if ln), "")
    created = ""
    for ln in lines:
        if ln.lower().startswith("create date:"):
            created = ln.split(":", 1)[1].strip()
            break
    return {
        "revision": values["revision"],
        "down_revision": down,
        "description": description,
        "created": created,
        "branch_labels": values.get("branch_labels"),
        "depends_on": values.get("depends_on"),
        "file": filename,
    }


def parents(rev: Revision) -> List[str]:
    down = rev["down_revision"]
    if down is None:
        return []
    if isinstance(down, str):
        return [down]
    return list(down)  # type: ignore[arg-type]


def read_wheel(path: Path) -> Tuple[Dict[str, Revision], List[str]]:
    """All revisions in a wheel keyed by id, plus problems found while reading."""
    revs: Dict[str, Revision] = {}
    problems: List[str] = []
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            m = MIGRATION_RE.match(name)
            if not m or m.group(1) == "__init__":
                continue
            try:
                rev = parse_script(zf.read(name).decode("utf-8"), name)
            except (SyntaxError, ValueError) as exc:
                problems.append(f"cannot parse {name}: {exc}")
                continue
            if rev is None:
                problems.append(f"{name} has no `revision`")
                continue
            rid = str(rev["revision"])
            if rid in revs:
                problems.append(f"revision {rid} defined twice ({revs[rid]['file']}, {name})")
            if rev.get("branch_labels") or rev.get("depends_on"):
                problems.append(f"{rid} uses branch_labels/depends_on (not handled)")
            revs[rid] = rev
    return revs, problems


def analyse(revs: Dict[str, Revision]) -> Dict[str, object]:
    """Heads, bases, topological chain (base -> head) and consistency problems."""
    referenced = {p for r in revs.values() for p in parents(r)}
    heads = sorted(set(revs) - referenced)
    bases = sorted(rid for rid, r in revs.items() if not parents(r))
    problems: List[str] = []
    missing = sorted(referenced - set(revs))
    if missing:
        problems.append(f"down_revision(s) {missing} have no script (gap in the chain)")
    if len(heads) != 1:
        problems.append(f"{len(heads)} heads: {heads}")
    if len(bases) != 1:
        problems.append(f"{len(bases)} bases: {bases}")

    # Deterministic post-order DFS from the head(s): parents (in down_revision order) first.
    chain: List[str] = []
    seen = set()
    for head in heads:
        stack: List[Tuple[str, bool]] = [(head, False)]
        while stack:
            rid, done = stack.pop()
            if done:
                chain.append(rid)
                continue
            if rid in seen or rid not in revs:
                continue
            seen.add(rid)
            stack.append((rid, True))
            for p in reversed(parents(revs[rid])):
                stack.append((p, False))
    if len(heads) == 1:
        orphans = sorted(set(revs) - set(chain))
        if orphans:
            problems.append(f"scripts not in the head's ancestry: {orphans}")
    return {"heads": heads, "bases": bases, "chain": chain, "problems": problems}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def version_key(s: str) -> Version:
    return Version(s)


def dump_json(doc: Dict[str, object]) -> str:
    """Compact-ish JSON: one release / revision / note per line, stable for diffs."""

    def one(v: object) -> str:
        return json.dumps(v, ensure_ascii=False)

    out = ["{"]
    keys = list(doc)
    for i, key in enumerate(keys):
        val = doc[key]
        comma = "," if i < len(keys) - 1 else ""
        if isinstance(val, dict) and val:
            out.append(f"  {one(key)}: {{")
            items = list(val.items())
            for j, (k, v) in enumerate(items):
                c = "," if j < len(items) - 1 else ""
                out.append(f"    {one(k)}: {one(v)}{c}")
            out.append(f"  }}{comma}")
        elif isinstance(val, list) and val:
            out.append(f"  {one(key)}: [")
            for j, v in enumerate(val):
                c = "," if j < len(val) - 1 else ""
                out.append(f"    {one(v)}{c}")
            out.append(f"  ]{comma}")
        else:
            out.append(f"  {one(key)}: {one(val)}{comma}")
    out.append("}")
    return "\n".join(out) + "\n"


def build(
    wheels: Dict[Version, Path], skipped: Dict[str, str], min_version: Version
) -> Tuple[Dict[str, object], Dict[str, List[str]], Dict[str, Dict[str, object]]]:
    releases: Dict[str, Dict[str, object]] = {}
    revisions: Dict[str, Dict[str, object]] = {}
    anomalies: List[str] = []
    notes: List[str] = []
    chains: Dict[str, List[str]] = {}
    analyses: Dict[str, Dict[str, object]] = {}
    previous: Optional[Tuple[str, Dict[str, Revision]]] = None

    for version in sorted(wheels):
        vs = str(version)
        revs, problems = read_wheel(wheels[version])
        if not revs:
            anomalies.append(f"{vs}: no migration scripts found in the wheel")
            continue
        an = analyse(revs)
        analyses[vs] = an
        chains[vs] = list(an["chain"])  # type: ignore[arg-type]
        problems += an["problems"]  # type: ignore[operator]
        heads: List[str] = an["heads"]  # type: ignore[assignment]
        entry: Dict[str, object] = {
            "head": heads[0] if len(heads) == 1 else None,
            "n_revisions": len(revs),
        }
        if len(heads) != 1:
            entry["heads"] = heads
        releases[vs] = entry
        for p in problems:
            anomalies.append(f"{vs}: {p}")

        for rid in an["chain"] + sorted(set(revs) - set(an["chain"])):  # type: ignore[operator]
            r = revs[rid]
            if rid not in revisions:
                revisions[rid] = {
                    "down_revision": r["down_revision"],
                    "first_release": vs,
                    "description": r["description"],
                    "created": r["created"],
                }
            elif revisions[rid]["down_revision"] != r["down_revision"]:
                anomalies.append(
                    f"{vs}: {rid}.down_revision changed from "
                    f"{revisions[rid]['down_revision']!r} to {r['down_revision']!r}"
                )
                revisions[rid]["down_revision"] = r["down_revision"]
        if previous is not None:
            gone = sorted(set(previous[1]) - set(revs))
            if gone:
                # Not an error: parallel release branches (e.g. 3.0.1 was cut after 3.1.0 and
                # carries a migration 3.1.0 lacks). But a DB made for the older release cannot
                # be opened by the newer one, so it is worth a line in the JSON.
                notes.append(
                    f"{vs} lacks {gone} which {previous[0]} ships: {previous[0]}'s head "
                    f"{releases[previous[0]]['head']} is not an ancestor of {vs}'s head"
                )
        previous = (vs, revs)

    doc: Dict[str, object] = {
        "generated_by": GENERATED_BY,
        "source": (
            f"{PACKAGE} wheels from PyPI, >= {min_version}: "
            "mlflow/store/db_migrations/versions/*.py; first_release = first covered release"
        ),
        "releases": releases,
        "revisions": revisions,
        "skipped": {k: skipped[k] for k in sorted(skipped, key=version_key)},
        "notes": notes,
        "anomalies": anomalies,
    }
    return doc, chains, analyses


def head_ranges(releases: Dict[str, Dict[str, object]]) -> List[Tuple[str, str, str, int]]:
    """Consecutive releases sharing a head: (first, last, head, n)."""
    out: List[Tuple[str, str, str, int]] = []
    for vs, e in releases.items():
        head = str(e["head"])
        if out and out[-1][2] == head:
            out[-1] = (out[-1][0], vs, head, out[-1][3] + 1)
        else:
            out.append((vs, vs, head, 1))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: $FS2SQL_CACHE/wheels")
    ap.add_argument("--min-version", default=DEFAULT_MIN_VERSION)
    ap.add_argument("--max-version", default=None, help="ignore releases newer than this")
    ap.add_argument("--jobs", type=int, default=4, help="parallel pip downloads")
    ap.add_argument("--python", default=sys.executable, help="interpreter whose pip is used")
    ap.add_argument("--offline", action="store_true", help="no pip at all: cached wheels only")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if stale")
    ap.add_argument("--show-chain", metavar="VERSION", help="print that release's chain")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    wheel_dir = args.cache_dir or cache_root() / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    min_v = Version(args.min_version)
    max_v = Version(args.max_version) if args.max_version else None

    def wanted(v: Version) -> bool:
        return v >= min_v and (max_v is None or v <= max_v) and not v.is_prerelease

    cached = {v: p for v, p in cached_wheels(wheel_dir).items() if wanted(v)}
    skipped: Dict[str, str] = {}
    probe_file = wheel_dir / "missing-versions.json"
    probes: Dict[str, str] = json.loads(probe_file.read_text()) if probe_file.exists() else {}

    if args.offline:
        listed = sorted(cached)
        print(f"offline: {len(listed)} cached wheels in {wheel_dir}")
    else:
        listed = [v for v in list_index_versions(args.python) if wanted(v)]
        print(f"pip index lists {len(listed)} {PACKAGE} releases in range ({listed[0]} .. "
              f"{listed[-1]}); {len(set(listed) & set(cached))} already cached in {wheel_dir}")
    # Versions missing from the listing (yanked or never published); probed once, then cached.
    for gap in patch_gaps(listed):
        if not wanted(gap) or gap in cached:
            continue
        if str(gap) not in probes and not args.offline:
            probes[str(gap)] = probe_missing(args.python, gap)
        why = probes.get(str(gap), "unknown: run without --offline to probe")
        skipped[str(gap)] = f"not listed by pip index ({why})"
    probe_file.write_text(json.dumps(probes, indent=1, sort_keys=True) + "\n")

    if not args.offline:
        todo = [v for v in listed if v not in cached]
        if todo:
            print(f"downloading {len(todo)} wheels with {args.jobs} parallel pip processes ...")
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                for v, (path, reason) in zip(
                    todo, pool.map(lambda v: download_wheel(args.python, v, wheel_dir), todo)
                ):
                    if path is None:
                        skipped[str(v)] = f"download failed: {reason}"
                        print(f"  {v}: FAILED ({reason})")
                    else:
                        cached[v] = path
    t_dl = time.monotonic() - t0

    doc, chains, _ = build(cached, skipped, min_v)
    releases: Dict[str, Dict[str, object]] = doc["releases"]  # type: ignore[assignment]
    revisions: Dict[str, Dict[str, object]] = doc["revisions"]  # type: ignore[assignment]
    anomalies: List[str] = doc["anomalies"]  # type: ignore[assignment]

    if args.show_chain:
        chain = chains.get(str(Version(args.show_chain)))
        if chain is None:
            print(f"{args.show_chain} is not covered", file=sys.stderr)
            return 1
        for i, rid in enumerate(chain, 1):
            r = revisions[rid]
            print(f"{i:3d} {rid:14s} <- {str(r['down_revision']):30s} {r['description']}")
        return 0

    text = dump_json(doc)
    # Summary
    print(f"\n{len(releases)} releases covered, {len(revisions)} distinct revisions")
    print("head by release range:")
    for first, last, head, n in head_ranges(releases):
        rng = first if first == last else f"{first} .. {last}"
        print(f"  {rng:22s} {head}  ({releases[last]['n_revisions']} revisions, {n} releases)")
    if skipped:
        print("skipped:")
        for v, why in doc["skipped"].items():  # type: ignore[union-attr]
            print(f"  {v}: {why}")
    multi = [v for v, e in releases.items() if e["head"] is None]
    print(f"releases with more than one head: {multi or 'none'}")
    for n in doc["notes"]:  # type: ignore[union-attr]
        print(f"note: {n}")
    if anomalies:
        print("ANOMALIES:")
        for a in anomalies:
            print(f"  {a}")
    else:
        print("anomalies: none")
    print(f"time: {time.monotonic() - t0:.1f}s (listing+downloads {t_dl:.1f}s)")

    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 2 if anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
