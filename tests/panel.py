"""Shared parts of the server and panel tests: a real server on a free port, Debian's
chromium under Playwright, and a browser context signed in as a given person.

Signing in here opens a server-side session the way the OIDC callback does (the OIDC flow
itself is tested in tests/integration/test_identity_oidc.py), so each panel test does not pay
for a provider round trip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from wflo import _config
from wflo.auth import access, tokens
from wflo.server import create_app, serve_in_thread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(cfg: _config.Settings | None = None, port: int | None = None) -> AbstractContextManager[str]:
    """The wflo server (uvicorn, in a thread) on the configured store; yields its base URL."""
    return serve_in_thread(create_app(cfg), port=port or 0)


def require_chromium() -> None:
    """Skip without Debian's chromium, except in CI, where its absence fails the test."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it: apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")


def dump_dom(page: Path, profile: Path) -> tuple[str, str]:
    """A static page rendered by headless chromium: its DOM after scripts, and the browser's log."""
    require_chromium()
    proc = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={profile}", "--no-first-run", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright (never a downloaded browser); fails in CI if missing."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def grant(principal: str, role: str, scope: str = "*") -> None:
    access().grant(principal, role, scope, who=access().local("user:root"))


def signed_in(browser: Any, base: str, principal: str, *, role: str | None = None, scope: str = "*") -> Any:
    """A new browser context signed in as ``principal`` (granted ``role`` first, if given).

    Console errors and failed requests on any page of the context fail the test that reads
    ``context.errors`` (a list of strings)."""
    if role:
        grant(principal, role, scope)
    sid, csrf = tokens().open_session(principal, ttl=timedelta(hours=1))
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    host = base.split("//", 1)[1].split(":")[0]
    ctx.add_cookies([
        {"name": "wflo_session", "value": sid, "domain": host, "path": "/", "httpOnly": True},
        {"name": "wflo_csrf", "value": csrf, "domain": host, "path": "/"},
    ])  # fmt: skip
    errors: list[str] = []
    ctx.errors = errors
    ctx.on("page", lambda page: page.on("pageerror", lambda exc: errors.append(str(exc))))
    ctx.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return ctx


def shot(page: Any, name: str) -> Path:
    """A full-page screenshot: into ``$WFLO_SCREENSHOTS`` (``WFLO_SCREENSHOTS=docs/img`` renews
    the docs' pictures), else into a temporary folder, so a test run leaves the checkout as it was."""
    import tempfile

    folder = Path(os.environ.get("WFLO_SCREENSHOTS") or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path
