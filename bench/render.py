"""Results to text: the summary per store and tool, the table (plain or Markdown), the notes
under it, the sync and fleet sections, and the JSON/Markdown files."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from env import MLFLOW_VERSION, log
from servers import SERVER_NAME
from stores import size_label
from tools import CACHES, TOOLS, split_variant, tool_base, tool_label, tool_target, variant


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_s(x):
    return "-" if x is None else (f"{x:.2f} s" if x < 10 else f"{x:.1f} s")


def fmt_range(t):
    lo, hi = t.get("min_wall_s"), t.get("max_wall_s")
    if lo is None or hi is None or t.get("ok_runs", 0) < 2:
        return ""
    f = (lambda x: f"{x:.2f}") if hi < 10 else (lambda x: f"{x:.0f}")
    return f" ({f(lo)}-{f(hi)})"


def fmt_mb(x):
    return "-" if x is None else f"{x:.0f} MB"


def fmt_ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}x"


def ratio_pairs(key: str) -> dict:
    """name -> (numerator, denominator) run keys of the ratios shown for ``key``'s row (a tool
    with its page-cache mode, ``tools.variant``); tools are compared within one mode."""
    tool, cache = split_variant(key)
    v = lambda t: variant(t, cache)  # noqa: E731
    base, target = tool_base(tool), tool_target(tool)
    out = {}
    if tool == "fs2sql":
        out = {"upstream": (key, v("upstream")), "floor": (key, v("floor"))}
    elif base == "fs2sql":
        out = {"floor": (key, v(f"floor@{target}")), "sqlite": (key, v("fs2sql"))}
    elif base == "verify":
        out = {"migrate": (key, v("fs2sql" + tool[len("verify"):]))}
    if cache != "warm":
        out["warm"] = (key, tool)
    return out


def summarize(results: dict) -> list[dict]:
    rows = []
    servers = any("@" in t for t in results.get("tools", {}))
    for size in results["sizes"]:
        by_key = {}
        for key, runs in size["runs"].items():
            ok = [r for r in runs if r["rc"] == 0]
            srv = [r["server_cpu_s"] for r in ok if r.get("server_cpu_s") is not None]
            by_key[key] = {
                "wall": median([r["wall_s"] for r in ok]),
                "cpu": median([r["user_s"] + r["sys_s"] for r in ok]),
                "server_cpu": median(srv),
                "min": min([r["wall_s"] for r in ok], default=None),
                "max": max([r["wall_s"] for r in ok], default=None),
                "rss": max([r["peak_rss_mb"] for r in ok], default=None),
                "n": len(ok), "failed": len(runs) - len(ok),
            }
        for key in ordered_keys(size):
            t = by_key[key]
            tool, cache = split_variant(key)
            rows.append({
                "tool": tool, "cache": cache, "label": tool_label(tool, servers),
                "target": tool_target(tool), "runs": size["counts"]["runs"],
                "points": size["counts"]["metrics"], "median_wall_s": t["wall"],
                "median_cpu_s": round(t["cpu"], 2) if t["cpu"] is not None else None,
                "median_server_cpu_s": (round(t["server_cpu"], 2)
                                        if t["server_cpu"] is not None else None),
                "min_wall_s": t["min"], "max_wall_s": t["max"],
                "peak_rss_mb": t["rss"], "ok_runs": t["n"], "failed_runs": t["failed"],
            })
            size.setdefault("summary", {})[key] = rows[-1]
            for num, den in ratio_pairs(key).values():
                a, b = by_key.get(num), by_key.get(den)
                if a and b and a["wall"] is not None and b["wall"]:
                    size.setdefault("ratios", {})[f"{num}/{den}"] = {
                        "wall": round(a["wall"] / b["wall"], 3),
                        "peak_rss": round(a["rss"] / b["rss"], 3) if b["rss"] else None}
    return rows


def ordered_keys(size: dict) -> list:
    """Run keys with results, per target: each tool warm, then cold."""
    return [k for t in TOOLS for c in CACHES for k in [variant(t, c)]
            if size["runs"].get(k)]


def row_ratio(summary: dict, pairs: dict, name: str, key: str) -> str:
    """One ratio cell: "" when the row has no such ratio, "-" when a side is missing."""
    if name not in pairs:
        return ""
    a, b = (summary.get(x) for x in pairs[name])
    return fmt_ratio(a and a[key], b and b[key])


def table_lines(results: dict, markdown: bool) -> list[str]:
    hdr = ["tool", "cache", "store (runs / points / files)", "median wall (min-max)", "peak RSS",
           "CPU (user+sys)", "server CPU", "wall vs upstream", "wall vs floor",
           "wall vs fs2sql→SQLite", "verify / migrate", "cold / warm", "RSS vs upstream",
           "RSS vs floor"]
    body = []
    for size in results["sizes"]:
        s = size.get("summary", {})
        c = size["counts"]
        for key in ordered_keys(size):
            t = s.get(key)
            if not t:
                continue
            pairs = ratio_pairs(key)
            na = "@" in key and tool_base(key) == "fs2sql"  # upstream writes only SQLite
            fail = f" ({t['failed_runs']} failed)" if t["failed_runs"] else ""
            body.append([
                t["label"] + fail, t["cache"],
                f"{c['runs']:,} / {c['metrics']:,} / {c['files']:,}",
                fmt_s(t["median_wall_s"]) + fmt_range(t), fmt_mb(t["peak_rss_mb"]),
                fmt_s(t["median_cpu_s"]),
                fmt_s(t.get("median_server_cpu_s")) if "@" in key else "",
                "n/a" if na else row_ratio(s, pairs, "upstream", "median_wall_s"),
                row_ratio(s, pairs, "floor", "median_wall_s"),
                row_ratio(s, pairs, "sqlite", "median_wall_s"),
                row_ratio(s, pairs, "migrate", "median_wall_s"),
                row_ratio(s, pairs, "warm", "median_wall_s"),
                "n/a" if na else row_ratio(s, pairs, "upstream", "peak_rss_mb"),
                row_ratio(s, pairs, "floor", "peak_rss_mb"),
            ])
    # drop the columns (from "server CPU" on) that nothing filled: fs2sql or servers skipped
    keep = [i for i in range(len(hdr)) if i < 6 or any(r[i] for r in body)]
    hdr, body = [hdr[i] for i in keep], [[r[i] for i in keep] for r in body]
    if markdown:
        lines = ["| " + " | ".join(hdr) + " |", "|" + "|".join(
            "---" if i < 3 else "---:" for i in range(len(hdr))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return lines
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(hdr, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in body]
    return lines


def cli_lines(results: dict, markdown: bool) -> list[str]:
    c = results.get("cli")
    if not c:
        return []
    parts = [f"`fs2sql {k}`: {fmt_s(v['median_wall_s'])} (median of {v['n']})"
             if markdown else f"fs2sql {k}: {fmt_s(v['median_wall_s'])} (median of {v['n']})"
             for k, v in c.items()]
    return ["; ".join(parts)]


def extra_lines(results: dict, markdown: bool) -> list[str]:
    out = []
    for size in results["sizes"]:
        g = size["generator"]
        c = size["counts"]
        out.append(f"Store {size_label(size)}: {c['runs']:,} runs, {c['metrics']:,} metric "
                   f"points ({c['nan_points']:,} NaN), {c['params']:,} params, {c['tags']:,} tags, "
                   f"{c['experiments']} experiments, {c['registered_models']} registered models / "
                   f"{c['model_versions']} versions, {c['files']:,} files, "
                   f"{size['disk_mb']:.0f} MB on disk; generated in {g['seconds']:.1f} s "
                   f"({g['points_per_s'] / 1e3:.0f} k points/s){'' if g['now'] else ' (cached)'}.")
        for pair, res in size.get("content_check", {}).items():
            out.append(f"  {size_label(size)} content {pair}: "
                       f"{'identical (12 tables, all columns)' if res == 'identical' else res}")
        for tool, cnt in size.get("row_check", {}).items():
            if cnt.get("mismatch"):
                out.append(f"  {size_label(size)} {tool}: row counts [db, expected] "
                           f"differ: {cnt['mismatch']}")
            elif "@" in tool:
                extra = (f" (experiment_tags: store + {cnt['renumber_tags']} "
                         "fs2sql.source_experiment_id tags of the renumbered experiments)"
                         if cnt.get("renumber_tags") else "")
                out.append(f"  {size_label(size)} {tool}: row counts of the 12 tables "
                           f"match the store{extra}.")
    if results.get("tools"):
        out += rss_lines(results) + cache_lines(results)
    if results.get("schema_init_s"):
        out.append(f"Creating the empty MLflow schema (_initialize_tables) took "
                   f"{results['schema_init_s']:.1f} s (done once for the floor, which copies it; "
                   f"upstream pays it on every run).")
    out += server_lines(results)
    return out


def rss_lines(results: dict) -> list[str]:
    """fs2sql's peak RSS against the store's size, per target (flat memory: it should not
    grow with the store)."""
    out = []
    for tool in TOOLS:
        if tool_base(tool) not in ("fs2sql", "verify"):
            continue
        cells = []
        for size in results["sizes"]:
            t = size.get("summary", {}).get(tool)
            if t and t["peak_rss_mb"] is not None:
                c = size["counts"]
                cells.append(f"{c['metrics'] / 1e6:g}M points / {c['runs']:,} runs / "
                             f"{c['files']:,} files: {fmt_mb(t['peak_rss_mb'])}")
        if len(cells) > 1:
            out.append(f"Peak RSS of {tool_label(tool, True)} by store size: "
                       + "; ".join(cells) + ".")
    return out


def cache_lines(results: dict) -> list[str]:
    out = []
    threads = results.get("io_threads")
    out.append(f"fs2sql reads files with --io-threads {threads or '8 (its default)'}; the "
               "floor with 1 thread on a warm cache and "
               f"{threads or 8} on a cold one (its best on each).")
    if results.get("cold_unavailable"):
        out.append(f"Cold-cache mode unavailable here ({results['cold_unavailable']}): warm "
                   "page cache only.")
    elif "cold" in results.get("caches", ()):
        out.append("cold: before each such run the bench wrote dirty pages out and dropped the "
                   "page cache, dentries and inodes (sync; echo 3 > /proc/sys/vm/drop_caches), "
                   "so every file of the store (and, for verify, the database) came from the "
                   "disk. warm: the previous run had just read the store.")
    if results.get("upstream_rounds", results["rounds"]) < results["rounds"]:
        out.append(f"upstream ran in the first {results['upstream_rounds']} round(s) only "
                   "(--upstream-rounds).")
    return out


def server_lines(results: dict) -> list[str]:
    servers = results.get("servers") or {}
    if not servers:
        return []
    out = []
    for kind, srv in servers.items():
        if srv.get("error"):
            out.append(f"{SERVER_NAME[kind]} ({srv.get('url')}): not measured: {srv['error']}")
            continue
        sc = srv.get("schema") or {}
        if sc:
            out.append(
                f"{srv.get('version') or SERVER_NAME[kind]} ({srv.get('url')}): MLflow "
                f"{MLFLOW_VERSION}'s _initialize_tables on an empty database took "
                f"{sc['initialize_tables_s']:.1f} s ({sc['process_s']:.1f} s for the whole "
                f"process incl. {sc['import_s']:.1f} s of imports). fs2sql creates the schema "
                "inside every server run (timed), by replaying its recording of those migrations "
                "(made by an untimed warm-up run); the floor starts from a copy of that schema "
                "made before its timer ("
                + ("CREATE DATABASE ... TEMPLATE" if kind == "postgresql" else
                   "a mariadb-dump of it loaded into a fresh database") + ").")
    if not any("@" in t for t in results.get("tools", {})):
        return out
    out.append("Server rows: upstream `mlflow migrate-filestore` writes only SQLite, so there is "
               "no upstream row for PostgreSQL/MariaDB (n/a). fs2sql runs with "
               "`--experiment-ids renumber` (the store's 18-digit experiment IDs do not fit "
               "MLflow's 32-bit server columns: experiment 0 keeps its ID, the others get 1, 2, "
               "... in creation order and an extra tag with the old ID); the floor maps the IDs "
               "the same way, without the tag. Each run gets a fresh database (created before, "
               "dropped after the timer).")
    out.append("Server floor (bench/floor_server.py): floor.py's read + parse, rows loaded in one "
               "transaction -- PostgreSQL: psycopg 3 COPY FROM STDIN per table (binary for "
               "metrics/latest_metrics, text otherwise); MariaDB: PyMySQL executemany of INSERT "
               "(multi-row statements), strict sql_mode -- with foreign-key checks off during "
               "the load (session_replication_role=replica / foreign_key_checks=0; the "
               "constraints stay in the schema) and the two secondary indexes of metrics "
               "dropped and re-created after the load, as floor.py does.")
    out.append("Peak RSS and CPU (user+sys) are the client process tree's; the server's own work "
               "is in 'server CPU': the CPU time of the server's processes on this machine "
               "during the run (incl. WAL/background writers and anything other clients made "
               "the server do meanwhile).")
    return out


SYNC_STEPS = ("migrate", "first sync", "no-change sync", "+1% runs")


def fmt_goal(row: dict) -> tuple:
    """(goal, met) cells of a sync row: the goal as a share of the migration, and how it went."""
    goal = row.get("goal")
    if goal is None:
        return "", ""
    text = f"≈ migrate (≤ {goal:.0%})" if row["label"] == "first sync" else f"≤ {goal:.0%}"
    over = row["vs_migrate"] - goal
    if row["met"]:
        return text, "yes"
    return text, f"no: {over * 100:+.1f} points ({row['vs_migrate'] / goal:.2f}x the goal)"


def target_name(kind: str) -> str:
    return "SQLite" if kind == "sqlite" else SERVER_NAME[kind]


def stall_line(name: str, kind: str, s: dict) -> str:
    ms = lambda x: "-" if x is None else f"{x * 1000:.0f} ms"  # noqa: E731
    line = (f"stall, {name}: longest server call {ms(s['max_s'])} (p99 {ms(s['p99_s'])}, median "
            f"{ms(s.get('p50_s'))}), {s['calls']:,} calls, {s['errors']} errors, sync "
            f"{s['sync_s']:.1f} s")
    if s.get("first_error"):
        line += f" (first error: {s['first_error'][:120]})"
    if s.get("goal_max_s") is not None:
        line += (f"; goal < {s['goal_max_s'] * 1000:.0f} ms and no errors: "
                 + ("met" if s.get("met") else "MISSED"))
    elif kind == "sqlite":
        line += "; SQLite: the write transaction holds the database-wide lock (reported, no goal)"
    return line


def sync_lines(results: dict) -> list[str]:
    """The sync section (per store and target: a table of the steps against the migration and
    the stall lines) and the fleet line, in Markdown."""
    out = []
    sync = results.get("sync")
    if sync:
        out += ["#### fs2sql sync", "",
                "Each step is a fresh `fs2sql ... -q` process (median of the rounds; "
                "+1% runs: each round adds 1% more runs, then syncs). Migrate and first sync "
                f"write MLflow {MLFLOW_VERSION}'s schema (`--mlflow-version`); servers with "
                "`--experiment-ids renumber`. Stall: MLflow's SqlAlchemyStore logs one metric "
                "point per call (10 ms apart) to a run it created itself, never synced, while "
                "the sync runs.", ""]
    for entry in (sync or {}).get("sizes", []):
        for kind, res in entry["targets"].items():
            out += [f"Store {entry['label']} → {target_name(kind)}:", ""]
            if res.get("error"):
                out += [f"- FAILED: {' '.join(res['error'].split())[-500:]}", ""]
                continue
            out += ["| step | median wall (min-max) | peak RSS | CPU (user+sys) | vs migrate "
                    "| goal | met |", "|---|---:|---:|---:|---:|---|---|"]
            for step in SYNC_STEPS:
                row = res["rows"].get(step)
                if not row:
                    continue
                goal, met = fmt_goal(row)
                label = (f"+1% runs ({res.get('added_runs')} per round)"
                         if step == "+1% runs" else step)
                wall = fmt_s(row["median_wall_s"]) + fmt_range({**row, "ok_runs": row["n"]})
                vs = f"{row['vs_migrate']:.1%}" if "vs_migrate" in row else ""
                out.append(f"| {label} | {wall} | {fmt_mb(row['peak_rss_mb'])} | "
                           f"{fmt_s(row['median_cpu_s'])} | {vs} | {goal} | {met} |")
            out.append("")
            out += [f"- {stall_line(name, kind, s)}" for name, s in res["stall"].items()]
            out.append("")
    f = results.get("fleet")
    if f:
        out += ["#### fleet (PostgreSQL)", ""]
        if f.get("error"):
            out.append(f"- FAILED: {' '.join(f['error'].split())[-500:]}")
        else:
            st = f["store"]
            out.append(
                f"No-change sync of one store ({st['runs']} runs / {st['points']:,} points) with "
                f"1 store in the database: {fmt_s(f['one']['median_wall_s'])}; with "
                f"{f['stores']} stores: {fmt_s(f['many']['median_wall_s'])} (ratio "
                f"{f['ratio']:.2f}; goal ≤ {f['goal']:.1f}: {'met' if f['met'] else 'MISSED'}). "
                f"Syncing the other {f['stores'] - 1} stores in took {f['fill_s']:.0f} s.")
        out.append("")
    return out


def write_markdown(results: dict, path: Path) -> None:
    m = results["machine"]
    lines = [
        f"### fs2sql benchmark ({results['date']})"
        + ("" if results.get("complete", True) else " — PARTIAL (still running or interrupted)"),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['os']}; "
        f"Python {m['python_bench_driver']} (driver), {results['venv_python']} (MLflow "
        f"{MLFLOW_VERSION} venv: upstream and floor); SQLite {m['sqlite']}; load average at "
        f"start {m['loadavg_start'][0]:.2f}.", "",
        f"{results['rounds']} round(s) per size"
        + (", tools alternating" if results.get("tools") else "")
        + "; median wall time, peak RSS = max over runs of the process tree's peak resident "
        "memory; CPU = median user+sys time of the process tree (less sensitive to other load "
        f"on the machine than wall time). Load average at the end: "
        f"{m.get('loadavg_end', [0])[0]:.2f}.", "",
    ]
    if results.get("servers"):
        lines += ["Servers: " + "; ".join(
            (v.get("version") or SERVER_NAME[k]) + (" (not reached)" if v.get("error") else "")
            for k, v in results["servers"].items()) + ".", ""]
    if results.get("tools"):
        lines += table_lines(results, markdown=True) + [""]
    lines += [f"- {x}" for x in cli_lines(results, True) + extra_lines(results, True)]
    lines += [""] + sync_lines(results)
    path.write_text("\n".join(lines) + "\n")


def write_reports(results: dict, a, final: bool) -> None:
    """Table to stdout (final only); JSON/Markdown files (also partially, after every run)."""
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["complete"] = final
    summarize(results)
    if final:
        print()
        if results.get("tools"):
            print("\n".join(table_lines(results, markdown=False)))
        for line in cli_lines(results, False) + extra_lines(results, False):
            print(line)
        if results.get("sync") or results.get("fleet"):
            print()
            print("\n".join(sync_lines(results)))
    if a.json:
        tmp = a.json.with_name(a.json.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, a.json)
    if a.markdown:
        write_markdown(results, a.markdown)
    if final:
        for what, path in (("JSON", a.json), ("Markdown", a.markdown)):
            if path:
                log(f"{what} written to {path}")
