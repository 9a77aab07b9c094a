"""Shared fixtures: each test gets its own store (a SQLite file, or a PostgreSQL schema)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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


PG_URL = os.environ.get("WFLO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _clean_wflo_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's WFLO_* variables, nor another test's settings."""
    for key in list(os.environ):
        if key.startswith("WFLO_") and key not in ("WFLO_TEST_PG", "WFLO_SCREENSHOTS"):
            monkeypatch.delenv(key, raising=False)
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
