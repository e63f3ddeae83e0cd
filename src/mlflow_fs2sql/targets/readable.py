"""Is the database ``verify`` was given an MLflow database at all? One paragraph if not.

``verify`` reads MLflow's tables and ``alembic_version``; on an empty database, one holding
other tables or a half-made schema, the driver's "no such table" would be all the user saw.
What the database holds is said instead, with the command that makes an MLflow database.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from ..errors import TargetError

# Tables every MLflow schema since its first revision has, and which verify reads first.
_REQUIRED = ("alembic_version", "experiments", "runs")


def check_mlflow_database(conn, target: str,
                          source: str) -> Tuple[str, List[str], Optional[str]]:
    """(the database's Alembic revision, warnings for the report, a warning for when verify
    finds differences); raises ``TargetError`` when ``conn`` holds no MLflow schema (``target``
    is the display name, never with a password)."""
    from sqlalchemy import inspect

    tables = sorted(inspect(conn).get_table_names())
    make = (f"Make one from the store with: fs2sql migrate {_quoted(source)} {_quoted(target)} "
            "(into a new file or an empty database), then verify it.")
    if not tables:
        raise TargetError(
            "holds no tables: it is an empty database, not one `fs2sql migrate` (or MLflow) "
            "made, so there is nothing to verify.", path=target, hint=make)
    missing = [t for t in _REQUIRED if t not in tables]
    if "alembic_version" not in tables and "experiments" not in tables:
        raise TargetError(
            f"holds {len(tables)} table{'' if len(tables) == 1 else 's'} but no MLflow schema "
            f"({_list(tables)}): it is not an MLflow database.", path=target, hint=make)
    if missing:
        raise TargetError(
            f"holds part of an MLflow schema: the tables {', '.join(missing)} are missing "
            "(a half-made or hand-edited database?).", path=target, hint=make)
    revision = _revision(conn)
    if not revision:
        raise TargetError(
            "holds MLflow's tables but no Alembic revision (alembic_version is empty), so it is "
            "not a database MLflow's server would open.", path=target, hint=make)
    warnings = [w for w in (_revision_warning(revision),) if w]
    return revision, warnings, _initialised_only(conn, make)


def _initialised_only(conn, make: str) -> Optional[str]:
    """A database MLflow initialised (its Default experiment, no runs), not one fs2sql made:
    every difference verify lists would say only that."""
    experiments = conn.exec_driver_sql("SELECT COUNT(*) FROM experiments").scalar()
    runs = conn.exec_driver_sql("SELECT COUNT(*) FROM runs").scalar()
    if runs or experiments > 1:
        return None
    return ("the database holds no runs and at most MLflow's Default experiment: MLflow "
            "initialised it, or nothing was migrated into it. " + make)


def _revision_warning(revision: str) -> Optional[str]:
    """A warning when no MLflow release fs2sql knows opens a database at ``revision``."""
    from ..releases import installed_release, releases_with_head, table

    mine = installed_release()
    if releases_with_head(revision):
        return None
    if revision in table()["revisions"] or (mine and revision in mine.revisions):
        return (f"the database's Alembic revision {revision} is no release's head: an "
                "MLflow server opens it only after `mlflow db upgrade`.")
    return (f"the database's Alembic revision {revision} is unknown to fs2sql (its table and "
            f"mlflow-skinny {mine.version if mine else '?'}): a newer MLflow made it, or it was "
            "edited; the comparison covers the tables as they are.")


def _revision(conn) -> str:
    row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchone()
    return (row[0] if row else "") or ""


def _list(names: List[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _quoted(text: str) -> str:
    import shlex

    from .server import MASK, shell_argument

    return shell_argument(text) if MASK in text else shlex.quote(text)
