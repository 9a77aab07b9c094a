"""The panel's shell: one HTML frame for every page, its static files, and page routes.

Pages are plain HTML frames that load one ES module from ``/static``; the module reads the
data through the same ``/api/v1`` endpoints a curl user calls, so every action in the panel is
an API call by the signed-in person and every permission is enforced once, by the API. Nothing
is fetched from outside the server (the Content-Security-Policy says so to the browser).

Adding a page: ``page_route(router, "/runs", "Runs", script="runs.js")`` in the module that
owns it, and a ``static/runs.js`` that ``import {…} from "./wflo.js"``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from ..auth import PERMISSIONS, Principal, role_allows
from ._routes import CSRF_COOKIE, PUBLIC, Router

STATIC = Path(__file__).parent / "static"
_STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg|png)$")
_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "png": "image/png"}

NAV: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/runs", "Runs"),
    ("/approvals", "Approvals"),
    ("/costs", "Costs"),
    ("/audit", "Audit"),
    ("/tools", "Tools"),
    ("/workers", "Workers"),
    ("/admin", "Admin"),
)
"""The navigation bar, in order (a path is shown once its page is registered)."""

# Scripts and styles only from this server; no framing; no inline script (the CSRF token and
# the page's data reach the module through the DOM, not through inline code).
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
}  # fmt: skip


def frame(request: Request, who: Principal | None, *, title: str, body: str, script: str | None = None,
          registered: set[str] | None = None, status: int = 200) -> HTMLResponse:  # fmt: skip
    """A whole page: header (who is signed in, sign-out), navigation, ``body``, one module."""
    here = request.url.path
    nav = "".join(
        f"<a href='{p}'{' aria-current=page' if p == here else ''}>{html.escape(label)}</a>"
        for p, label in NAV
        if registered is None or p in registered
    )
    if who is None:
        user = "<span id='status'>not signed in</span> <a id='login' href='/auth/login'>Sign in</a>"
    else:
        roles = ", ".join(f"{r}@{s}" for r, s in who.grants) or "no roles"
        csrf = html.escape(request.cookies.get(CSRF_COOKIE, ""))
        user = (
            f"<span id='status'>signed in as <b id='who'>{html.escape(who.id)}</b></span> "
            f"<span id='roles' class='muted'>{html.escape(roles)}</span>"
            "<form method='post' action='/auth/logout'>"
            f"<input type='hidden' name='csrf' value='{csrf}'><button id='logout' type='submit'>Sign out</button></form>"
        )
    mod = f"<script type='module' src='/static/{html.escape(script)}'></script>" if script else ""
    grants = " ".join(f"{r}@{s}" for r, s in who.grants) if who else ""
    # What the person may do somewhere, for the pages to hide what they may not (the API decides).
    perms = " ".join(p for p in PERMISSIONS if who and any(role_allows(r, p) for r, _ in who.grants))
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)} · wflo</title><link rel='icon' href='data:,'><link rel='stylesheet' href='/static/wflo.css'></head>"
        f"<body data-principal='{html.escape(who.id if who else '')}' data-grants='{html.escape(grants)}' data-permissions='{perms}'>"
        f"<header><a class='brand' href='/'>wflo</a><nav>{nav}</nav><div class='user'>{user}</div></header>"
        f"<main id='main'><h1>{html.escape(title)}</h1>{body}</main>{mod}</body></html>",
        status_code=status,
        headers=HEADERS,
    )


def page_route(router: Router, path: str, title: str, *, script: str, body: str = "") -> None:
    """Register a panel page: signed-out visitors go to sign-in and come back here."""
    pages: set[str] = router.app.state.pages
    pages.add(path)

    @router.route("GET", path, permission=PUBLIC, response_class=HTMLResponse, include_in_schema=False)
    def show(request: Request) -> Response:
        who: Principal | None = request.state.who
        if who is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/auth/login?next=" + _quote(target), 303)
        return frame(request, who, title=title, body=body, script=script, registered=pages)

    show.__name__ = "page_" + re.sub(r"\W", "_", path.strip("/") or "home")


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def register(router: Router) -> None:
    """The static files every page loads."""
    router.app.state.pages = getattr(router.app.state, "pages", set()) | {"/"}

    @router.route("GET", "/static/{name}", permission=PUBLIC, include_in_schema=False)
    def static(name: str) -> Response:
        path = STATIC / name
        if not _STATIC_NAME.match(name) or not path.is_file():
            raise HTTPException(404, "no such file")
        return FileResponse(
            path, media_type=_TYPES[name.rsplit(".", 1)[1]],
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )  # fmt: skip


Register = Callable[[Router], None]
