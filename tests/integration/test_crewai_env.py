"""CrewAI in an environment of its own.

crewai 1.15 pins ``openai<3``, ``pydantic<2.13`` and ``mcp<2``; the OpenAI Agents SDK (also in
the dev extra) needs ``openai>=3``. One environment cannot hold both, so where crewai is not
installed this test builds a second virtualenv with ``wflo[postgres,tools,crewai]`` and runs
``test_crewai.py`` there, requiring every test in it to pass (none skipped). Where crewai is
installed, ``test_crewai.py`` runs in this environment and this test has nothing to add.

Building that environment takes minutes (the pip install), so it is announced in pytest's
header and started in the background as soon as this test is collected (see
``tests/integration/conftest.py``), at low CPU priority: the install overlaps the rest of the
suite instead of adding to it. The test then waits for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("WFLO_CREWAI_VENV", ROOT / ".venv-crewai"))
LOG = VENV.parent / (VENV.name + ".log")
NODE = "test_crewai_env.py::test_crewai_suite_in_its_own_environment"


def needed() -> bool:
    """Whether this environment lacks crewai, so the test must build one that has it."""
    return importlib.util.find_spec("crewai") is None


_build: list[subprocess.Popen[bytes]] = []


def start_build() -> subprocess.Popen[bytes]:
    """Create the venv and install ``wflo[postgres,tools,crewai]`` in it, in the background (once)."""
    if not _build:
        python = VENV / "bin" / "python"
        steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(VENV)]]
        steps.append([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[postgres,tools,crewai]",
                      "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"])  # fmt: skip
        # At low CPU priority (nice 10): the tests running meanwhile keep the CPU.
        script = "import json, os, subprocess, sys\nos.nice(10)\nfor step in json.loads(sys.argv[1]):\n    subprocess.run(step, check=True)"
        with open(LOG, "wb") as log:  # the child keeps its own descriptor
            _build.append(subprocess.Popen([sys.executable, "-c", script, json.dumps(steps)], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True))  # fmt: skip
    return _build[0]


def stop_build() -> None:
    """At the end of the session: do not leave a half-done install running."""
    if _build and _build[0].poll() is None:
        # Its own process group (pip's children too), and only that group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_build[0].pid, signal.SIGTERM)
        _build[0].wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_crewai_suite_in_its_own_environment() -> None:
    if not needed():
        pytest.skip("crewai is installed here: tests/integration/test_crewai.py runs in this environment")
    build = start_build()
    try:
        code = build.wait(timeout=1200)
    except subprocess.TimeoutExpired:
        build.kill()
        raise
    assert code == 0, LOG.read_text(errors="replace")[-4000:]
    python = VENV / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "VIRTUAL_ENV"))}
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/integration/test_crewai.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail
