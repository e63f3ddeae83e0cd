"""fs2sql benchmark: fs2sql vs. upstream ``mlflow migrate-filestore`` (3.17.2) vs. a floor, on
SQLite and on PostgreSQL / MariaDB servers.

    python bench/run.py [--sizes 0.4M,1.6M] [--rounds 3] [--fs2sql CMD] [--skip NAME[,NAME]]
                        [--targets sqlite,postgresql,mariadb] [--json FILE] [--markdown FILE] ...

Steps (details in bench/README.md):
1. builds (once) a virtualenv with full ``mlflow==3.17.2``, psycopg and PyMySQL in
   ``${FS2SQL_CACHE:-~/.cache/fs2sql-dev}/venvs/bench-mlflow-3.17.2`` and an empty MLflow schema
   (``bench-schema/mlflow-3.17.2.db``) for the floor;
2. per server target: times MLflow's ``_initialize_tables`` on a new database and keeps that
   schema as the server floor's template;
3. runs bench/check_generator.py in that venv (a small generated store read back through
   MLflow's FileStore) unless ``--no-check``;
4. generates (or reuses from ``bench-stores/<params>/mlruns``) one store per size;
5. per size, ``--rounds`` rounds of every tool (alternating), each into a fresh output file or
   server database, measuring wall time, CPU and peak RSS of the process tree (and the CPU
   time of the server's processes);
6. ``fs2sql --help`` / ``--version`` wall time (median of 5);
7. prints a table, optionally writes JSON and Markdown.

Only the standard library is needed here (plus the ``psql`` / ``mariadb`` clients for server
targets); generator, check and floors run in the bench venv.
It is a benchmark, not a test: nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

MLFLOW_VERSION = "3.17.2"
BENCH_DIR = Path(__file__).resolve().parent
MARKER = ".fs2sql-bench-complete"
# Tool keys: "fs2sql", "upstream", "floor" write SQLite; "<tool>@<server>" a server database.
TARGETS = ("sqlite", "postgresql", "mariadb")
TARGET_ALIASES = {"pg": "postgresql", "postgres": "postgresql", "mysql": "mariadb",
                  "maria": "mariadb"}
SERVER_NAME = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}
TOOLS = ("fs2sql", "upstream", "floor", "fs2sql@postgresql", "floor@postgresql",
         "fs2sql@mariadb", "floor@mariadb")
BASE_TOOLS = ("fs2sql", "upstream", "floor")
TOOL_ALIASES = {"a": "fs2sql", "b": "upstream", "c": "floor", "mlflow": "upstream"}
TOOL_LABEL = {
    "fs2sql": "fs2sql migrate",
    "upstream": f"mlflow {MLFLOW_VERSION} migrate-filestore",
    "floor": "floor (bench/floor.py)",
    "fs2sql@postgresql": "fs2sql migrate → PostgreSQL",
    "floor@postgresql": "floor (COPY) → PostgreSQL",
    "fs2sql@mariadb": "fs2sql migrate → MariaDB",
    "floor@mariadb": "floor (executemany) → MariaDB",
}
INT32_MAX = 2**31 - 1


def tool_base(tool: str) -> str:
    return tool.split("@", 1)[0]


def tool_target(tool: str) -> str:
    return tool.split("@", 1)[1] if "@" in tool else "sqlite"


def tool_label(tool: str, servers: bool) -> str:
    """SQLite rows say "→ SQLite" when server rows are in the same table."""
    label = TOOL_LABEL[tool]
    return label + " → SQLite" if servers and "@" not in tool else label


GNU_TIME = "/usr/bin/time"
# Row counts compared with the generator's manifest after each tool's first run (not timed).
COUNT_TABLES = ("experiments", "experiment_tags", "runs", "params", "tags", "metrics",
                "latest_metrics", "registered_models", "registered_model_tags", "model_versions",
                "model_version_tags", "registered_model_aliases")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# cache, venv, schema template
# ---------------------------------------------------------------------------------------------
def cache_root() -> Path:
    env = os.environ.get("FS2SQL_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "fs2sql-dev"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def find_base_python(override: str | None) -> str:
    if override:
        return override
    env = os.environ.get("FS2SQL_VENV_PYTHON")
    if env:
        return env
    pyenv_root = Path(os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv")))
    cands = sorted(pyenv_root.glob("versions/3.11.*/bin/python"))
    if cands:
        return str(cands[-1])
    for name in ("python3.11", "python3.12", "python3.10"):
        found = shutil.which(name)
        if found:
            return found
    return sys.executable


# What the bench venv holds; the marker file records it, so a cached venv made before a package
# was added here is completed (pip install into it) instead of silently lacking it.
VENV_PACKAGES = (f"mlflow=={MLFLOW_VERSION}", "psycopg[binary]", "pymysql")


def _venv_install(py: Path, packages, env: dict) -> None:
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "pip", "install", "-q", "-p", str(py), *packages], check=True,
                       env=env)
    else:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True, env=env)


def ensure_bench_venv(base_python: str | None) -> Path:
    """Full mlflow==3.17.2 venv (+ psycopg, PyMySQL for the server floor) at
    <cache>/venvs/bench-mlflow-3.17.2, built in place under a lock. A marker file written last
    lists the installed requirements: without it (half-built) the venv is rebuilt, with an older
    list (no drivers) the missing packages are added."""
    venv = cache_root() / "venvs" / f"bench-mlflow-{MLFLOW_VERSION}"
    py = venv / "bin" / "python"
    want = "\n".join(VENV_PACKAGES) + "\n"

    def have() -> str | None:
        try:
            return (venv / MARKER).read_text()
        except OSError:
            return None

    if have() == want:
        return venv
    with file_lock(venv.parent / f".bench-mlflow-{MLFLOW_VERSION}.lock"):
        marker = have()
        if marker == want:
            return venv
        env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
        if marker is not None and py.exists():
            missing = [p for p in VENV_PACKAGES if p not in marker.split()
                       and not p.startswith("mlflow==")]
            log(f"completing {venv}: {' '.join(missing)}")
            _venv_install(py, missing, env)
            (venv / MARKER).write_text(want)
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        base = find_base_python(base_python)
        log(f"building {venv} ({' '.join(VENV_PACKAGES)}, base {base})")
        uv = shutil.which("uv")
        try:
            if uv:
                subprocess.run([uv, "venv", "-q", "-p", base, str(venv)], check=True, env=env)
            else:
                subprocess.run([base, "-m", "venv", str(venv)], check=True)
            _venv_install(py, VENV_PACKAGES, env)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        (venv / MARKER).write_text(want)
    return venv


def ensure_schema_template(venv: Path) -> tuple[Path, float | None]:
    """Empty MLflow 3.17.2 SQLite schema made by MLflow itself; returns (path, seconds if built)."""
    path = cache_root() / "bench-schema" / f"mlflow-{MLFLOW_VERSION}.db"
    if path.exists():
        return path, None
    with file_lock(path.parent / ".lock"):
        if path.exists():
            return path, None
        tmp = path.parent / f".tmp-{os.getpid()}.db"
        code = ("import sys\nfrom sqlalchemy import create_engine\n"
                "from mlflow.store.db.utils import _initialize_tables\n"
                "_initialize_tables(create_engine('sqlite:///' + sys.argv[1]))\n")
        t0 = time.perf_counter()
        subprocess.run([str(venv / "bin" / "python"), "-c", code, str(tmp)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dt = time.perf_counter() - t0
        os.rename(tmp, path)
    log(f"schema template {path} created by MLflow in {dt:.1f} s")
    return path, dt


# ---------------------------------------------------------------------------------------------
# stores
# ---------------------------------------------------------------------------------------------
def parse_count(tok: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*", tok)
    if not m:
        raise argparse.ArgumentTypeError(f"bad count {tok!r} (e.g. 400k, 0.4M, 1000000)")
    mult = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(round(float(m.group(1)) * mult))


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``0.4M,1.6M`` -> [(400, 400000), (1600, 1600000)] (1 run per 1000 points);
    ``RUNSxPOINTS`` (e.g. ``400x0.4M``) sets the runs explicitly."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if "x" in tok:
            r, p = tok.split("x", 1)
            out.append((parse_count(r), parse_count(p)))
        else:
            p = parse_count(tok)
            out.append((max(1, round(p / 1000)), p))
    return out


def ensure_store(venv: Path, spec: dict, regenerate: bool) -> tuple[Path, dict, bool]:
    """Returns (mlruns path, manifest, generated now?). Cached under bench-stores/<key>/."""
    key = (f"r{spec['runs']}-p{spec['points']}-e{spec['experiments']}-pa{spec['params']}"
           f"-t{spec['tags']}-m{spec['models']}-s{spec['seed']}-g{generator_version()}")
    base = cache_root() / "bench-stores"
    final = base / key
    with file_lock(base / f".{key}.lock"):
        if final.exists() and regenerate:
            shutil.rmtree(final)
        if (final / "manifest.json").exists() and (final / "mlruns").is_dir():
            return final / "mlruns", json.loads((final / "manifest.json").read_text()), False
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=base))
        try:
            log(f"generating store {key} ...")
            args = [str(venv / "bin" / "python"), str(BENCH_DIR / "gen_store.py"),
                    "--out", str(tmp), "--artifact-root", str(final / "mlruns")]
            for k in ("runs", "points", "experiments", "params", "tags", "models", "seed"):
                args += [f"--{k}", str(spec[k])]
            t0 = time.perf_counter()
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            manifest = json.loads((tmp / "manifest.json").read_text())
            manifest["wall_seconds"] = round(wall, 3)
            manifest["disk_bytes"] = du(tmp / "mlruns")
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    c = manifest["counts"]
    log(f"generated {c['runs']} runs / {c['metrics']} points / {c['files']} files in "
        f"{manifest['wall_seconds']:.1f} s ({c['metrics'] / manifest['seconds'] / 1e3:.0f} k "
        f"points/s in the generator)")
    return final / "mlruns", manifest, True


def generator_version() -> int:
    text = (BENCH_DIR / "gen_store.py").read_text()
    return int(re.search(r"^GENERATOR_VERSION = (\d+)", text, re.M).group(1))


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    out += [int(x) for x in fh.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree (every ``interval`` s) to catch concurrent
    workers, which ``ru_maxrss`` (largest single process) does not add up."""

    def __init__(self, pid: int, skip_root: bool, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.skip_root, self.interval = pid, skip_root, interval
        self.peak_kb = 0
        self.max_procs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                pids.append(p)
                todo += _children(p)
            if self.skip_root:
                pids = pids[1:]
            total = sum(_rss_kb(p) for p in pids)
            self.peak_kb = max(self.peak_kb, total)
            self.max_procs = max(self.max_procs, len(pids))
            self.stop.wait(self.interval)


def measure(cmd: list[str], log_path: Path, env: dict | None = None) -> dict:
    # runs in the output directory, so stray files (e.g. a default mlflow.db) land there
    """Run ``cmd`` once; wall time, peak RSS (GNU time -v if present, else wait4), tree sample."""
    use_gnu = os.path.exists(GNU_TIME)
    time_out = log_path.with_suffix(".time")
    full = [GNU_TIME, "-v", "-o", str(time_out), *cmd] if use_gnu else cmd
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, cwd=log_path.parent)
        sampler = TreeSampler(proc.pid, skip_root=use_gnu)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    maxrss_kb = ru.ru_maxrss  # covers /usr/bin/time itself and the tool (max single process)
    rc = proc.returncode
    if use_gnu and time_out.exists():
        text = time_out.read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if m:
            maxrss_kb = int(m.group(1))
        m = re.search(r"Exit status: (\d+)", text)
        if m:
            rc = int(m.group(1))
        if "Command terminated by signal" in text:
            rc = rc or -1
    return {
        "wall_s": round(wall, 3),
        "rc": rc,
        "maxrss_mb": round(maxrss_kb / 1024, 1),
        "tree_rss_sampled_mb": round(sampler.peak_kb / 1024, 1),
        "peak_rss_mb": round(max(maxrss_kb, sampler.peak_kb) / 1024, 1),
        "max_processes": sampler.max_procs,
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
    }


def row_counts(db: Path) -> dict:
    out = {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for t in COUNT_TABLES:
            try:
                out[t] = con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            except sqlite3.Error:
                out[t] = None
    finally:
        con.close()
    return out


# ---------------------------------------------------------------------------------------------
# server targets (PostgreSQL, MariaDB): admin work with the psql / mariadb command-line clients
# ---------------------------------------------------------------------------------------------
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


def compare_outputs(kept: dict, label: str) -> dict:
    """Full content comparison (bench/compare_dbs.py logic) of each tool's round-1 output with
    the reference (floor if it ran, else upstream). Not timed."""
    sys.path.insert(0, str(BENCH_DIR))
    import compare_dbs

    ref = "floor" if "floor" in kept else "upstream" if "upstream" in kept else None
    out = {}
    if ref is None:
        return out
    cref = sqlite3.connect(f"file:{kept[ref]}?mode=ro", uri=True)
    cache = {}
    for tool, db in kept.items():
        if tool == ref:
            continue
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        diffs = {}
        for t in compare_dbs.TABLES:
            try:
                cols = [c for c in compare_dbs.columns(cref, t)
                        if c in set(compare_dbs.columns(con, t))]
                if (t, tuple(cols)) not in cache:
                    cache[(t, tuple(cols))] = compare_dbs.rows(cref, t, cols)
                ra, rb = cache[(t, tuple(cols))], compare_dbs.rows(con, t, cols)
            except sqlite3.Error as exc:
                diffs[t] = f"error: {exc}"
                continue
            if ra != rb:
                diffs[t] = (f"{sum((rb - ra).values())} rows only in {tool}, "
                            f"{sum((ra - rb).values())} only in {ref}")
        con.close()
        out[f"{tool} vs {ref}"] = diffs or "identical"
        log(f"{label}: content of {tool} vs {ref}: "
            f"{'identical (12 tables)' if not diffs else diffs}")
    cref.close()
    return out


def tool_command(tool: str, mlruns: Path, out_db: Path, ctx: dict,
                 url: str | None = None) -> list[str]:
    """The command line of one run; server tools write into the database at ``url``."""
    if tool == "fs2sql":
        return [*ctx["fs2sql"], "migrate", str(mlruns), str(out_db)]
    if tool == "upstream":
        return [str(ctx["venv"] / "bin" / "mlflow"), "migrate-filestore", "--source", str(mlruns),
                "--target", f"sqlite:///{out_db}", "--no-progress"]
    if tool == "floor":
        return [str(ctx["venv"] / "bin" / "python"), str(BENCH_DIR / "floor.py"), str(mlruns),
                str(out_db), "--template", str(ctx["template"])]
    if tool_base(tool) == "fs2sql":
        # MLflow's server schema has 32-bit experiment IDs, the bench store 18-digit ones
        return [*ctx["fs2sql"], "migrate", str(mlruns), url, "--experiment-ids", "renumber"]
    if tool_base(tool) == "floor":
        return [str(ctx["venv"] / "bin" / "python"), str(BENCH_DIR / "floor_server.py"),
                str(mlruns), url]
    raise ValueError(tool)


# ---------------------------------------------------------------------------------------------
# machine, report
# ---------------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        ram_gb = round(int(m.group(1)) / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    os_name = platform.platform()
    try:
        rel = Path("/etc/os-release").read_text()
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', rel, re.M)
        if m:
            os_name = f"{m.group(1)} (kernel {platform.release()})"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": os_name,
        "python_bench_driver": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_start": list(os.getloadavg()),
    }


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


def ratio_pairs(tool: str) -> dict:
    """name -> (numerator tool, denominator tool) of the ratios shown for ``tool``'s row."""
    if tool == "fs2sql":
        return {"upstream": ("fs2sql", "upstream"), "floor": ("fs2sql", "floor")}
    if tool_base(tool) == "fs2sql":
        target = tool_target(tool)
        return {"floor": (tool, f"floor@{target}"), "sqlite": (tool, "fs2sql")}
    return {}


def summarize(results: dict) -> list[dict]:
    rows = []
    servers = any("@" in t for t in results.get("tools", {}))
    for size in results["sizes"]:
        by_tool = {}
        for tool, runs in size["runs"].items():
            ok = [r for r in runs if r["rc"] == 0]
            srv = [r["server_cpu_s"] for r in ok if r.get("server_cpu_s") is not None]
            by_tool[tool] = {
                "wall": median([r["wall_s"] for r in ok]),
                "cpu": median([r["user_s"] + r["sys_s"] for r in ok]),
                "server_cpu": median(srv),
                "min": min([r["wall_s"] for r in ok], default=None),
                "max": max([r["wall_s"] for r in ok], default=None),
                "rss": max([r["peak_rss_mb"] for r in ok], default=None),
                "n": len(ok), "failed": len(runs) - len(ok),
            }
        for tool in TOOLS:
            if tool not in by_tool:
                continue
            t = by_tool[tool]
            rows.append({
                "tool": tool, "label": tool_label(tool, servers), "target": tool_target(tool),
                "runs": size["counts"]["runs"],
                "points": size["counts"]["metrics"], "median_wall_s": t["wall"],
                "median_cpu_s": round(t["cpu"], 2) if t["cpu"] is not None else None,
                "median_server_cpu_s": (round(t["server_cpu"], 2)
                                        if t["server_cpu"] is not None else None),
                "min_wall_s": t["min"], "max_wall_s": t["max"],
                "peak_rss_mb": t["rss"], "ok_runs": t["n"], "failed_runs": t["failed"],
            })
            size.setdefault("summary", {})[tool] = rows[-1]
            for num, den in ratio_pairs(tool).values():
                a, b = by_tool.get(num), by_tool.get(den)
                if a and b and a["wall"] is not None and b["wall"]:
                    size.setdefault("ratios", {})[f"{num}/{den}"] = {
                        "wall": round(a["wall"] / b["wall"], 3),
                        "peak_rss": round(a["rss"] / b["rss"], 3) if b["rss"] else None}
    return rows


def size_label(points: int) -> str:
    return f"{points / 1e6:g}M" if points >= 100_000 else f"{points / 1e3:g}k"


def row_ratio(summary: dict, pairs: dict, name: str, key: str) -> str:
    """One ratio cell: "" when the row has no such ratio, "-" when a side is missing."""
    if name not in pairs:
        return ""
    a, b = (summary.get(x) for x in pairs[name])
    return fmt_ratio(a and a[key], b and b[key])


def table_lines(results: dict, markdown: bool) -> list[str]:
    hdr = ["tool", "store (runs / points)", "median wall (min-max)", "peak RSS", "CPU (user+sys)",
           "server CPU", "wall fs2sql/upstream", "wall fs2sql/floor", "wall fs2sql/fs2sql→SQLite",
           "RSS fs2sql/upstream", "RSS fs2sql/floor"]
    body = []
    for size in results["sizes"]:
        s = size.get("summary", {})
        for tool in TOOLS:
            t = s.get(tool)
            if not t:
                continue
            pairs = ratio_pairs(tool)
            na = "@" in tool and tool_base(tool) == "fs2sql"  # upstream writes only SQLite
            fail = f" ({t['failed_runs']} failed)" if t["failed_runs"] else ""
            body.append([
                t["label"] + fail,
                f"{t['runs']:,} / {t['points']:,}",
                fmt_s(t["median_wall_s"]) + fmt_range(t), fmt_mb(t["peak_rss_mb"]),
                fmt_s(t["median_cpu_s"]),
                fmt_s(t.get("median_server_cpu_s")) if "@" in tool else "",
                "n/a" if na else row_ratio(s, pairs, "upstream", "median_wall_s"),
                row_ratio(s, pairs, "floor", "median_wall_s"),
                row_ratio(s, pairs, "sqlite", "median_wall_s"),
                "n/a" if na else row_ratio(s, pairs, "upstream", "peak_rss_mb"),
                row_ratio(s, pairs, "floor", "peak_rss_mb"),
            ])
    # drop the columns (from "server CPU" on) that nothing filled: fs2sql or servers skipped
    keep = [i for i in range(len(hdr)) if i < 5 or any(r[i] for r in body)]
    hdr, body = [hdr[i] for i in keep], [[r[i] for i in keep] for r in body]
    if markdown:
        lines = ["| " + " | ".join(hdr) + " |", "|" + "|".join(
            "---" if i < 2 else "---:" for i in range(len(hdr))) + "|"]
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
        out.append(f"Store {size_label(c['metrics'])}: {c['runs']:,} runs, {c['metrics']:,} metric "
                   f"points ({c['nan_points']:,} NaN), {c['params']:,} params, {c['tags']:,} tags, "
                   f"{c['experiments']} experiments, {c['registered_models']} registered models / "
                   f"{c['model_versions']} versions, {c['files']:,} files, "
                   f"{size['disk_mb']:.0f} MB on disk; generated in {g['seconds']:.1f} s "
                   f"({g['points_per_s'] / 1e3:.0f} k points/s){'' if g['now'] else ' (cached)'}.")
        for pair, res in size.get("content_check", {}).items():
            out.append(f"  {size_label(c['metrics'])} content {pair}: "
                       f"{'identical (12 tables, all columns)' if res == 'identical' else res}")
        for tool, cnt in size.get("row_check", {}).items():
            if cnt.get("mismatch"):
                out.append(f"  {size_label(c['metrics'])} {tool}: row counts [db, expected] "
                           f"differ: {cnt['mismatch']}")
            elif "@" in tool:
                extra = (f" (experiment_tags: store + {cnt['renumber_tags']} "
                         "fs2sql.source_experiment_id tags of the renumbered experiments)"
                         if cnt.get("renumber_tags") else "")
                out.append(f"  {size_label(c['metrics'])} {tool}: row counts of the 12 tables "
                           f"match the store{extra}.")
    if results.get("schema_init_s"):
        out.append(f"Creating the empty MLflow schema (_initialize_tables) took "
                   f"{results['schema_init_s']:.1f} s (done once for the floor, which copies it; "
                   f"upstream pays it on every run).")
    out += server_lines(results)
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
        f"{results['rounds']} round(s) per size, tools alternating; median wall time, peak RSS = "
        f"max over runs of the process tree's peak resident memory; CPU = median user+sys "
        f"time of the process tree (less sensitive to other load on the machine than wall "
        f"time). Load average at the end: {m.get('loadavg_end', [0])[0]:.2f}.", "",
    ]
    if results.get("servers"):
        lines += ["Servers: " + "; ".join(
            (v.get("version") or SERVER_NAME[k]) + (" (not reached)" if v.get("error") else "")
            for k, v in results["servers"].items()) + ".", ""]
    lines += table_lines(results, markdown=True)
    lines += [""] + [f"- {x}" for x in cli_lines(results, True) + extra_lines(results, True)]
    path.write_text("\n".join(lines) + "\n")


def write_reports(results: dict, a, final: bool) -> None:
    """Table to stdout (final only); JSON/Markdown files (also partially, after every run)."""
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["complete"] = final
    summarize(results)
    if final:
        print()
        print("\n".join(table_lines(results, markdown=False)))
        for line in cli_lines(results, False) + extra_lines(results, False):
            print(line)
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


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="fs2sql vs mlflow migrate-filestore vs floor benchmark",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", help="comma-separated store sizes in metric points (0.4M,1.6M; "
                    "1 run per 1000 points) or RUNSxPOINTS (400x0.4M); default: --runs/--points")
    ap.add_argument("--runs", type=parse_count, default=1000, help="runs (without --sizes)")
    ap.add_argument("--points", type=parse_count, default=1_000_000,
                    help="metric points (without --sizes)")
    ap.add_argument("--experiments", type=int, default=8, help="incl. 0 and one deleted")
    ap.add_argument("--params", type=int, default=20, help="params per run")
    ap.add_argument("--tags", type=int, default=10, help="tags per run")
    ap.add_argument("--models", type=int, default=10, help="registered models (1-5 versions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fs2sql", default="fs2sql", help="fs2sql command (shell-split)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="databases to write, comma-separated: sqlite (fs2sql, upstream, floor), "
                    "postgresql (admin URL $FS2SQL_TEST_PG_URL), mariadb ($FS2SQL_TEST_MYSQL_URL);"
                    " a server that does not answer is reported and left out")
    ap.add_argument("--skip", default="", help="tools to skip, comma-separated: "
                    f"{','.join(BASE_TOOLS)} (on every target) or e.g. floor@mariadb")
    ap.add_argument("--json", type=Path, help="write results as JSON")
    ap.add_argument("--markdown", type=Path, help="write a Markdown report (README-ready)")
    ap.add_argument("--no-check", action="store_true", help="skip bench/check_generator.py")
    ap.add_argument("--regenerate", action="store_true", help="ignore cached stores")
    ap.add_argument("--venv-python", help="base interpreter for the bench venv "
                    "(default: $FS2SQL_VENV_PYTHON, pyenv 3.11, ...)")
    ap.add_argument("--workdir", type=Path, help="where output DBs go (default: temp dir in cache)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep output DBs and logs")
    ap.add_argument("--no-compare", action="store_true",
                    help="skip the content comparison of the round-1 outputs (12 tables)")
    a = ap.parse_args(argv)

    targets = []
    for name in filter(None, (t.strip().lower() for t in a.targets.split(","))):
        name = TARGET_ALIASES.get(name, name)
        if name not in TARGETS:
            ap.error(f"--targets: unknown target {name!r} (known: {', '.join(TARGETS)})")
        if name not in targets:
            targets.append(name)
    skip = set()
    for name in filter(None, (s.strip().lower() for s in a.skip.split(","))):
        name = TOOL_ALIASES.get(name, name)
        if name not in BASE_TOOLS and name not in TOOLS:
            ap.error(f"--skip: unknown tool {name!r} (known: {', '.join(BASE_TOOLS)}, or "
                     f"{', '.join(t for t in TOOLS if '@' in t)})")
        skip.add(name)
    tools = [t for t in TOOLS if tool_target(t) in targets and t not in skip
             and tool_base(t) not in skip]
    if not tools:
        ap.error("nothing to run")
    sizes = parse_sizes(a.sizes) if a.sizes else [(a.runs, a.points)]

    ctx = {"fs2sql": shlex.split(a.fs2sql)}
    if any(tool_base(t) == "fs2sql" for t in tools):
        exe = shutil.which(ctx["fs2sql"][0])
        if not exe:
            ap.error(f"fs2sql command {ctx['fs2sql'][0]!r} not found (use --fs2sql CMD or "
                     "--skip fs2sql)")
        ctx["fs2sql"][0] = os.path.abspath(exe)  # tools run with cwd = their output directory

    results = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(), "mlflow_version": MLFLOW_VERSION, "rounds": a.rounds,
        "targets": targets,
        "tools": {t: tool_label(t, any("@" in x for x in tools)) for t in tools}, "sizes": [],
        "measurement": ("wall: perf_counter around the process; peak RSS: max of GNU time -v "
                        "'Maximum resident set size' (largest single process of the tree, "
                        "os.wait4 ru_maxrss without GNU time) and the summed RSS of the "
                        "process tree sampled every 50 ms"),
    }

    venv = ensure_bench_venv(a.venv_python)
    ctx["venv"] = venv
    results["venv_python"] = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True).stdout.strip()
    workroot = a.workdir or (cache_root() / "bench-out")
    workroot.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=workroot))
    log(f"outputs in {work}")
    servers: dict[str, Server] = {}
    try:
        return run_bench(a, ctx, venv, tools, sizes, results, servers, work)
    finally:
        for srv in servers.values():
            srv.cleanup()
        if not a.keep_outputs:
            shutil.rmtree(work, ignore_errors=True)


def setup_servers(tools: list, venv: Path, work: Path, results: dict, servers: dict) -> list:
    """Reach each server the tools need, time MLflow's schema creation on it once (kept as the
    floor's template); a server that fails is reported and its tools are left out."""
    for kind in SERVER_NAME:
        if not any(tool_target(t) == kind for t in tools):
            continue
        srv = Server(kind)
        info = results.setdefault("servers", {})[kind] = {"url": srv.display(srv.admin_db)}
        try:
            info["version"] = srv.connect_check()
            servers[kind] = srv
            log(f"{srv.name}: {info['version'][:60]}; creating MLflow's schema "
                "(_initialize_tables) ...")
            info["schema"] = srv.make_template(venv, work)
            log(f"{srv.name}: _initialize_tables took {info['schema']['initialize_tables_s']:.1f} "
                f"s ({info['schema']['process_s']:.1f} s with Python start and imports)")
        except (ServerError, OSError, subprocess.CalledProcessError) as exc:
            info["error"] = " ".join(str(exc).split())[-500:]
            log(f"{srv.name} left out: {info['error']}")
            tools = [t for t in tools if tool_target(t) != kind]
    return tools


def warm_up(tools: list, ctx: dict, servers: dict, work: Path) -> None:
    """Untimed: one fs2sql migration of its bundled sample store per target, so that fs2sql's
    schema caches (the empty SQLite schema; the recording of MLflow's migrations per server)
    exist, as they do from the second migration on any machine. The first migration on a
    machine pays a few seconds more once."""
    for tool in tools:
        if tool_base(tool) != "fs2sql":
            continue
        srv = servers.get(tool_target(tool))
        if srv is None:
            out = work / "warm-up.db"
            cmd = [*ctx["fs2sql"], "migrate", "--example", str(out), "--quiet"]
        else:
            db = f"fs2sql_bench_warm_{os.getpid()}"
            srv.drop(db)
            srv.create(db)
            cmd = [*ctx["fs2sql"], "migrate", "--example", srv.url(db), "--quiet",
                   "--experiment-ids", "renumber"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                log(f"warm-up of {tool} failed (exit {p.returncode}): {p.stderr[-500:]}")
        finally:
            if srv is None:
                out.unlink(missing_ok=True)
            else:
                srv.drop(db)


def run_bench(a, ctx: dict, venv: Path, tools: list, sizes: list, results: dict,
              servers: dict, work: Path) -> int:
    tools = setup_servers(tools, venv, work, results, servers)
    results["tools"] = {t: results["tools"][t] for t in tools}
    if not tools:
        log("nothing left to run")
        return 2
    if "floor" in tools:
        ctx["template"], built = ensure_schema_template(venv)
        if built:
            results["schema_init_s"] = round(built, 2)

    if not a.no_check:
        log("checking the generator against MLflow's FileStore (bench/check_generator.py) ...")
        p = subprocess.run([str(venv / "bin" / "python"), str(BENCH_DIR / "check_generator.py"),
                            "--params", str(a.params), "--tags", str(a.tags)],
                           capture_output=True, text=True)
        print(p.stdout.strip(), file=sys.stderr)
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            log("generator check FAILED; not benchmarking an invalid store")
            return 2
        results["generator_check"] = p.stdout.strip().splitlines()[-1]

    stores = []
    for runs, points in sizes:
        spec = dict(runs=runs, points=points, experiments=a.experiments, params=a.params,
                    tags=a.tags, models=a.models, seed=a.seed)
        mlruns, manifest, now = ensure_store(venv, spec, a.regenerate)
        stores.append((mlruns, manifest))
        results["sizes"].append({
            "spec": spec, "store": str(mlruns), "counts": manifest["counts"],
            "disk_mb": round(manifest.get("disk_bytes", 0) / 1e6, 1),
            "generator": {"seconds": manifest["seconds"],
                          "wall_seconds": manifest.get("wall_seconds"),
                          "points_per_s": round(manifest["counts"]["metrics"]
                                                / max(manifest["seconds"], 1e-9)),
                          "now": now},
            "runs": {t: [] for t in tools},
        })

    warm_up(tools, ctx, servers, work)
    dbn = 0
    for (mlruns, manifest), size in zip(stores, results["sizes"]):
        label = size_label(manifest["counts"]["metrics"])
        expected = manifest["counts"]
        renumbered = renumbered_experiments(mlruns)
        kept: dict = {}
        for rnd in range(a.rounds):
            # rotate the start so no tool always runs first (cache/thermal effects)
            order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
            for tool in order:
                out_dir = work / f"{label}-{tool.replace('@', '-')}-{rnd}"
                out_dir.mkdir()
                out_db = out_dir / "out.db"
                srv = servers.get(tool_target(tool))
                db = url = None
                if srv is not None:  # a fresh database, not timed
                    dbn += 1
                    db = f"fs2sql_bench_{os.getpid()}_{dbn}"
                    srv.drop(db)
                    srv.create(db, from_template=tool_base(tool) == "floor")
                    url = srv.url(db)
                cmd = tool_command(tool, mlruns, out_db, ctx, url)
                cpu0 = srv.cpu_seconds() if srv else None
                r = measure(cmd, out_dir / "log.txt")
                if cpu0 is not None:
                    time.sleep(0.3)  # let the backend exit (and be reaped by the postmaster)
                    cpu1 = srv.cpu_seconds()
                    r["server_cpu_s"] = round(cpu1 - cpu0, 2) if cpu1 is not None else None
                r["round"] = rnd
                if db:
                    r["database"] = db
                if r["rc"] != 0:
                    tail = (out_dir / "log.txt").read_text(errors="replace")[-2000:]
                    r["error_tail"] = tail
                    log(f"{label} {tool} round {rnd + 1}: FAILED (exit {r['rc']}):\n{tail}")
                else:
                    if tool_base(tool) == "floor":
                        r["floor_report"] = last_json_line(out_dir / "log.txt")
                    srv_cpu = (f", server CPU {r['server_cpu_s']:.1f} s"
                               if r.get("server_cpu_s") is not None else "")
                    log(f"{label} {tool:17s} round {rnd + 1}/{a.rounds}: {r['wall_s']:.2f} s, "
                        f"CPU {r['user_s'] + r['sys_s']:.1f} s{srv_cpu}, "
                        f"peak RSS {r['peak_rss_mb']:.0f} MB")
                    if not size.setdefault("row_check", {}).get(tool):
                        got = None
                        if srv is not None:
                            got = srv.row_counts(db)
                        elif out_db.exists():
                            got = row_counts(out_db)
                        if got is not None:
                            want = dict(expected)
                            tags = renumbered if srv is not None and \
                                tool_base(tool) == "fs2sql" else 0
                            want["experiment_tags"] = want["experiment_tags"] + tags
                            mism = {t: [got[t], want[t]] for t in COUNT_TABLES
                                    if got.get(t) != want.get(t)}
                            size["row_check"][tool] = {"counts": got, "mismatch": mism,
                                                       "renumber_tags": tags}
                            if mism:
                                log(f"  {tool}: row counts [db, expected] differ: {mism}")
                size["runs"][tool].append(r)
                if srv is not None and not a.keep_outputs:
                    srv.drop(db)
                if srv is None and rnd == 0 and not a.no_compare and r["rc"] == 0 \
                        and out_db.exists():
                    kept[tool] = out_db  # compared after the round, then deleted
                elif not a.keep_outputs:
                    shutil.rmtree(out_dir, ignore_errors=True)
                write_reports(results, a, final=False)  # partial results survive a kill
            if rnd == 0 and kept:
                size["content_check"] = compare_outputs(kept, label)
                if not a.keep_outputs:
                    for db_path in kept.values():
                        shutil.rmtree(db_path.parent, ignore_errors=True)
                kept.clear()
                write_reports(results, a, final=False)
    if any(tool_base(t) == "fs2sql" for t in tools):
        cli = {}
        for flag in ("--help", "--version"):
            walls, rcs = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                p = subprocess.run([*ctx["fs2sql"], flag], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                walls.append(time.perf_counter() - t0)
                rcs.append(p.returncode)
            cli[flag] = {"median_wall_s": round(median(walls), 3), "n": 5,
                         "all_s": [round(w, 3) for w in walls], "exit_codes": rcs}
        results["cli"] = cli
    if a.keep_outputs:
        for srv in servers.values():
            log(f"{srv.name}: kept databases {', '.join(srv.dbs) or '(none)'}")
            srv.dbs = [d for d in srv.dbs if d == srv.template_db]

    write_reports(results, a, final=True)
    return 0


def last_json_line(path: Path) -> dict | None:
    try:
        for line in reversed(path.read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                return json.loads(line)
    except (OSError, ValueError):
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
