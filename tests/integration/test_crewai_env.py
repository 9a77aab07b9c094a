"""CrewAI in an environment of its own.

crewai 1.15 pins ``openai<3``, ``pydantic<2.13`` and ``mcp<2``; the OpenAI Agents SDK (also in
the dev extra) needs ``openai>=3``. One environment cannot hold both, so where crewai is not
installed this test builds a second virtualenv with ``wflo[postgres,tools,crewai]`` and runs
``test_crewai.py`` there, requiring every test in it to pass (none skipped). Where crewai is
installed, ``test_crewai.py`` runs in this environment and this test has nothing to add.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("WFLO_CREWAI_VENV", ROOT / ".venv-crewai"))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_crewai_suite_in_its_own_environment() -> None:
    if importlib.util.find_spec("crewai") is not None:
        pytest.skip("crewai is installed here: tests/integration/test_crewai.py runs in this environment")
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[postgres,tools,crewai]",
         "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "VIRTUAL_ENV"))}
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/integration/test_crewai.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail
