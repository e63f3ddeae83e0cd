"""The README's guide is run: every `fs2sql ...` command in its bash blocks, as a user would,
in a folder holding an mlruns store (the bundled sample); and every documented flag exists."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "mlflow_fs2sql" / "data" / "example-mlruns"


def bash_blocks():
    return re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def fs2sql_commands(block):
    for line in block.splitlines():
        line = re.split(r"\s+#", line)[0].strip()
        for part in line.split("&&"):
            part = part.strip()
            if part.startswith("fs2sql "):
                yield shlex.split(part)[1:]


BLOCKS = [b for b in bash_blocks() if list(fs2sql_commands(b))]


def test_the_guide_has_commands_to_run():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.strip().splitlines()[0][:50])
def test_readme_block_runs(block, tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "mlruns")
    for args in fs2sql_commands(block):
        result = subprocess.run([sys.executable, "-m", "mlflow_fs2sql", *args], cwd=tmp_path,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])


def test_every_documented_flag_exists():
    text = README.read_text(encoding="utf-8")
    flags = set(re.findall(r"^\| `(--[a-z-]+)[ `,]", text, re.M))
    assert {"--verify", "--dry-run", "--force", "--skip-invalid", "--json"} <= flags
    helps = "".join(subprocess.run([sys.executable, "-m", "mlflow_fs2sql", *cmd, "--help"],
                                   capture_output=True, text=True).stdout
                    for cmd in (["migrate"], ["verify"], ["sync"], []))
    assert sorted(f for f in flags if f not in helps) == []


def test_every_exit_code_is_documented():
    from mlflow_fs2sql import errors

    text = README.read_text(encoding="utf-8")
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", text, re.M)}
    assert codes <= documented
