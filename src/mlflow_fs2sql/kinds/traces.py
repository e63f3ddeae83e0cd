"""traces: not migrated yet (issue 3)."""
