"""``requests``: LLM requests wflo understands are guarded like the httpx path's.

``HTTPAdapter.send`` is wrapped: a ``POST`` of a known API format inside a guarded run is
priced, reserved (its cap written in or lowered), journaled and replayed; the response is read
whole before it is returned (a stream arrives at once, its usage chunk kept from a caller who
did not ask for it). wflo's retry and fallback policies apply to the httpx path only. Any other
request to an LLM provider is refused by the gate in ``_egress`` before it is sent.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlsplit

from ..cost._formats import detect
from . import _egress, _whole


def wrap(adapters: Any) -> None:
    adapter = adapters.HTTPAdapter
    original = adapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        fmt = detect(request.method or "", parts.path)
        ctx = _egress.current_run() if fmt is not None and _egress.current_run is not None else None
        if fmt is None or ctx is None or _egress._inside.get():
            return original(self, request, *args, **kwargs)
        return _guarded(ctx, fmt, original, self, request, args, kwargs)

    send.__wflo_wrapped__ = original  # type: ignore[attr-defined]
    adapter.send = send


def _guarded(ctx: Any, fmt: Any, original: Any, adapter: Any, request: Any, args: Any, kwargs: Any) -> Any:
    raw = request.body or b""
    raw = raw.encode() if isinstance(raw, str) else raw
    parts = urlsplit(request.url)

    def sender(body: bytes) -> _whole.Answer:
        sent = request
        if body is not raw:
            sent = request.copy()
            sent.body = body
            sent.headers["Content-Length"] = str(len(body))
        response = original(adapter, sent, *args, **kwargs)
        content = response.content  # read whole: the journal keeps it, the caller gets it
        return _whole.Answer(response.status_code, response.headers, content, response)

    answer = _whole.send(ctx, fmt, "requests", request.url, parts.hostname or "", parts.port, parts.path, raw, sender)
    if answer.native is None:
        return _response(request, answer.status, dict(answer.headers), answer.content)
    answer.native._content = answer.content  # without the usage chunk wflo asked for
    return answer.native


def _response(request: Any, status: int, headers: dict[str, str], content: bytes) -> Any:
    import requests

    response = requests.Response()
    response.status_code = status
    response.headers = requests.structures.CaseInsensitiveDict(headers)
    response._content = content
    response._content_consumed = True
    response.raw = io.BytesIO(content)
    response.url = request.url
    response.request = request
    response.encoding = "utf-8"
    response.reason = "OK" if status < 400 else "Error"
    return response
