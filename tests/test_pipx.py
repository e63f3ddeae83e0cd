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
