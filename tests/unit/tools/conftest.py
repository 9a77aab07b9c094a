"""Fixtures shared by the tools tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site directory on ``sys.path`` for tool packages made by a test (readable by the
    sandbox's uid), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="wflo-site-"))
    root.chmod(0o755)
    monkeypatch.syspath_prepend(str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
