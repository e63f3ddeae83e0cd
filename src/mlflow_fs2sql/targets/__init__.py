"""Where the rows go. Everything that differs by database lives behind ``Target``.

SQLite (``sqlite.py``): build into a temporary file beside the target, then rename it into place.
The walker, the writer, ``verify`` and the report never ask which database it is.
"""

from __future__ import annotations

from typing import Optional

from ..errors import TargetError
from .base import Target


def open_target(target: str, *, overwrite: bool = False, revision: Optional[str] = None) -> Target:
    """The ``Target`` for a path or URL (only SQLite so far)."""
    lowered = target.lower()
    if "://" in lowered and not lowered.startswith("sqlite:"):
        scheme = lowered.split("://", 1)[0]
        raise TargetError(
            f"fs2sql cannot write to '{scheme}' databases yet; it writes SQLite files.",
            hint="Give a file path such as out.db or an sqlite:/// URI.",
        )
    from .sqlite import SqliteTarget

    return SqliteTarget(target, overwrite=overwrite, revision=revision)


__all__ = ["Target", "open_target"]
