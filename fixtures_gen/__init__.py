"""Fixture generation for fs2sql: real MLflow FileStores and an oracle of what MLflow sees.

Development tooling only (not shipped in the wheel). See ``fixtures_gen/README.md``.
"""
