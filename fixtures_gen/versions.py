"""MLflow releases the fixture stores are generated with."""

LATEST_1X = "1.30.1"  # sizes small and full only (no registry FileStore in 1.x)
LATEST_2X = "2.22.5"
V32 = "3.2.0"
LATEST_3X = "3.17.2"

# The newest full MLflow that installs from the registry: its `mlflow server` is started on
# fs2sql's databases (made with `--mlflow-version SERVER`). Full 3.18.0 does not install: its
# mlflow-tracing 3.18.0 was never published.
SERVER = LATEST_3X

ALL_VERSIONS = (LATEST_2X, V32, LATEST_3X)
SIZES = ("small", "full", "edge")

# Python used for every fixture venv (all three MLflow lines support it).
VENV_PYTHON_VERSION = "3.11"
