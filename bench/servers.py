"""Server targets (PostgreSQL, MariaDB): databases made and dropped with the command-line
clients, MLflow's schema as the server floor's template, the server's CPU time."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from env import MLFLOW_VERSION, log
from measure import COUNT_TABLES

SERVER_NAME = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}
INT32_MAX = 2**31 - 1
SERVER_ENV = {"postgresql": ("FS2SQL_TEST_PG_URL",
                             "postgresql://postgres@127.0.0.1:5432/postgres"),
              "mariadb": ("FS2SQL_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")}
# process names whose CPU time is the server's (summed over the processes / their threads)
SERVER_PROCS = {"postgresql": ("postgres",), "mariadb": ("mariadbd", "mysqld")}
_SCHEMA_CODE = """import os, sys, time, logging
logging.disable(logging.CRITICAL)
t0 = time.perf_counter()
from sqlalchemy import create_engine
from mlflow.store.db.utils import _initialize_tables
t1 = time.perf_counter()
engine = create_engine(os.environ["FS2SQL_BENCH_SA_URL"])
_initialize_tables(engine)
engine.dispose()
print(round(t1 - t0, 3), round(time.perf_counter() - t1, 3))
"""


class ServerError(RuntimeError):
    pass


class Server:
    """One database server, reached through its admin URL (env ``FS2SQL_TEST_PG_URL`` /
    ``FS2SQL_TEST_MYSQL_URL``). Databases are created and dropped with the command-line clients
    (``psql``; ``mariadb``/``mysql``, ``mariadb-dump``/``mysqldump``); the password, if any,
    goes to them through PGPASSWORD / MYSQL_PWD, never on a command line."""

    def __init__(self, kind: str):
        from urllib.parse import unquote, urlsplit

        self.kind = kind
        self.name = SERVER_NAME[kind]
        env, default = SERVER_ENV[kind]
        self.admin_url = os.environ.get(env) or default
        u = urlsplit(self.admin_url)
        self.scheme = "postgresql" if kind == "postgresql" else "mysql"
        self.user = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.host = u.hostname or ("127.0.0.1" if kind == "mariadb" else None)
        self.port = u.port or (5432 if kind == "postgresql" else 3306)
        self.admin_db = unquote(u.path.lstrip("/")) or ("postgres" if kind == "postgresql"
                                                        else "mysql")
        self.query = u.query
        self._netloc = u.netloc  # as given (with the password, for the tools' URLs)
        self.version = None
        self.template = None  # PostgreSQL: template database; MariaDB: dump file
        self.template_db = None
        self.dbs: list[str] = []  # created and not yet dropped

    # -- URLs --------------------------------------------------------------------------------
    def url(self, db: str) -> str:
        """The URL fs2sql and the floor get (the admin URL with another database)."""
        return f"{self.scheme}://{self._netloc}/{db}" + (f"?{self.query}" if self.query else "")

    def sa_url(self, db: str) -> str:
        drv = "postgresql+psycopg" if self.kind == "postgresql" else "mysql+pymysql"
        return f"{drv}://{self._netloc}/{db}" + (f"?{self.query}" if self.query else "")

    def display(self, db: str) -> str:
        url = self.url(db)
        return url.replace(f":{self.password}@", ":***@") if self.password else url

    def env(self) -> dict:
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD" if self.kind == "postgresql" else "MYSQL_PWD"] = self.password
        return env

    # -- client commands ---------------------------------------------------------------------
    def _client(self, db: str | None) -> list[str]:
        if self.kind == "postgresql":
            from urllib.parse import quote

            user = f"{quote(self.user, safe='')}@" if self.user else ""
            host = self.host or ""
            uri = f"postgresql://{user}{host}:{self.port}/{db or self.admin_db}"
            if self.query:
                uri += f"?{self.query}"
            return ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", uri]
        exe = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        cmd = [exe, "--protocol=TCP", "-h", self.host, "-P", str(self.port), "-N", "-B"]
        if self.user:
            cmd += ["-u", self.user]
        return cmd + [db or self.admin_db]

    def sql(self, statement: str, db: str | None = None, stdin=None) -> str:
        cmd = self._client(db)
        if statement:
            cmd += ["-c" if self.kind == "postgresql" else "-e", statement]
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env(),
                           stdin=stdin if stdin is not None else subprocess.DEVNULL)
        if p.returncode != 0:
            raise ServerError(f"{self.name}: {statement[:200] or '(script)'}: "
                              f"{p.stderr.strip()[-1500:]}")
        return p.stdout

    def connect_check(self) -> str:
        version = self.sql("SELECT version()").strip().splitlines()[0]
        self.version = version.split(" on ", 1)[0]  # "PostgreSQL 15.20 (Debian ...)"
        return self.version

    def qname(self, db: str) -> str:
        return f'"{db}"' if self.kind == "postgresql" else f"`{db}`"

    def create(self, db: str, from_template: bool = False) -> None:
        if self.kind == "postgresql":
            tmpl = f" TEMPLATE {self.qname(self.template_db)}" if from_template else ""
            self.sql(f"CREATE DATABASE {self.qname(db)}{tmpl}")
            self.dbs.append(db)
        else:
            self.sql(f"CREATE DATABASE {self.qname(db)} CHARACTER SET utf8mb4")
            self.dbs.append(db)
            if from_template:
                with open(self.template, "rb") as fh:
                    self.sql("", db=db, stdin=fh)

    def drop(self, db: str) -> None:
        force = " WITH (FORCE)" if self.kind == "postgresql" else ""
        self.sql(f"DROP DATABASE IF EXISTS {self.qname(db)}{force}")
        if db in self.dbs:
            self.dbs.remove(db)

    def row_counts(self, db: str) -> dict:
        q = " UNION ALL ".join(f"SELECT '{t}', COUNT(*) FROM {t}" for t in COUNT_TABLES)
        out = {t: None for t in COUNT_TABLES}
        try:
            for line in self.sql(q, db=db).splitlines():
                t, _, n = line.replace("|", "\t").partition("\t")
                out[t.strip()] = int(n)
        except (ServerError, ValueError) as exc:
            log(f"  row counts on {self.name} failed: {exc}")
        return out

    # -- schema template -------------------------------------------------------------------
    def make_template(self, venv: Path, workdir: Path) -> dict:
        """Creates a database, times MLflow's ``_initialize_tables`` on it (in the bench venv),
        and keeps it as the floor's template (MariaDB: as a dump file, loaded per round)."""
        db = self.template_db = f"fs2sql_bench_tmpl_{os.getpid()}"
        self.drop(db)
        self.create(db)
        env = dict(self.env(), FS2SQL_BENCH_SA_URL=self.sa_url(db))
        t0 = time.perf_counter()
        p = subprocess.run([str(venv / "bin" / "python"), "-c", _SCHEMA_CODE], env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise ServerError(f"{self.name}: _initialize_tables failed: {p.stderr[-1500:]}")
        imports_s, init_s = (float(x) for x in p.stdout.split()[-2:])
        if self.kind == "postgresql":
            self.template = db
        else:
            dump = shutil.which("mariadb-dump") or shutil.which("mysqldump") or "mariadb-dump"
            cmd = [dump, "--protocol=TCP", "-h", self.host, "-P", str(self.port),
                   "--skip-comments", "--single-transaction"]
            if self.user:
                cmd += ["-u", self.user]
            self.template = workdir / f"mlflow-{MLFLOW_VERSION}-schema-{self.kind}.sql"
            with open(self.template, "wb") as fh:
                subprocess.run([*cmd, db], stdout=fh, env=self.env(), check=True)
            self.drop(db)
        return {"initialize_tables_s": init_s, "import_s": imports_s,
                "process_s": round(wall, 3)}

    def cleanup(self) -> None:
        for db in list(self.dbs):
            try:
                self.drop(db)
            except ServerError as exc:
                log(f"could not drop {db}: {exc}")

    # -- server-side CPU ---------------------------------------------------------------------
    def cpu_seconds(self) -> float | None:
        """CPU time (user+sys) of the server's processes on this machine, incl. children they
        reaped (PostgreSQL's backends); None when no such process is visible."""
        names = SERVER_PROCS[self.kind]
        procs = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    comm = fh.read().strip()
                if comm not in names:
                    continue
                with open(f"/proc/{pid}/stat") as fh:
                    rest = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(pid)] = (int(rest[1]), [int(x) for x in rest[11:15]])
        if not procs:
            return None
        ticks = 0
        for ppid, (u, st, cu, cs) in procs.values():
            ticks += u + st + (cu + cs if ppid not in procs else 0)
        return ticks / os.sysconf("SC_CLK_TCK")


def renumbered_experiments(mlruns: Path) -> int:
    """Experiments whose IDs do not fit MLflow's 32-bit server columns (fs2sql renumbers them
    and adds the tag fs2sql.source_experiment_id to each)."""
    n = 0
    for base in (mlruns, mlruns / ".trash"):
        if base.is_dir():
            n += sum(1 for e in base.iterdir()
                     if e.is_dir() and e.name.isdigit() and int(e.name) > INT32_MAX)
    return n
