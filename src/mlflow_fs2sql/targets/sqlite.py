"""SQLite: build into a temporary file beside the target, rename it into place when complete.

A failure, Ctrl-C or kill -9 at any moment therefore leaves no target (a clean failure leaves no
temporary file either; a killed run's file is removed by the next run). The load runs with the
journal off and synchronous off -- safe because the file is thrown away unless it is complete --
and the result is switched back to a plain rollback-journal database before it is published.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import threading
from typing import Callable, List, Optional, Sequence

from ..errors import TargetError
from ..rows import TargetColumns
from ..schema import copy_file, empty_sqlite_schema
from .base import Target

READ_AHEAD_CHUNK = 1 << 20  # bytes per read of the database read-ahead thread

SQLITE_MAGIC = b"SQLite format 3\x00"
# Tables whose secondary indexes are built after the load instead of row by row.
_DEFERRED_INDEX_TABLES = ("metrics", "latest_metrics", "params", "tags")
# KiB of SQLite page cache during the load (16 MiB: as fast as 32 MiB at 1.6M points, 13.6 s,
# with 20 MB less RSS), and while the deferred indexes are built.
LOAD_CACHE_KIB = 16384
INDEX_BUILD_CACHE_KIB = 4096
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.fs2sql-(?P<pid>\d+)\.tmp$")


def sqlite_path(target: str) -> str:
    """A filesystem path from a path or an ``sqlite:///`` URI."""
    if target.lower().startswith("sqlite:"):
        rest = target.split(":", 1)[1]
        if not rest.startswith("///") or len(rest) <= 3:
            raise TargetError(
                f"'{target}' is not an SQLite URI fs2sql understands.",
                hint="Write sqlite:///relative/path.db or sqlite:////absolute/path.db, or just a "
                "file path.",
            )
        target = rest[3:].split("?", 1)[0]
    return os.path.abspath(os.path.expanduser(target))


def describe_sqlite_file(path: str) -> str:
    """What an existing file holds, in words, for prompts and errors."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"a file fs2sql cannot read ({exc.strerror})"
    if os.path.getsize(path) == 0:
        return "an empty file"
    if head != SQLITE_MAGIC:
        return "a file that is not an SQLite database"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in
                      con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "experiments" in tables and "runs" in tables:
                n_exp = con.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
                n_run = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                return (f"an MLflow database with {n_exp:,} "
                        f"experiment{'' if n_exp == 1 else 's'} and {n_run:,} "
                        f"run{'' if n_run == 1 else 's'}")
            if not tables:
                return "an empty SQLite database"
            return (f"an SQLite database with {len(tables)} "
                    f"{'table that is' if len(tables) == 1 else 'tables that are'} not MLflow's")
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"a damaged SQLite file ({exc})"


class SqliteTarget(Target):
    def __init__(self, target: str, *, overwrite: bool = False, revision: Optional[str] = None):
        self.path = sqlite_path(target)
        self.display = self.path
        self.overwrite = overwrite
        self.requested_revision = revision
        self.tmp_path = os.path.join(
            os.path.dirname(self.path), f".{os.path.basename(self.path)}.fs2sql-{os.getpid()}.tmp"
        )
        self._engine = None
        self.conn = None
        self._raw = None
        self._sql_cache = {}
        self._columns: Optional[TargetColumns] = None
        self._deferred_indexes: List[str] = []

    # -- checks ------------------------------------------------------------------------------
    def prepare(self) -> None:
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            blocker = _first_file_on_the_way(folder)
            if blocker is not None:
                raise TargetError(
                    "is a file, not a folder, so the database cannot be created below it.",
                    path=blocker, hint="Choose another target path.")
            raise TargetError(
                "the folder for the database does not exist.", path=folder,
                hint="Create it first (mkdir -p) or choose another target path.",
            )
        if os.path.isdir(self.path):
            raise TargetError("is a folder, not a database file.", path=self.path,
                              hint="Give a file name such as out.db.")
        if os.path.exists(self.path) and not self.overwrite:
            raise TargetError(
                f"already exists and is {describe_sqlite_file(self.path)}. fs2sql never writes "
                "into an existing database.",
                path=self.path,
                hint="Choose a new file name, or pass --force to replace the file with the "
                "migrated database (the old file stays untouched until the new one is complete).",
            )
        self._probe_writable(folder)
        self._remove_stale_temporaries(folder)

    def _probe_writable(self, folder: str) -> None:
        """Create and remove the temporary file once. ``os.access`` cannot answer this: it says
        yes to root everywhere, and no to nobody on a read-only mount or a full disk."""
        try:
            fd = os.open(self.tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # our own leftover (same pid): removed with the stale temporaries
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _io_error(exc, folder) from None
            raise TargetError(
                f"fs2sql cannot create files in this folder ({exc.strerror or exc}).",
                path=folder, hint="Choose a target in a folder you can write to.",
            ) from None
        os.close(fd)
        os.unlink(self.tmp_path)

    def _remove_stale_temporaries(self, folder: str) -> None:
        """Files left by a killed fs2sql (its process is gone) for this same target."""
        base = os.path.basename(self.path)
        for name in os.listdir(folder):
            m = _TMP_RE.match(name)
            if not m or m.group("name") != base:
                continue
            if _pid_alive(int(m.group("pid"))) and int(m.group("pid")) != os.getpid():
                continue
            for suffix in ("", "-journal"):
                try:
                    os.unlink(os.path.join(folder, name + suffix))
                except FileNotFoundError:
                    pass

    # -- load --------------------------------------------------------------------------------
    def begin(self):
        from sqlalchemy import create_engine, event
        from sqlalchemy.pool import StaticPool

        schema_file, info = empty_sqlite_schema(self.requested_revision)
        self.revision = info.revision
        self.mlflow_skinny_version = info.mlflow_skinny_version
        try:
            copy_file(schema_file, self.tmp_path)
        except OSError as exc:
            self._cleanup()
            raise _io_error(exc, self.path) from exc
        self._engine = create_engine(f"sqlite:///{self.tmp_path}", poolclass=StaticPool)

        @event.listens_for(self._engine, "connect")
        def _bulk_load_pragmas(dbapi_conn, _record):
            # Journal and fsync off: the file is discarded unless the load completes.
            # temp_store=FILE: re-creating the indexes sorts in bounded memory, spilling to disk.
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
                           "temp_store=FILE", f"cache_size=-{LOAD_CACHE_KIB}", "foreign_keys=OFF"):
                dbapi_conn.execute(f"PRAGMA {pragma}")

        try:
            self.conn = self._engine.connect()
        except Exception as exc:
            self._abort_and_raise(exc)
        self._raw = self.conn.connection.driver_connection
        self._deferred_indexes = self._drop_secondary_indexes()
        return self.conn

    def _drop_secondary_indexes(self) -> List[str]:
        """Drop the secondary indexes of the big tables for the load; ``publish`` re-creates
        them from MLflow's own DDL (read here). One sorted build beats a million updates."""
        found = self.conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN ({', '.join(repr(t) for t in _DEFERRED_INDEX_TABLES)})").fetchall()
        for name, _ in found:
            self.conn.exec_driver_sql(f'DROP INDEX "{name}"')
        return [sql for _, sql in found]

    def insert_order(self, table: str, columns: Sequence[str]) -> List[str]:
        sql, order = _compile_insert(self.conn, table, columns)
        self._sql_cache[table, tuple(order)] = sql
        return order

    def insert_many(self, table: str, columns: Sequence[str], rows: List[tuple]) -> None:
        sql = self._sql_cache[table, tuple(columns)]
        try:
            # The compiled Core insert(), executed by the driver's executemany: no per-row
            # parameter processing (values are already plain Python types).
            self.conn.exec_driver_sql(sql, rows)
        except Exception as exc:
            raise _wrap_db_error(exc, self.path) from exc

    # -- finish ------------------------------------------------------------------------------
    def publish(self, before: Optional[Callable[[], None]] = None) -> None:
        try:
            if self._deferred_indexes:
                # Each index build sorts with up to cache_size of memory beside the page cache:
                # a smaller cache now keeps the peak flat (the sort spills to temp files).
                self.conn.exec_driver_sql(f"PRAGMA cache_size=-{INDEX_BUILD_CACHE_KIB}")
            for sql in self._deferred_indexes:
                self.conn.exec_driver_sql(sql)
            self.conn.commit()
            orphans = self.conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if orphans:
                raise TargetError(
                    f"the finished database has {len(orphans)} rows whose parent is missing "
                    f"(first: table {orphans[0][0]}, parent {orphans[0][2]}). This is a bug in "
                    "fs2sql; nothing was written.",
                    hint="Please report it with the output of --verbose.",
                )
            self.conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
            if before is not None:
                before()
            self.conn.close()
            self._engine.dispose()
            self.conn = self._engine = None
            _fsync(self.tmp_path)
            os.replace(self.tmp_path, self.path)
            _fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            self.abort()
            raise _io_error(exc, self.path) from exc
        except Exception as exc:
            self._abort_and_raise(exc)
        except BaseException:
            self.abort()
            raise

    def _abort_and_raise(self, exc: Exception) -> None:
        """Undo everything, then raise ``exc`` (as one paragraph where SQLite's I/O failed)."""
        self.abort()
        wrapped = _wrap_db_error(exc, self.path)
        if wrapped is exc:
            raise exc
        raise wrapped from exc

    def abort(self) -> None:
        self._close_connection()
        self._cleanup()

    def _cleanup(self) -> None:
        for suffix in ("", "-journal"):
            try:
                os.unlink(self.tmp_path + suffix)
            except FileNotFoundError:
                pass

    def start_command(self) -> str:
        return f"mlflow server --backend-store-uri sqlite:///{self.path}"


def open_sqlite_readonly(target: str):
    """An engine that reads an existing database without changing it (for ``verify``)."""
    from sqlalchemy import create_engine

    path = sqlite_path(target)
    if not os.path.isfile(path):
        raise TargetError("does not exist.", path=path, hint="Run fs2sql migrate first.")
    if describe_sqlite_file(path).startswith(("a file", "an empty file", "a damaged")):
        raise TargetError(f"is {describe_sqlite_file(path)}, not an MLflow database.",
                          path=path, hint="Give the database fs2sql migrate wrote (fs2sql "
                          "migrate ./mlruns out.db makes one).")
    _read_ahead(path)
    return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")


def _read_ahead(path: str) -> Optional[threading.Thread]:
    """Read the database file into the page cache on a background thread, in order: verify
    looks rows up by index all over the file, and on a cold cache each lookup would otherwise
    wait for one random read. A file larger than a quarter of the memory is left alone.

    Not ``posix_fadvise(WILLNEED)``: Linux reads only one readahead window of it (at most
    ``read_ahead_kb``; 8 MB of a 219 MB database on the bench machine, often 128 KB), whatever
    range it is given. The thread reads with one reused buffer (the reads release the GIL) and
    is a daemon: it never delays the end of the process. Returns it (tests join it)."""
    try:
        size = os.path.getsize(path)
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
    if size > memory // 4:
        return None

    def read() -> None:
        buf = bytearray(READ_AHEAD_CHUNK)
        try:
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        except OSError:
            pass  # only a hint: verify reads the file itself and reports what fails

    thread = threading.Thread(target=read, name="fs2sql-db-read-ahead", daemon=True)
    thread.start()
    return thread


def _compile_insert(conn, table: str, columns: Sequence[str]):
    """The INSERT for ``columns`` and the order its positional parameters take."""
    from sqlalchemy import column, insert
    from sqlalchemy import table as table_clause

    # A lightweight table clause: the columns were already read from the database.
    t = table_clause(table, *[column(c) for c in columns])
    compiled = insert(t).compile(dialect=conn.dialect, column_keys=list(columns))
    return str(compiled), list(compiled.positiontup)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_file_on_the_way(folder: str) -> Optional[str]:
    """The existing non-folder among ``folder``'s ancestors (``out.txt/new.db``), if any."""
    path = folder
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return path if path and not os.path.isdir(path) else None


_DISK_FULL_HINT = ("Free some space (the database needs about the size of the mlruns metadata, "
                   "without artifacts) or choose a target on another disk, and run again.")


def _io_error(exc: OSError, path: str) -> TargetError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetError("the disk is full; nothing was written.", path=path,
                           hint=_DISK_FULL_HINT)
    return TargetError(f"cannot be written ({exc.strerror or exc}); nothing was written.",
                       path=path)


def _wrap_db_error(exc: Exception, path: str) -> Exception:
    """SQLite's own I/O failures as one paragraph; anything else is returned unchanged."""
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, OSError):
        return _io_error(orig, path)
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig)
        if "full" in text:
            return TargetError("the disk is full; nothing was written.", path=path,
                               hint=_DISK_FULL_HINT)
        if "disk I/O error" in text or "readonly database" in text or "unable to open" in text:
            return TargetError(f"cannot be written ({text}); nothing was written.", path=path,
                               hint="Check the disk and the folder's permissions, or choose "
                               "another target.")
    return exc
