"""The benchmark's server floor: bench/floor.py's walk, rows loaded into PostgreSQL or MariaDB.

Same "read + parse every file" as floor.py (its ``Floor`` class and walk, unchanged), the same
rows, loaded with the plain fastest path of each server's usual Python driver into a database
that ALREADY holds MLflow's schema (made by bench/run.py before the timer starts, from a
template made with MLflow's own ``_initialize_tables``):

* PostgreSQL (psycopg 3): one transaction, one ``COPY table (cols) FROM STDIN`` per table and
  flush (``FORMAT BINARY`` for ``metrics``/``latest_metrics``, text for the rest; ``--text``:
  text everywhere);
* MariaDB/MySQL (PyMySQL): one transaction, ``cursor.executemany`` of ``INSERT ... VALUES``
  (PyMySQL folds the rows into multi-row statements of up to ~1 MB), strict ``sql_mode``
  (``STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION``, as fs2sql loads).

As in floor.py: no foreign-key checks during the load (PostgreSQL ``session_replication_role =
replica``, which needs a superuser -- without one the checks stay on and the JSON says so;
MariaDB ``foreign_key_checks = 0``); the constraints themselves stay in the schema. The two
secondary indexes of ``metrics`` are dropped before the load and re-created with the same
definition afterwards (PostgreSQL: inside the transaction; MariaDB: DDL commits implicitly, so
before and after it). ``--fk-checks`` / ``--keep-indexes`` turn those tricks off.

Experiment IDs: MLflow's server schema has 32-bit experiment IDs, the bench store 18-digit
ones; those that do not fit get new IDs after the largest one that does, in creation order
(creation time, then old ID) -- the rule of ``fs2sql migrate --experiment-ids renumber``, without
its extra experiment tag. Workspace columns are left to the schema's default ('default').

Usage: ``python bench/floor_server.py MLRUNS URL`` with ``postgresql://user@host:port/db`` or
``mysql://user@host:port/db`` (password in the URL, PGPASSWORD/~/.pgpass or MYSQL_PWD).
Prints one JSON line with row counts and phase timings. Needs PyYAML, psycopg 3 or PyMySQL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from urllib.parse import unquote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floor as base  # noqa: E402  (bench/floor.py, next to this file)

INT32_MAX = 2**31 - 1
LOAD_SQL_MODE = "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION"
BINARY_TABLES = ("metrics", "latest_metrics")


def table_columns() -> dict:
    """table -> columns bound per row, from floor.py's INSERT statements (columns given as a
    literal there, i.e. ``workspace = 'default'``, are left to the schema's default)."""
    out = {}
    for table, sql in base.SQL.items():
        m = re.fullmatch(r"INSERT INTO (\w+) \(([^)]*)\) VALUES \((.*)\)", sql)
        cols = [c.strip() for c in m.group(2).split(",")]
        vals = [v.strip() for v in m.group(3).split(",")]
        assert all(v in ("?", "'default'") for v in vals), sql
        out[table] = [c for c, v in zip(cols, vals) if v == "?"]
    return out


COLUMNS = table_columns()


def experiment_id_map(mlruns: str) -> dict:
    """store ID (int) -> database ID: IDs that fit 32 bits are kept; the others get new IDs
    after the largest kept one, in creation order (creation time, then old ID)."""
    exps = []
    for path, name, _ in base.experiment_dirs(mlruns):
        meta = base.read_yaml(os.path.join(path, "meta.yaml")) or {}
        ct = meta.get("creation_time")
        exps.append((int(name), ct if isinstance(ct, int) else None))
    kept = [i for i, _ in exps if i <= INT32_MAX]
    nxt = max(kept, default=0) + 1 if kept else 1
    out = {i: i for i in kept}
    for i, _ in sorted(((i, ct) for i, ct in exps if i > INT32_MAX),
                       key=lambda x: (x[1] is None, x[1] or 0, x[0])):
        out[i] = nxt
        nxt += 1
    return out


class ServerFloor(base.Floor):
    """floor.py's walk and rows; ``flush`` hands each table's buffered rows to ``write``."""

    def __init__(self, write, id_map: dict):
        super().__init__(conn=None)
        self.write = write
        self.id_map = id_map

    def experiment_id(self, exp_id: str) -> int:
        return self.id_map[int(exp_id)]

    def flush(self, force: bool = False) -> None:
        if not force and self.pending < base.FLUSH_ROWS:
            return
        for table, rows in self.buf.items():  # dict order = FK-safe order
            if rows:
                self.write(table, rows)
                self.counts[table] += len(rows)
                rows.clear()
        self.pending = 0


# ---------------------------------------------------------------------------------------------
def load_postgresql(url: str, mlruns: str, a, info: dict) -> ServerFloor:
    import psycopg

    t = time.perf_counter()
    conn = psycopg.connect(re.sub(r"^[a-z]+(\+\w+)?://", "postgresql://", url),
                           application_name="fs2sql-bench-floor")
    info["connect_s"] = round(time.perf_counter() - t, 3)
    cur = conn.cursor()  # psycopg 3 opens the transaction with the first statement
    if not a.fk_checks:
        try:
            cur.execute("SAVEPOINT fk")
            cur.execute("SET LOCAL session_replication_role = replica")
            cur.execute("RELEASE SAVEPOINT fk")
            info["fk_checks"] = False
        except psycopg.Error as exc:  # not a superuser: the checks stay on
            cur.execute("ROLLBACK TO SAVEPOINT fk")
            info["fk_checks"] = f"on (session_replication_role refused: {exc})"
    else:
        info["fk_checks"] = True
    idx = []
    if not a.keep_indexes:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = "
                    "current_schema() AND tablename = 'metrics' AND indexname NOT IN "
                    "(SELECT conname FROM pg_constraint WHERE conrelid = 'metrics'::regclass)")
        idx = cur.fetchall()
        for name, _ in idx:
            cur.execute(f'DROP INDEX "{name}"')
    info["indexes_rebuilt"] = [n for n, _ in idx]
    types = {}
    if not a.text:
        for table in BINARY_TABLES:
            cur.execute("SELECT a.attname::text, format_type(a.atttypid, NULL) FROM pg_attribute a "
                        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                        (table,))
            found = dict(cur.fetchall())
            types[table] = [found[c] for c in COLUMNS[table]]
    info["binary_copy"] = sorted(types)

    def write(table: str, rows) -> None:
        cols = ", ".join(f'"{c}"' for c in COLUMNS[table])
        fmt = " (FORMAT BINARY)" if table in types else ""
        with cur.copy(f'COPY "{table}" ({cols}) FROM STDIN{fmt}') as copy:
            if table in types:
                copy.set_types(types[table])
            w = copy.write_row
            for row in rows:
                w(row)

    f = walk_into(write, mlruns, info, "walk_and_copy_s")
    t = time.perf_counter()
    for _, definition in idx:
        cur.execute(definition)
    info["index_rebuild_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    conn.commit()
    conn.close()
    info["commit_s"] = round(time.perf_counter() - t, 3)
    return f


def walk_into(write, mlruns: str, info: dict, key: str) -> ServerFloor:
    """floor.py's walk of the store with every batch handed to ``write``; timed into info."""
    f = ServerFloor(write, experiment_id_map(mlruns))
    t = time.perf_counter()
    base.walk(f, mlruns)
    f.flush(force=True)
    info[key] = round(time.perf_counter() - t, 3)
    return f


def load_mysql(url: str, mlruns: str, a, info: dict) -> ServerFloor:
    import pymysql

    u = urlsplit(url)
    password = unquote(u.password) if u.password else os.environ.get("MYSQL_PWD")
    t = time.perf_counter()
    conn = pymysql.connect(host=u.hostname or "localhost", port=u.port or 3306,
                           user=unquote(u.username or "root"), password=password or "",
                           database=unquote(u.path.lstrip("/")), charset="utf8mb4",
                           autocommit=False)
    info["connect_s"] = round(time.perf_counter() - t, 3)
    cur = conn.cursor()
    cur.execute(f"SET SESSION sql_mode = '{LOAD_SQL_MODE}'")
    cur.execute(f"SET SESSION foreign_key_checks = {1 if a.fk_checks else 0}")
    info["fk_checks"] = bool(a.fk_checks)
    idx = []
    if not a.keep_indexes:
        cur.execute("SELECT INDEX_NAME, GROUP_CONCAT(CONCAT('`', COLUMN_NAME, '`') "
                    "ORDER BY SEQ_IN_INDEX), MAX(NON_UNIQUE) FROM information_schema.STATISTICS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'metrics' "
                    "AND INDEX_NAME <> 'PRIMARY' GROUP BY INDEX_NAME ORDER BY INDEX_NAME")
        idx = [(n, cols, nu) for n, cols, nu in cur.fetchall()]
        if idx:  # implicit commit (DDL), before the load's transaction
            cur.execute("ALTER TABLE metrics " + ", ".join(f"DROP INDEX `{n}`" for n, _, _ in idx))
    info["indexes_rebuilt"] = [n for n, _, _ in idx]
    cur.execute("START TRANSACTION")

    def write(table: str, rows) -> None:
        cols = COLUMNS[table]
        cur.executemany(f"INSERT INTO `{table}` ({', '.join(f'`{c}`' for c in cols)}) "
                        f"VALUES ({', '.join(['%s'] * len(cols))})", rows)

    f = walk_into(write, mlruns, info, "walk_and_insert_s")
    t = time.perf_counter()
    conn.commit()
    info["commit_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    if idx:
        cur.execute("ALTER TABLE metrics " + ", ".join(
            f"ADD {'INDEX' if nu else 'UNIQUE INDEX'} `{n}` ({cols})" for n, cols, nu in idx))
    info["index_rebuild_s"] = round(time.perf_counter() - t, 3)
    conn.close()
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mlruns")
    ap.add_argument("url", help="postgresql://user@host:port/db or mysql://user@host:port/db")
    ap.add_argument("--text", action="store_true", help="PostgreSQL: text COPY for every table")
    ap.add_argument("--fk-checks", action="store_true", help="keep foreign-key checks on")
    ap.add_argument("--keep-indexes", action="store_true",
                    help="keep the secondary indexes of metrics during the load")
    ap.add_argument("--io-threads", type=int, default=base.IO_THREADS,
                    help="threads reading files (floor.py's)")
    a = ap.parse_args(argv)
    base.set_io_threads(a.io_threads)
    t0 = time.perf_counter()
    scheme = a.url.split("://", 1)[0].split("+", 1)[0].lower()
    info: dict = {}
    if scheme in ("postgresql", "postgres"):
        f = load_postgresql(a.url, a.mlruns, a, info)
    elif scheme in ("mysql", "mariadb"):
        f = load_mysql(a.url, a.mlruns, a, info)
    else:
        sys.exit(f"floor_server: unsupported URL scheme {scheme!r}")
    print(json.dumps({"rows": f.counts, "seconds": round(time.perf_counter() - t0, 3), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
