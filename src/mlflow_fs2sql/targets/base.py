"""The interface every target database implements."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from ..rows import TargetColumns


class Target:
    """One migration's destination. Lifecycle: ``prepare`` -> ``begin`` -> inserts -> ``publish``
    (or ``abort`` on any failure). ``display`` never shows credentials."""

    display: str = ""
    revision: str = ""
    mlflow_skinny_version: str = ""
    # Largest experiment ID the schema can hold (None: any 64-bit ID, as on SQLite). Servers
    # declare MLflow's 32-bit columns; ``ids.py`` plans keep/renumber/widen against it.
    experiment_id_limit: Optional[int] = None
    can_widen: bool = False  # ``--experiment-ids widen`` possible (BIGINT columns)
    widen: bool = False  # set before ``begin``: widen experiment ID columns in the new schema

    def prepare(self) -> None:
        """Check the target can be written, before any source file is read."""
        raise NotImplementedError

    def begin(self):
        """Create the empty schema and return an open connection in one transaction."""
        raise NotImplementedError

    conn = None  # the open connection of the load (``begin``)
    _engine = None
    _columns: Optional[TargetColumns] = None

    def columns(self) -> TargetColumns:
        """Column names and sizes as the target's schema has them (read once)."""
        if self._columns is None:
            from ..schema import read_target_columns

            self._columns = read_target_columns(self.conn)
        return self._columns

    def insert_order(self, table: str, columns: Sequence[str]) -> List[str]:
        """The order in which ``insert_many`` expects the values of each row."""
        return list(columns)

    def insert_many(self, table: str, columns: Sequence[str], rows: List[tuple]) -> None:
        raise NotImplementedError

    def publish(self, before: Optional[Callable[[], None]] = None) -> None:
        """Commit and make the result visible; ``before`` runs (e.g. verify) just before."""
        raise NotImplementedError

    def _close_connection(self) -> None:
        """Close the load's connection and engine, quietly (also on a half-open one)."""
        try:
            if self.conn is not None:
                self.conn.close()
            if self._engine is not None:
                self._engine.dispose()
        except Exception:
            pass
        self.conn = self._engine = None

    def abort(self) -> None:
        """Undo everything; the target is as it was before ``prepare``."""
        raise NotImplementedError

    def start_command(self) -> str:
        """The command that starts MLflow's server on the result."""
        raise NotImplementedError

    def start_requires(self) -> str:
        """What MLflow's environment needs for that command (a database driver), or ''."""
        return ""
