"""Security headers on every answer, so a page or route added later cannot forget them.

A route that sets its own header keeps it (the panel's frame has its CSP, the compliance
report its own, the static files their ``no-cache``); this only fills in what is missing:

- ``X-Content-Type-Options: nosniff`` everywhere (a JSON answer holding stored text is never
  sniffed into HTML).
- ``Cache-Control: no-store`` on ``/api/`` and ``/auth/`` answers: they carry runs' data, a new
  API token's secret (shown once), sign-in state; no browser or proxy keeps them.
- On an HTML answer without a ``Content-Security-Policy`` (the sign-in, CLI token, device and
  first sign-in pages, which run no script): a policy that allows no script at all, no framing
  (``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``), and ``Referrer-Policy:
  no-referrer`` (their URLs may carry a one-time code).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._idempotency import ASGIApp, Message, Scope

NO_SCRIPT_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""The policy of the server-rendered pages that have no script."""


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:  # fmt: skip
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        private = path.startswith(("/api/", "/auth/"))

        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                add = [(b"x-content-type-options", b"nosniff")]
                if private:
                    add.append((b"cache-control", b"no-store"))
                html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                if html and b"content-security-policy" not in have:
                    add += [
                        (b"content-security-policy", NO_SCRIPT_CSP.encode()),
                        (b"x-frame-options", b"DENY"),
                        (b"referrer-policy", b"no-referrer"),
                    ]
                headers += [(k, v) for k, v in add if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, headed)
