"""The CLI's side of the server: JSON over HTTP with the stored bearer token (stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .._errors import AccessDeniedError, AuthenticationError, UserError
from ._credentials import Credentials


class ServerClient:
    """Calls ``/api/v1/…`` on the server as the signed-in principal."""

    def __init__(self, creds: Credentials) -> None:
        if not creds.server.startswith(("http://", "https://")):
            raise UserError(f"the server must be an http(s) URL, got {creds.server!r}")
        self.creds = creds

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.creds.server.rstrip("/") + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.creds.token}", "Accept": "application/json",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code == 401:
                raise AuthenticationError(detail=f"the server refused the credentials ({detail}); wflo login") from None
            if exc.code == 403:
                raise AccessDeniedError(principal="you", permission=method + " " + path, detail=detail) from None
            raise UserError(f"the server answered HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise UserError(f"cannot reach {self.creds.server}: {exc.reason}") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except ValueError:
        return exc.reason or ""
    if isinstance(body, dict):
        err = body.get("error")
        return str(err.get("message") if isinstance(err, dict) else body.get("detail") or body)
    return str(body)
