"""registry: not migrated yet (issue 3)."""
