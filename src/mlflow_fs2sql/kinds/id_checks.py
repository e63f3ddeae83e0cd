"""IDs that MLflow 3.18 no longer accepts in a FileStore (``_validate_path_component``,
``_validate_new_trace_id`` in ``mlflow/store/tracking/file_store.py``).

fs2sql migrates them as they are -- the SQL store holds any text and never builds a path from
them -- but says how many there are: they came from another tool or a hand edit, MLflow 3.18's
FileStore no longer writes to such logged models nor reads such assessments, and a trace ID
with ``%``, ``?``, ``#`` or control characters breaks the trace's artifact URI: MLflow (3.17.2's
FileStore, 3.18.0's FileStore and SQL store) cannot load its spans and leaves it out of
``search_traces``.
"""

from __future__ import annotations

from typing import Optional

NOTE_PATH_LIKE = ("{n} ID(s) of logged models or assessments end in a space or a period, "
                  "which MLflow 3.18's FileStore refuses (it takes them for path tricks: it no "
                  "longer logs to or updates such models, nor reads such assessments); migrated "
                  "as they are, and MLflow's SQL store reads and writes them.")
NOTE_TRACE_ID = ("{n} trace ID(s) contain '%', '?', '#' or control characters, which MLflow 3.18 "
                 "no longer creates: their artifact URIs may not resolve (spans may not "
                 "load). Migrated as they are.")


def path_like(value: str) -> bool:
    """What ``_validate_path_component`` rejects and a folder name can still be: a name that
    Windows' normalisation would change (trailing spaces or periods)."""
    return value.rstrip(" .") != value


def url_unsafe_trace_id(value: str) -> bool:
    """What ``_validate_new_trace_id`` rejects beyond a path component."""
    return any(c in "%?#" or ord(c) < 32 or ord(c) == 127 for c in value)


def note_ids(walk, trace_id: Optional[str] = None, *ids: str) -> None:
    """Count the IDs of one entity MLflow 3.18 would refuse (``walk.notes``)."""
    from .logged_models import add_note

    add_note(walk, NOTE_PATH_LIKE, sum(1 for i in ids if path_like(i)))
    if trace_id is not None:
        add_note(walk, NOTE_TRACE_ID, int(url_unsafe_trace_id(trace_id)))
        add_note(walk, NOTE_PATH_LIKE, int(path_like(trace_id)))
