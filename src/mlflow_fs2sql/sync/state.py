"""The sync state: a few ``fs2sql_*`` tables in the target itself, beside MLflow's.

In the target, so that a sync's changes and its memory of them commit in one transaction, and so
that any machine that can reach the database can sync (cron on every node of a cluster). MLflow
ignores tables it does not know (its start-up check is a subset test).

* ``fs2sql_meta`` -- key/value: the state format, the experiment ID policy of the database.
* ``fs2sql_sources`` -- one row per source store: a generated ID, where it is and when a sync
  last brought a change from it (a sync with nothing new writes nothing). A source is
  recognised by what it holds (``identify``), not by its path.
* ``fs2sql_units`` -- one row per (source, unit): see ``units.py``. Indexed by unit too, so that
  recognising a source and finding a run that another source also holds are index lookups,
  whatever the number of sources.
* ``fs2sql_experiments`` -- (source, source experiment ID) -> database experiment ID, and
  whether this source owns the experiment row (created it) or joined one of the same name.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

STATE_FORMAT = "1"
TABLES = ("fs2sql_meta", "fs2sql_sources", "fs2sql_units", "fs2sql_experiments")


def _metadata():
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        Index,
        Integer,
        MetaData,
        String,
        Table,
        Text,
    )
    from sqlalchemy.dialects import mysql

    big_text = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    md = MetaData()
    Table("fs2sql_meta", md,
          Column("key", String(64), primary_key=True),
          Column("value", Text, nullable=False))
    Table("fs2sql_sources", md,
          Column("source_id", String(36), primary_key=True),
          Column("host", String(255), nullable=False),
          Column("path", Text, nullable=False),
          Column("first_sync_ms", BigInteger, nullable=False),
          Column("last_sync_ms", BigInteger, nullable=False),
          Column("syncs", Integer, nullable=False),
          Column("generation", Integer, nullable=False))
    units = Table("fs2sql_units", md,
                  Column("source_id", String(36), primary_key=True),
                  Column("unit", String(400), primary_key=True),
                  Column("path", Text, nullable=False),
                  Column("sig", String(40), nullable=False),
                  Column("digest", String(40), nullable=False),
                  Column("offsets", Text, nullable=True),
                  Column("base", big_text, nullable=True))
    Index("fs2sql_units_unit", units.c.unit)
    Table("fs2sql_experiments", md,
          Column("source_id", String(36), primary_key=True),
          Column("source_experiment_id", BigInteger, primary_key=True, autoincrement=False),
          Column("experiment_id", BigInteger, nullable=False),
          Column("owner", Boolean, nullable=False),
          Column("name", String(256), nullable=True))  # the name in the database, if renamed
    return md


_MD = None


def metadata():
    global _MD
    if _MD is None:
        _MD = _metadata()
    return _MD


def table(name: str):
    return metadata().tables[name]


def exists(conn) -> bool:
    from sqlalchemy import inspect

    return "fs2sql_units" in inspect(conn).get_table_names()


def create(conn, temporary: bool = False) -> None:
    """The state tables, if missing (idempotent; MySQL commits DDL at once, which is harmless:
    empty state tables change nothing). ``temporary``: session-only tables (a MySQL dry run,
    which must not leave even empty tables behind)."""
    if temporary:
        from sqlalchemy.schema import CreateIndex, CreateTable

        for t in metadata().sorted_tables:
            ddl = str(CreateTable(t).compile(conn))
            conn.exec_driver_sql(ddl.replace("CREATE TABLE", "CREATE TEMPORARY TABLE", 1))
            for index in t.indexes:
                conn.exec_driver_sql(str(CreateIndex(index).compile(conn)))
    else:
        metadata().create_all(conn, checkfirst=True)
    meta = table("fs2sql_meta")
    if conn.execute(meta.select().where(meta.c.key == "format")).first() is None:
        conn.execute(meta.insert(), [{"key": "format", "value": STATE_FORMAT}])


def get_meta(conn, key: str) -> Optional[str]:
    meta = table("fs2sql_meta")
    row = conn.execute(meta.select().where(meta.c.key == key)).first()
    return None if row is None else row.value


def set_meta(conn, key: str, value: str) -> None:
    meta = table("fs2sql_meta")
    if conn.execute(meta.update().where(meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(meta.insert(), [{"key": key, "value": value}])


def save_artifacts(conn, options) -> None:
    """The artifact options of the syncs (``--artifacts-to`` ...): later syncs and ``verify``
    apply them by themselves, so that a forgotten flag never mixes layouts."""
    if options is None or not options.active:
        return
    value = json.dumps({"to": options.to, "uris": options.uris,
                        "root_maps": [f"{m.old}={m.new}" for m in options.root_maps]})
    if get_meta(conn, "artifacts") != value:  # a sync with nothing new writes nothing
        set_meta(conn, "artifacts", value)


def load_artifacts(conn):
    raw = get_meta(conn, "artifacts")
    if not raw:
        return None
    from ..artifacts import ArtifactOptions, parse_root_maps

    data = json.loads(raw)
    return ArtifactOptions(to=data["to"], uris=data["uris"],
                           root_maps=tuple(parse_root_maps(data["root_maps"])))


# -- sources -----------------------------------------------------------------------------------
@dataclass
class Source:
    source_id: str
    host: str
    path: str
    generation: int = 0
    syncs: int = 0
    new: bool = False
    moved_from: Optional[str] = None  # "host:path" it was last synced from, if elsewhere


def here() -> str:
    return socket.gethostname()


def new_source(root: str) -> Source:
    return Source(str(uuid.uuid4()), here(), root, new=True)


def identify(conn, root: str, evidence: List[str]) -> Optional[Source]:
    """The known source holding these units (run, trace and model IDs are unique to a store),
    or for a store without any, the one last synced from this very path and host."""
    sources = table("fs2sql_sources")
    units = table("fs2sql_units")
    from sqlalchemy import func, select

    found = None
    if evidence:
        counts: Dict[str, int] = {}
        for chunk in _chunks(evidence, 500):
            for sid, n in conn.execute(
                    select(units.c.source_id, func.count()).where(units.c.unit.in_(chunk))
                    .group_by(units.c.source_id)):
                counts[sid] = counts.get(sid, 0) + n
        # A candidate is this store only if most of what it held is here (a store that grew
        # still holds its old runs; one that merely shares a copied run does not).
        # Synced from this very path before and still holding some of it: the same store, even
        # if most of its runs are gone (mlflow gc).
        at_path = {r.source_id for r in conn.execute(select(sources.c.source_id).where(
            (sources.c.host == here()) & (sources.c.path == root)))}
        for sid in sorted(counts, key=lambda s: (s not in at_path, -counts[s], s)):
            if sid in at_path or _mostly_here(conn, sid, root, by_experiments=False):
                found = sid
                break
    if found is None:
        row = conn.execute(select(sources.c.source_id).where(
            (sources.c.host == here()) & (sources.c.path == root))).first()
        # Same path and host: the same store unless what it held is gone (a new store lives
        # there now, e.g. a wiped scratch folder).
        # A store holding no runs contradicts nothing (mlflow gc removed them all).
        if row is None or (evidence and not _mostly_here(conn, row.source_id, root,
                                                         by_experiments=True)):
            return None
        found = row.source_id
    row = conn.execute(sources.select().where(sources.c.source_id == found)).first()
    if row is None:
        return None
    src = Source(row.source_id, row.host, row.path, row.generation, row.syncs)
    if (row.host, row.path) != (here(), root):
        src.moved_from = f"{row.host}:{row.path}"
    return src


def _mostly_here(conn, source_id: str, root: str, sample: int = 64,
                 by_experiments: bool = False) -> bool:
    """Most of (a sample of) the source's runs are in the store at ``root``, at the same place
    relative to it -- or, ``by_experiments`` (the same path as last time), its experiments are,
    when its runs are gone (mlflow gc of every run)."""
    import os

    from sqlalchemy import select

    units = table("fs2sql_units")
    paths = [r.path for r in conn.execute(
        select(units.c.path).where((units.c.source_id == source_id)
                                   & units.c.unit.like("run:%"))
        .order_by(units.c.unit).limit(sample))]
    if not paths:
        return True
    def present(path: str) -> bool:  # its experiment may have moved to or from .trash
        bare = path[len(".trash/"):] if path.startswith(".trash/") else path
        return any(os.path.isdir(os.path.join(root, p)) for p in (bare, ".trash/" + bare))

    here = sum(map(present, paths))
    if 2 * here > len(paths):
        return True
    if not by_experiments:
        return False
    ids = [r.unit.split(":", 1)[1] for r in conn.execute(
        select(units.c.unit).where((units.c.source_id == source_id)
                                   & units.c.unit.like("experiment:%")).limit(sample))]
    ids = [i for i in ids if i != "0"]
    return bool(ids) and all(present(i) for i in ids)


def generation(conn, source_id: str) -> Optional[int]:
    sources = table("fs2sql_sources")
    row = conn.execute(sources.select().where(sources.c.source_id == source_id)).first()
    return None if row is None else row.generation


def save_source(conn, src: Source, root: str) -> None:
    sources = table("fs2sql_sources")
    ms = int(time.time() * 1000)
    if src.new:
        conn.execute(sources.insert(), [{
            "source_id": src.source_id, "host": here(), "path": root, "first_sync_ms": ms,
            "last_sync_ms": ms, "syncs": 1, "generation": 1}])
        src.new = False
    else:
        conn.execute(sources.update().where(sources.c.source_id == src.source_id).values(
            host=here(), path=root, last_sync_ms=ms, syncs=sources.c.syncs + 1,
            generation=sources.c.generation + 1))
    src.generation += 1


# -- units -------------------------------------------------------------------------------------
@dataclass
class UnitState:
    sig: str
    digest: str
    path: str
    offsets: Optional[dict] = None


def load_units(conn, source_id: str) -> Dict[str, UnitState]:
    """Every unit of one source, without their bases (read per batch when needed)."""
    from sqlalchemy import select

    units = table("fs2sql_units")
    out = {}
    for r in conn.execute(select(units.c.unit, units.c.sig, units.c.digest, units.c.path,
                                 units.c.offsets).where(units.c.source_id == source_id)):
        out[r.unit] = UnitState(r.sig, r.digest, r.path,
                                json.loads(r.offsets) if r.offsets else None)
    return out


def load_bases(conn, source_id: str, keys: Iterable[str]) -> Dict[str, dict]:
    from sqlalchemy import select

    units = table("fs2sql_units")
    out = {}
    for chunk in _chunks(list(keys), 500):
        for r in conn.execute(select(units.c.unit, units.c.base).where(
                (units.c.source_id == source_id) & units.c.unit.in_(chunk))):
            out[r.unit] = json.loads(r.base) if r.base else {}
    return out


def holders(conn, source_id: str, keys: Iterable[str]) -> Dict[str, Tuple[str, str]]:
    """unit -> (other source, its path) for units another source also holds."""
    from sqlalchemy import select

    units = table("fs2sql_units")
    out = {}
    for chunk in _chunks(list(keys), 500):
        for r in conn.execute(select(units.c.unit, units.c.source_id, units.c.path).where(
                (units.c.source_id != source_id) & units.c.unit.in_(chunk))):
            out.setdefault(r.unit, (r.source_id, r.path))
    return out


@dataclass
class UnitWrites:
    """State rows to write at the end of a sync (inside its transaction)."""

    upserts: Dict[str, dict] = field(default_factory=dict)  # unit -> full row values
    sig_only: Dict[str, str] = field(default_factory=dict)  # unit -> new sig
    deletes: List[str] = field(default_factory=list)

    def upsert(self, unit: str, path: str, sig: str, digest: str, offsets: Optional[dict],
               base: Optional[dict]) -> None:
        self.upserts[unit] = {"unit": unit, "path": path, "sig": sig, "digest": digest,
                              "offsets": json.dumps(offsets) if offsets else None,
                              "base": json.dumps(base, separators=(",", ":"))
                              if base is not None else None}

    def __len__(self) -> int:
        return len(self.upserts) + len(self.sig_only) + len(self.deletes)


def write_units(conn, source_id: str, writes: UnitWrites) -> None:
    from sqlalchemy import bindparam

    units = table("fs2sql_units")
    keys = list(writes.upserts) + writes.deletes
    for chunk in _chunks(keys, 500):
        conn.execute(units.delete().where((units.c.source_id == source_id)
                                          & units.c.unit.in_(chunk)))
    rows = [dict(v, source_id=source_id) for v in writes.upserts.values()]
    for chunk in _chunks(rows, 2000):
        conn.execute(units.insert(), chunk)
    if writes.sig_only:
        stmt = units.update().where((units.c.source_id == source_id)
                                    & (units.c.unit == bindparam("u"))).values(
            sig=bindparam("s"))
        conn.execute(stmt, [{"u": u, "s": s} for u, s in writes.sig_only.items()])


# -- experiments -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MappedExperiment:
    experiment_id: int  # in the database
    owner: bool  # this source created (or adopted) the row; else it joined one of that name
    name: Optional[str] = None  # set when it is in the database under another name


def load_experiments(conn, source_id: str) -> Dict[int, MappedExperiment]:
    ex = table("fs2sql_experiments")
    return {r.source_experiment_id: MappedExperiment(r.experiment_id, bool(r.owner), r.name)
            for r in conn.execute(ex.select().where(ex.c.source_id == source_id))}


def save_experiment(conn, source_id: str, source_id_exp: int, mapped: MappedExperiment) -> None:
    ex = table("fs2sql_experiments")
    conn.execute(ex.delete().where((ex.c.source_id == source_id)
                                   & (ex.c.source_experiment_id == source_id_exp)))
    conn.execute(ex.insert(), [{"source_id": source_id, "source_experiment_id": source_id_exp,
                                "experiment_id": mapped.experiment_id, "owner": mapped.owner,
                                "name": mapped.name}])


def owners_of(conn, experiment_id: int) -> List[str]:
    ex = table("fs2sql_experiments")
    return [r.source_id for r in conn.execute(ex.select().where(
        (ex.c.experiment_id == experiment_id) & ex.c.owner))]


def drop_experiment(conn, source_id: str, source_experiment_id: int) -> None:
    ex = table("fs2sql_experiments")
    conn.execute(ex.delete().where((ex.c.source_id == source_id)
                                   & (ex.c.source_experiment_id == source_experiment_id)))


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]
