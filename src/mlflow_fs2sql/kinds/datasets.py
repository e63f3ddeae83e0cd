"""datasets: not migrated yet (issue 3)."""
