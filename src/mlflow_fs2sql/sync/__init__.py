"""``fs2sql sync``: a database kept up to date with FileStores that are still being written,
merging several into one (see ``core.py`` for the steps, ``units.py`` for change detection,
``merge.py`` for the rules, ``state.py`` for what the database remembers)."""

from .core import DEFAULT_LOCK_TIMEOUT_S, SyncOptions, sync

__all__ = ["DEFAULT_LOCK_TIMEOUT_S", "SyncOptions", "sync"]
