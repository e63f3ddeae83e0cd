"""fs2sql: migrate an MLflow FileStore (``mlruns``) into an SQL database."""

__version__ = "0.1.0"
