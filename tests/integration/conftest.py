"""Integration tests: the scripted LLM server fixture, and frameworks that cannot share this environment."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from wflo.testing import LLMServer

CREWAI_NODE = "test_crewai_env.py::test_crewai_suite_in_its_own_environment"

# crewai pins openai<3, which the Agents SDK here cannot live with: where crewai is missing,
# test_crewai_env.py builds a virtualenv with it and runs test_crewai.py there (every test must
# pass, none skip), so the file is not collected here as well.
collect_ignore = [] if importlib.util.find_spec("crewai") is not None else ["test_crewai.py"]


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect: a test left out starts no build
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start building the CrewAI environment as soon as its test is selected (announced, not silent),
    and run that test last, so the build overlaps the whole suite instead of the suite waiting for it.
    In an xdist worker the controller starts the build (``tests/conftest.py``), not each worker."""
    for i, item in enumerate(items):
        module = getattr(item, "module", None)
        if item.nodeid.endswith(CREWAI_NODE) and module:
            items.append(items.pop(i))
            if module.needed() and not hasattr(config, "workerinput"):
                module.start_build()
                reporter = config.pluginmanager.get_plugin("terminalreporter")
                if reporter is not None:
                    reporter.write_line(f"wflo: building {module.VENV} in the background (log: {module.LOG})")
                config.add_cleanup(module.stop_build)
            return


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    """wflo's scripted OpenAI/Anthropic-compatible server, on a free port, for one test."""
    with LLMServer() as server:
        yield server
