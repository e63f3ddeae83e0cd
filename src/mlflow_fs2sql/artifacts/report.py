"""The artifact lines of the report table's footer (``report.render`` calls this)."""

from __future__ import annotations

from typing import Dict, List


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _counts(counts: Dict[str, int]) -> str:
    return ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items())) or "none"


def artifact_lines(a: dict, dry_run: bool) -> List[str]:
    lines = []
    where = a.get("destination")
    if where:
        lines.append(f"Artifacts: {'would copy' if dry_run else 'to'} {where} "
                     f"({a.get('uris')} URIs)")
    for m in a.get("root_maps") or ():
        lines.append(f"Artifact root map: {m}")
    lines.append(f"Artifact URIs rewritten: {_counts(a.get('rewritten') or {})}; "
                 "left as they were: "
                 f"{_counts({k + ':': n for k, n in (a.get('kept') or {}).items()})}")
    lines.append(f"Artifact files: {a.get('files', 0):,}, {size(a.get('bytes', 0))}")
    for example in (a.get("examples") or [])[:3] if dry_run else ():
        lines.append(f"  e.g. {example}")
    copy = a.get("copy")
    if copy:
        rate = (f", {copy.get('files_per_s', 0):,.0f} files/s, {copy.get('mb_per_s', 0):,.1f} "
                "MB/s" if copy.get("files_per_s") is not None else "")
        lines.append(f"Copied: {copy['copied_files']:,} files, {size(copy['copied_bytes'])} in "
                     f"{copy['elapsed_s']:.2f} s{rate}; already there: "
                     f"{copy['present_files']:,} files, {size(copy['present_bytes'])}"
                     + (f"; {copy['retries']} retries" if copy.get("retries") else ""))
    check = a.get("check")
    if check:
        rate = (f", {check.get('mb_per_s', 0):,.1f} MB/s" if check.get("mb_per_s") is not None
                else "")
        lines.append(f"Artifacts verified: {check['files']:,} files, {size(check['bytes'])} "
                     f"(size and MD5) in {check['elapsed_s']:.2f} s{rate}"
                     + (f"; {check['problem_count']} problems" if check["problem_count"] else ""))
    return lines
