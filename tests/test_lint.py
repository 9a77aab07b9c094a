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


def _private_imports(package: str) -> list[str]:
    """Imports in ``wflo.<package>`` of another package's private module (``wflo.cost._ledger``,
    ``wflo._config``): what ``file:line module`` each names."""
    import ast

    found = []
    for path in sorted((ROOT / "src" / "wflo" / package).rglob("*.py")):
        parts = ["wflo", *path.relative_to(ROOT / "src" / "wflo").with_suffix("").parts]
        here = parts[:-1]  # the package the module is in
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = [*base, *(node.module.split(".") if node.module else [])]
                targets = [".".join([*module, alias.name]) for alias in node.names]
            for target in targets:
                names = target.split(".")
                if names[0] != "wflo" or names[:2] == ["wflo", package]:
                    continue  # another library, or this package's own modules
                if any(n.startswith("_") and not n.startswith("__") for n in names[1:]):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {target}")
    return found


@pytest.mark.parametrize("package", ["server", "cli"])
def test_server_and_cli_use_public_names_only(package: str) -> None:
    """The server and the CLI are clients of the public API: another package's private module
    (or a private name of it) is off limits, so they keep working when its insides change."""
    assert _private_imports(package) == []


def test_the_private_import_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "src" / "wflo" / "server"
    folder.mkdir(parents=True)
    (folder / "_x.py").write_text(
        "from ..cost._ledger import usd_str\nfrom .. import _config\nimport wflo._wiring\n"
        "from ..cost import usd_str as fine\nfrom . import _routes\nfrom .._errors import UserError\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [line.split(" ")[1] for line in _private_imports("server")] == [
        "wflo.cost._ledger.usd_str", "wflo._config", "wflo._wiring", "wflo._errors.UserError"
    ]  # fmt: skip
