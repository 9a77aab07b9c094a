"""Runs: list, detail, events, cancel, resume, retry, and the live event stream (issue 17)."""

from __future__ import annotations

from ._routes import Router


def register(router: Router) -> None:
    """The runs API and pages (none yet)."""
