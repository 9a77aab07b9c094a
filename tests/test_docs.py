"""Docs that cannot rot: runnable blocks run, the CLI reference is current, examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for i, match in enumerate(_BLOCK.finditer(path.read_text())):
            found.append((f"{path.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[w for w, _ in _blocks()])
def test_runnable_doc_blocks(where: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{where} failed:\n{proc.stdout}\n{proc.stderr}"


def test_there_are_runnable_blocks() -> None:
    assert len(_blocks()) >= 2


def test_cli_reference_is_current() -> None:
    from wflo.cli._docs import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), "run: python -m wflo.cli._docs > docs/cli.md"


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_examples_run(example: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(example)], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{example.name} failed:\n{proc.stdout}\n{proc.stderr}"


def test_mkdocs_site_builds_strict(tmp_path: Path) -> None:
    """Every page is in the nav and every link resolves (`mkdocs build --strict`)."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "budgets" / "index.html").exists()


def test_configuration_reference_lists_every_setting() -> None:
    import dataclasses

    from wflo._config import Settings

    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f.name for f in dataclasses.fields(Settings) if f"| `{f.name}` |" not in page]
    assert not missing, f"docs/configuration.md does not document: {missing}"
