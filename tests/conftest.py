"""Shared fixtures: each test gets its own store (a SQLite file, or a PostgreSQL schema)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import wflo._config as config


def pytest_report_header(config: pytest.Config) -> str | None:
    """Announce the optional environment a plain `pytest` builds (tests/integration/test_crewai_env.py)."""
    import importlib.util

    if importlib.util.find_spec("crewai") is not None:
        return None
    return (
        "optional environment: tests/integration/test_crewai_env.py builds .venv-crewai (crewai pins openai<3, "
        "which the dev extra cannot hold) in the background while the other tests run; "
        "leave it out with --deselect tests/integration/test_crewai_env.py"
    )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """Under pytest-xdist (``-n``), the controller starts the CrewAI environment's background build,
    once, as soon as a worker's collection shows its test selected: the workers themselves do
    not (see ``tests/integration/conftest.py``); the worker that runs the test waits for it."""
    import importlib.util
    import sys

    if not any(i.endswith("test_crewai_env.py::test_crewai_suite_in_its_own_environment") for i in ids):
        return
    if importlib.util.find_spec("crewai") is not None:
        return
    config = node.config  # type: ignore[attr-defined]
    if getattr(config, "_wflo_crewai_build", False):
        return
    config._wflo_crewai_build = True
    sys.path.insert(0, str(Path(__file__).parent / "integration"))
    try:
        import test_crewai_env as module
    finally:
        sys.path.pop(0)
    module.start_build()
    config.add_cleanup(module.stop_build)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"wflo: building {module.VENV} in the background (log: {module.LOG})")


PG_URL = os.environ.get("WFLO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _clean_wflo_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's WFLO_* variables, nor another test's settings, nor a terminal
    size in the environment (COLUMNS, LINES: a shell may export them, and a pytest-xdist worker has
    them set to 80x24), which would make the CLI cut its piped tables at that width."""
    for key in list(os.environ):
        if key.startswith("WFLO_") and key not in ("WFLO_TEST_PG", "WFLO_SCREENSHOTS"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    config.reset()
    yield
    config.reset()


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # the reason is shown in the skip/fail message
        return f"{type(exc).__name__}: {exc}"


_PG_PROBLEM: list[str | None] = []


def pg_problem() -> str | None:
    if not _PG_PROBLEM:
        _PG_PROBLEM.append(_pg_available())
    return _PG_PROBLEM[0]


def require_pg() -> None:
    """Skip when PostgreSQL is missing, except in CI, where that is a failure."""
    problem = pg_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_URL}: {problem}")
    pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {problem}")


def _pg_schema_url() -> Iterator[str]:
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        config.reset()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A fresh, empty store URL: the same test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/wflo.db"
    else:
        require_pg()
        yield from _pg_schema_url()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/wflo.db"


@pytest.fixture
def pg_url() -> Iterator[str]:
    require_pg()
    yield from _pg_schema_url()


@pytest.fixture
def configured(store_url: str) -> Iterator[str]:
    """wflo configured on a fresh store (both backends)."""
    config.configure(database=store_url, lease_seconds=5.0, poll_interval=0.05)
    yield store_url
    config.reset()
