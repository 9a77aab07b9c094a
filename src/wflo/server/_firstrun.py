"""First start: a one-time admin sign-in link, so a new deployment needs no OIDC to begin.

``wflo server`` on a store with no admin calls ``FirstSignIn.issue`` and prints
``<server>/auth/first?code=…``. The code is 256 random bits; the store keeps only its SHA-256
digest, for one hour, for one use. Opening the link shows a button (a link preview or a
prefetcher cannot spend it); pressing it makes the named principal the bootstrap admin
(``Access.bootstrap``, refused once any admin exists) and opens their browser session. Every
attempt, good or bad, is on the system chain; attempts are rate-limited per address.
"""

from __future__ import annotations

import html
import secrets
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..auth import Access, Principal, Tokens, check_principal, token_digest
from ..config import settings
from ..errors import AccessDeniedError
from ..store import NewEvent
from ._routes import CSRF_COOKIE, PUBLIC, SESSION_COOKIE, Router, client_address

VALID_SECONDS = 3600.0
PATH = "/auth/first"


class FirstSignIn:
    """One-time admin sign-in codes of one store."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.store = access.store

    def issue(self, principal: str) -> str | None:
        """A new code that makes ``principal`` the first admin; ``None`` when an admin exists."""
        check_principal(principal)
        if self.access.has_admin():
            return None
        code = secrets.token_urlsafe(32)
        # The store's clock: the replica that redeems the link judges its hour on it too.
        expires = self.store.now(VALID_SECONDS)

        def op(cur: Any) -> None:
            self.store.execute(
                cur,
                "INSERT INTO signin_codes (digest, principal, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, NULL)",
                (token_digest(code), principal, self.store.now(cur=cur), expires),
            )

        event = NewEvent("auth.first_signin_issued", {"principal": principal, "expires_at": expires, "via": "local"})
        self.store.append_system([event], ops=[op])
        return code

    def redeem(self, code: str, *, remote: str | None) -> str:
        """Spend ``code``: its principal becomes the admin; returns it. ``AccessDeniedError`` otherwise.

        The code is marked used in the same transaction that checks it, so of two presses at
        once one wins; the refusal of the other is recorded like any failed sign-in.
        """
        want = token_digest(code or "")
        found: list[str] = []
        disabled: list[str] = []

        def op(cur: Any) -> None:
            st = self.store
            now = st.now(cur=cur)
            st.execute(cur, "SELECT principal, expires_at, used_at FROM signin_codes WHERE digest = ?", (want,))
            row = cur.fetchone()
            if row is None:
                return
            st.execute(cur, "SELECT disabled FROM identities WHERE id = ?", (row[0],))
            state = cur.fetchone()
            if state is not None and state[0]:  # disabled by an admin: the link is void
                disabled.append(row[0])
                return
            if row[2] is not None or row[1] < now:
                return
            st.execute(cur, "UPDATE signin_codes SET used_at = ? WHERE digest = ? AND used_at IS NULL", (now, want))
            if cur.rowcount == 1:
                found.append(row[0])

        reason = None
        try:
            self.store.write(op)
            if disabled:
                reason = f"{disabled[0]} is disabled"
            elif not found:
                reason = self._why(want)
            else:
                self.access.bootstrap(found[0], who=Principal(id=found[0], via="panel"))
        except AccessDeniedError:
            reason = "an admin exists already"
        if reason is not None:
            self.store.append_system(
                [NewEvent("auth.failed", {"via": "first-signin", "remote": remote, "reason": reason})]
            )
            raise AccessDeniedError(principal="anonymous", permission="admin:*", scope="*", detail=reason)
        self.store.append_system(
            [NewEvent("auth.first_signin", {"by": found[0], "principal": found[0], "via": "panel", "remote": remote})]
        )
        return found[0]

    def _why(self, want: str) -> str:
        rows = self.store.read("SELECT expires_at, used_at FROM signin_codes WHERE digest = ?", (want,))
        if not rows:
            return "unknown sign-in code"
        if rows[0][1]:
            return "this sign-in link was used already"
        return "this sign-in link has expired (start wflo server again for a new one)"


def register(router: Router) -> None:
    first = FirstSignIn(router.access)
    tokens: Tokens = router.tokens

    def page(body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>wflo: first sign-in</title>"
            f"<link rel='stylesheet' href='/static/wflo.css'></head><body><main>{body}</main></body></html>",
            status_code=status,
            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"},
        )

    @router.route("GET", PATH, permission=PUBLIC, response_class=HTMLResponse, include_in_schema=False)
    def first_form(request: Request, code: str = "") -> HTMLResponse:
        # Showing the form spends nothing: a chat app's link preview cannot use the code up.
        return page(
            "<h1>First sign-in</h1><p>This one-time link makes you the first admin of this wflo server.</p>"
            f"<form method='post' action='{PATH}'><input type='hidden' name='code' value='{html.escape(code)}'>"
            "<button id='first-signin' type='submit'>Sign in as the admin</button></form>"
        )

    @router.route("POST", PATH, permission=PUBLIC, include_in_schema=False)
    async def first_signin(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        remote = client_address(request)
        if not await run_in_threadpool(router.limiter.allow, f"first:{remote}"):
            return page("<p id='error'>too many attempts; wait a minute</p>", 429)
        code = str((await request.form()).get("code") or "")
        try:
            principal = await run_in_threadpool(first.redeem, code, remote=remote)
        except AccessDeniedError as exc:
            return page(f"<p id='error'>sign-in refused: {html.escape(str(exc.detail))}</p>", 401)
        cfg = settings()
        ttl = timedelta(hours=cfg.session_hours)
        sid, csrf = await run_in_threadpool(tokens.open_session, principal, ttl=ttl, remote=remote)
        resp = RedirectResponse("/admin", 303)
        age = int(ttl.total_seconds())
        resp.set_cookie(SESSION_COOKIE, sid, max_age=age, httponly=True, secure=cfg.cookie_secure, samesite="lax")
        resp.set_cookie(CSRF_COOKIE, csrf, max_age=age, httponly=False, secure=cfg.cookie_secure, samesite="strict")
        return resp
