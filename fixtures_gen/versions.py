"""MLflow releases the fixture stores are generated with."""

LATEST_1X = "1.30.1"  # sizes small and full only (no registry FileStore in 1.x)
LATEST_2X = "2.22.5"
V32 = "3.2.0"
LATEST_3X = "3.17.2"

ALL_VERSIONS = (LATEST_2X, V32, LATEST_3X)
SIZES = ("small", "full", "edge")

# Python used for every fixture venv (all three MLflow lines support it).
VENV_PYTHON_VERSION = "3.11"
