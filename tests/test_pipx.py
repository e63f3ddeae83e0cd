"""Installed as a user installs it: `pipx install .` into a fresh pipx home, then the command
works from the pipx bin folder (the wheel carries the sample store and the release table)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_pipx_install_then_version_and_example(tmp_path):
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"))
    install = subprocess.run([sys.executable, "-m", "pipx", "install", "--python", sys.executable,
                              str(REPO)], env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    fs2sql = tmp_path / "bin" / "fs2sql"
    version = subprocess.run([str(fs2sql), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("fs2sql ")
    demo = subprocess.run([str(fs2sql), "migrate", "--example", str(tmp_path / "demo.db"),
                           "--verify", "-q"], capture_output=True, text=True, env=env)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo.db").stat().st_size > 0


def test_pipx_inject_force_gives_fs2sql_another_mlflow_skinny(tmp_path):
    """README "Which MLflow releases fs2sql supports": `pipx inject --force` swaps the
    mlflow-skinny fs2sql makes its schema with (without --force pipx changes nothing), and
    fs2sql knows the injected release at once."""
    from mlflow_fs2sql.schema import mlflow_skinny_version

    other = "3.17.2" if mlflow_skinny_version() != "3.17.2" else "3.18.0"
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"))
    pipx = [sys.executable, "-m", "pipx"]
    install = subprocess.run([*pipx, "install", "--python", sys.executable, str(REPO)], env=env,
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    fs2sql = str(tmp_path / "bin" / "fs2sql")
    before = subprocess.run([fs2sql, "--version"], capture_output=True, text=True).stdout
    unforced = subprocess.run([*pipx, "inject", "fs2sql", f"mlflow-skinny=={other}"], env=env,
                              capture_output=True, text=True)
    assert unforced.returncode == 0  # pipx's own behaviour: nothing changed, still exit 0
    assert subprocess.run([fs2sql, "--version"], capture_output=True, text=True).stdout == before
    forced = subprocess.run([*pipx, "inject", "--force", "fs2sql", f"mlflow-skinny=={other}"],
                            env=env, capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr[-3000:]
    version = subprocess.run([fs2sql, "--version"], capture_output=True, text=True).stdout
    assert version.splitlines()[1].startswith(f"mlflow-skinny {other}: default schema ")
    assert f"to {other} (" in version.splitlines()[2]
    demo = subprocess.run([fs2sql, "migrate", "--example", str(tmp_path / "demo.db"), "--verify"],
                          capture_output=True, text=True, env=env)
    assert demo.returncode == 0, demo.stderr
    assert f"(mlflow-skinny {other})" in demo.stdout, demo.stdout
    opens = next(line for line in demo.stdout.splitlines() if line.startswith("Opens in: "))
    assert other in opens, opens
