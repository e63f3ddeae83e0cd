"""logged_models: not migrated yet (issue 3)."""
