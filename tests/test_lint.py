"""House style is part of the build: ruff (lint and format) and mypy --strict on src/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "cmd",
    [
        ["ruff", "check", "src", "tests", "bench", "examples"],
        ["ruff", "format", "--check", "src", "tests", "bench", "examples"],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_passes(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None and not (Path(sys.executable).parent / cmd[0]).exists():
        pytest.fail(f"{cmd[0]} is not installed: pip install -e '.[dev]'")
    exe = str(Path(sys.executable).parent / cmd[0]) if (Path(sys.executable).parent / cmd[0]).exists() else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
