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

Under pytest-xdist (``-n``) the workers collect, not the controller: the controller starts the
build (``pytest_xdist_node_collection_finished`` in ``tests/conftest.py``), once, and the worker
that runs this test waits for the exit status the build writes to ``STATUS``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("WFLO_CREWAI_VENV", ROOT / ".venv-crewai"))
LOG = VENV.parent / (VENV.name + ".log")
STATUS = VENV.parent / (VENV.name + ".status")  # the build's exit status, written when it ends
NODE = "test_crewai_env.py::test_crewai_suite_in_its_own_environment"


def needed() -> bool:
    """Whether this environment lacks crewai, so the test must build one that has it."""
    return importlib.util.find_spec("crewai") is None


_build: list[subprocess.Popen[bytes]] = []


def start_build() -> subprocess.Popen[bytes]:
    """Create the venv and install ``wflo[postgres,tools,crewai]`` in it, in the background (once)."""
    if not _build:
        python = VENV / "bin" / "python"
        # A venv whose creation was cut off (a session ended during ensurepip) has a python but
        # no pip, and pip install then failed in every later session: it is made again instead.
        made = (VENV / "bin" / "pip").exists()
        steps = [] if made else [[sys.executable, "-m", "venv", "--clear", str(VENV)]]
        steps.append([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[postgres,tools,crewai]",
                      "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100"])  # fmt: skip
        # At low CPU priority (nice 10): the tests running meanwhile keep the CPU.
        # It writes its exit status to STATUS at the end (to a temporary name, then renamed), so a
        # process other than its parent (an xdist worker) can wait for it.
        script = (
            "import json, os, subprocess, sys\nos.nice(10)\ncode = 0\nfor step in json.loads(sys.argv[1]):\n"
            "    code = subprocess.run(step).returncode\n    if code:\n        break\n"
            "with open(sys.argv[2] + '.tmp', 'w') as f:\n    f.write(str(code))\nos.replace(sys.argv[2] + '.tmp', sys.argv[2])\n"
            "sys.exit(code)"
        )
        STATUS.unlink(missing_ok=True)  # a previous session's
        with open(LOG, "wb") as log:  # the child keeps its own descriptor
            _build.append(subprocess.Popen([sys.executable, "-c", script, json.dumps(steps), str(STATUS)], stdout=log,
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


def wait_for_build(timeout: float) -> int:
    """The build's exit status: of the build this process started (or starts now), or, in an
    xdist worker, of the one the controller started."""
    if _build or "PYTEST_XDIST_WORKER" not in os.environ:
        build = start_build()
        try:
            return build.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            build.kill()
            raise
    deadline = time.monotonic() + timeout
    while not STATUS.exists():
        assert time.monotonic() < deadline, (
            f"the build did not end in {timeout} s: " + LOG.read_text(errors="replace")[-4000:]
        )
        time.sleep(1)
    return int(STATUS.read_text())


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_crewai_suite_in_its_own_environment() -> None:
    if not needed():
        pytest.skip("crewai is installed here: tests/integration/test_crewai.py runs in this environment")
    code = wait_for_build(timeout=1200)
    assert code == 0, LOG.read_text(errors="replace")[-4000:]
    python = VENV / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "VIRTUAL_ENV"))}
    proc = subprocess.run(
        # addopts overridden: that environment has no pytest-xdist (nor needs it for one file).
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=--strict-markers", "-rs",
         "tests/integration/test_crewai.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail
