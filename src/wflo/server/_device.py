"""``wflo login`` without pasting a token: the device sign-in routes (RFC 8628 style).

``POST /auth/device`` (public) opens a request and answers the codes; the person opens
``/auth/device/verify?code=…`` where they are signed in (else through sign-in and back), sees
who asks and with which roles, and approves or denies (a form with the CSRF token, like
``/auth/cli-token``); ``POST /auth/device/token`` (public) is the CLI's poll, answered with the
RFC's errors as JSON 400 or the token, once. The requests live in the store
(``wflo.auth.DeviceRequests``), so any replica answers any step.

Guessing is throttled through the shared rate limiter (counted in the store): opening
requests, wrong user codes (per address and per person) and unknown device codes (per address)
each allow 20 a minute.
"""

from __future__ import annotations

import html
from typing import Annotated
from urllib.parse import quote

from fastapi import Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ..auth import DeviceRequest, DeviceRequests, Principal
from ..config import settings
from ..errors import UserError
from ._routes import CSRF_COOKIE, PUBLIC, SIGNED_IN, Router, client_address, who_of

VERIFY = "/auth/device/verify"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>wflo: sign in the CLI</title>"
        f"<link rel='stylesheet' href='/static/wflo.css'></head><body><main>{body}</main></body></html>",
        status_code=status,
        headers={**_NO_STORE, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"},
    )


def _rfc(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=_NO_STORE)


def register(router: Router) -> None:
    devices = DeviceRequests(router.access)
    router.app.state.devices = devices  # tests shorten the interval here
    limiter = router.limiter

    def guesses_blocked(remote: str, who: Principal) -> bool:
        return limiter.blocked(f"device-code:{remote}") or limiter.blocked(f"device-code:{who.id}")

    def wrong_guess(remote: str, who: Principal) -> None:
        limiter.hit(f"device-code:{remote}")
        limiter.hit(f"device-code:{who.id}")
        devices.wrong_code(who, remote=remote)

    @router.route("POST", "/auth/device", permission=PUBLIC)
    def device_start(
        request: Request, client: Annotated[str, Form(max_length=200)] = "", client_id: Annotated[str, Form()] = ""
    ) -> JSONResponse:
        """Open a device sign-in (RFC 8628 §3.2): the CLI gets a secret ``device_code`` to poll
        with, and shows the person ``user_code`` and ``verification_uri``."""
        remote = client_address(request)
        if not limiter.allow(f"device:{remote}"):
            raise HTTPException(429, "too many sign-in requests; wait a minute")
        agent = request.headers.get("user-agent", "")
        start = devices.start(" ".join(p for p in (client or client_id, f"({agent})" if agent else "") if p),
                              remote=remote)  # fmt: skip
        base = (settings().server_url or str(request.base_url)).rstrip("/")
        return JSONResponse(
            {
                "device_code": start.device_code, "user_code": start.shown, "verification_uri": base + VERIFY,
                "verification_uri_complete": f"{base}{VERIFY}?code={start.shown}", "expires_in": start.expires_in,
                "interval": start.interval,
            },
            headers=_NO_STORE,
        )  # fmt: skip

    @router.route("POST", "/auth/device/token", permission=PUBLIC)
    def device_token(
        request: Request, device_code: Annotated[str, Form()] = "", grant_type: Annotated[str, Form()] = ""
    ) -> JSONResponse:
        """The CLI's poll (RFC 8628 §3.4): the token once approved (and only once), else a JSON
        400 with ``error``: ``authorization_pending``, ``slow_down``, ``access_denied``,
        ``expired_token``, ``invalid_grant`` (unknown or collected code)."""
        remote = client_address(request)
        if limiter.blocked(f"device-token:{remote}"):
            return _rfc("slow_down", "too many unknown device codes from this address; wait a minute", 429)
        if grant_type and grant_type != "urn:ietf:params:oauth:grant-type:device_code":
            return _rfc("unsupported_grant_type", "only the device_code grant is served here")
        got = devices.collect(device_code, remote=remote)
        if got.error == "invalid_grant":
            limiter.hit(f"device-token:{remote}")
        if got.error:
            return _rfc(got.error, got.description)
        return JSONResponse({"access_token": got.token, "token_type": "Bearer"}, headers=_NO_STORE)

    @router.route("GET", VERIFY, permission=PUBLIC, response_class=HTMLResponse)
    def device_verify_form(request: Request, code: str = "") -> Response:
        """The page where a signed-in person approves or denies a CLI's sign-in request
        (not signed in: through ``/auth/login`` and back here)."""
        who: Principal | None = request.state.who
        if who is None:
            back = VERIFY + (f"?code={quote(code)}" if code else "")
            return RedirectResponse("/auth/login?next=" + quote(back, safe=""), 303)
        if who.via != "panel":
            return _page("<p id='error'>sign in with the browser to approve a CLI sign-in</p>", 400)
        if not code:
            return _page(
                "<h1>Sign in the wflo CLI</h1><p>Type the code <code>wflo login</code> shows:</p>"
                f"<form method='get' action='{VERIFY}'><input name='code' id='code' autocomplete='off' "
                "placeholder='BCDF-GHJK'><button id='next' type='submit'>Next</button></form>"
            )
        remote = client_address(request)
        if guesses_blocked(remote, who):
            return _page("<p id='error'>too many wrong codes; wait a minute</p>", 429)
        found = devices.find(code)
        if found is None:
            wrong_guess(remote, who)
            return _page("<p id='error'>no pending sign-in request with this code (it may have expired)</p>", 404)
        return _page(_approval_form(found, who, request.cookies.get(CSRF_COOKIE, "")))

    @router.route("POST", VERIFY, permission=SIGNED_IN, response_class=HTMLResponse)
    async def device_verify(request: Request) -> HTMLResponse:
        """Approve (a personal CLI token, handed to the CLI's next poll) or deny. Form fields:
        ``code``, ``decision`` (``approve`` or ``deny``), ``csrf``."""
        who = who_of(request)
        if who.via != "panel":
            return _page("<p id='error'>sign in with the browser to approve a CLI sign-in</p>", 400)
        form = await request.form()
        code, decision = str(form.get("code") or ""), str(form.get("decision") or "")
        remote = client_address(request)
        if decision not in ("approve", "deny"):
            return _page("<p id='error'>decision must be approve or deny</p>", 400)
        if await run_in_threadpool(guesses_blocked, remote, who):
            return _page("<p id='error'>too many wrong codes; wait a minute</p>", 429)
        act = devices.approve if decision == "approve" else devices.deny
        try:
            found = await run_in_threadpool(lambda: act(code, who, remote=remote))
        except UserError as exc:
            await run_in_threadpool(wrong_guess, remote, who)
            return _page(f"<p id='error'>{html.escape(str(exc))}</p>", 400)
        if decision == "deny":
            return _page(f"<p id='done'>Denied: the request {found.shown} gets no token.</p>")
        return _page(f"<p id='done'>Approved: the CLI ({html.escape(found.client)}) is signed in as "
                     f"{html.escape(who.id)}. You may close this page.</p>")  # fmt: skip


def _approval_form(found: DeviceRequest, who: Principal, csrf: str) -> str:
    roles = ", ".join(f"{r}@{s}" for r, s in who.grants) or "none yet"
    e = html.escape
    return (
        "<h1>Sign in the wflo CLI?</h1>"
        f"<p>Code <strong id='user-code'>{e(found.shown)}</strong>: approve only if your terminal shows this code "
        "and you started <code>wflo login</code> yourself just now.</p>"
        f"<dl><dt>asked by</dt><dd id='client'>{e(found.client)}</dd>"
        f"<dt>from</dt><dd id='remote'>{e(found.remote or 'unknown')}</dd>"
        f"<dt>asked at</dt><dd>{e(found.created_at[:19])} UTC (expires {e(found.expires_at[11:19])})</dd>"
        f"<dt>acts as</dt><dd id='as'>{e(who.id)}</dd><dt>with your roles</dt><dd id='roles'>{e(roles)}</dd></dl>"
        "<p>The CLI gets a personal token that acts as you, with your roles as they are at each use, for 30 days "
        "(<code>wflo tokens revoke</code> ends it).</p>"
        f"<form method='post' action='{VERIFY}'><input type='hidden' name='csrf' value='{e(csrf)}'>"
        f"<input type='hidden' name='code' value='{e(found.shown)}'>"
        "<button id='approve' type='submit' name='decision' value='approve'>Approve</button> "
        "<button id='deny' type='submit' name='decision' value='deny'>Deny</button></form>"
    )
