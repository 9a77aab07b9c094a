"""Fixtures shared by the unit tests of more than one package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def app(configured: str) -> Any:
    """The server's app on the configured store, ``user:root`` its first admin (a module may
    define its own ``app``, which then takes precedence)."""
    from wflo.auth import access
    from wflo.server import create_app

    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    return create_app()


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    """A client of :func:`app` that answers a server error as a 500 (what a caller sees)
    instead of raising it."""
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
