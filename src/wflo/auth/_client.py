"""The CLI's side of the server: JSON over HTTP with the stored bearer token, and the device
sign-in that obtains one (stdlib only)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
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


class DeviceLogin:
    """The CLI's side of the device sign-in (``wflo login``): ask the server for a code, then
    poll until the person approves it in a browser (RFC 8628 style; stdlib only)."""

    def __init__(self, server: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not server.startswith(("http://", "https://")):
            raise UserError(f"the server must be an http(s) URL, got {server!r}")
        self.server, self.sleep = server.rstrip("/"), sleep
        self.interval = 5.0

    def start(self, client: str) -> dict[str, Any] | None:
        """A new request (``device_code``, ``user_code``, ``verification_uri[_complete]``,
        ``expires_in``, ``interval``); None when the server has no device sign-in (older)."""
        status, body = self._post("/auth/device", {"client": client})
        if status == 404:
            return None
        if status != 200:
            raise UserError(f"the server refused a sign-in request (HTTP {status}): {body.get('detail', body)}")
        self.interval = float(body.get("interval") or 5)
        return body

    def wait(self, device_code: str, *, deadline: float, tick: Callable[[], None] | None = None) -> str:
        """The token once approved; ``UserError`` when denied or expired. Polls every
        ``interval`` seconds, 5 more after each ``slow_down``."""
        while True:
            self.sleep(self.interval)
            status, body = self._post("/auth/device/token", {"grant_type": DEVICE_GRANT, "device_code": device_code})
            if status == 200 and body.get("access_token"):
                return str(body["access_token"])
            error = body.get("error")
            if error == "slow_down":
                self.interval += 5
            elif error != "authorization_pending":
                raise UserError(str(body.get("error_description") or error or f"the server answered HTTP {status}"))
            if time.monotonic() > deadline:
                raise UserError("the sign-in request expired: run wflo login again")
            if tick is not None:
                tick()

    def _post(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            self.server + path, data=urllib.parse.urlencode(form).encode(), method="POST",
            headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _json(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except urllib.error.URLError as exc:
            raise UserError(f"cannot reach {self.server}: {exc.reason}") from None


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _json(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
