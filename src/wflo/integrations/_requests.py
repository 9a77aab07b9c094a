"""``requests``: LLM requests wflo understands are guarded like the httpx path's.

``HTTPAdapter.send`` is wrapped: a ``POST`` of a known API format inside a guarded run is
priced, reserved (its cap written in or lowered), journaled and replayed; the response is read
whole before it is returned (a stream arrives at once, its usage chunk kept from a caller who
did not ask for it). wflo's retry and fallback policies apply to the httpx path only. Any other
request to an LLM provider is refused by the gate in ``_egress`` before it is sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any
from urllib.parse import urlsplit

from ..cost._formats import LLMRequest, detect
from ..engine import NOT_REPLAYED, Call, Outcome, finish_call, start_call
from . import _egress

_KEEP = ("content-type", "retry-after", "x-request-id", "request-id")


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
    from ._http import _without_usage, exact_body, provider_of

    raw = request.body or b""
    raw = raw.encode() if isinstance(raw, str) else raw
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, TypeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    parts = urlsplit(request.url)
    host, port, path = parts.hostname or "", parts.port, parts.path
    req = LLMRequest(fmt, fmt.model(body, path), provider_of(fmt, host, port, path), host, path, "requests", body,
                     stream=fmt.is_stream(body, path))  # fmt: skip
    fmt.prepare_stream(req)
    call = Call(
        kind="llm", name=req.model, args=(), kwargs={}, run=ctx, record_input=False,
        meta={"request": req, "api": fmt.api, "provider": req.provider, "body": body, "url": request.url},
    )  # fmt: skip
    call.meta["_args_digest"] = hashlib.sha256(raw).hexdigest()
    replayed = start_call(call)
    if replayed is not NOT_REPLAYED:
        recorded = exact_body(ctx, call, replayed)
        content = (recorded.get("body") or "").encode()
        if req.hide_usage:
            content = _without_usage(content.decode()).encode()
        return _response(request, int(recorded.get("status", 200)), recorded.get("headers") or {}, content)
    if req.changed:
        request = request.copy()
        request.body = json.dumps(req.body).encode()
        request.headers["Content-Length"] = str(len(request.body))
    t0 = time.perf_counter()
    try:
        with _egress.understood():
            response = original(adapter, request, *args, **kwargs)
            content = response.content  # read whole: the journal keeps it, the caller gets it
    except BaseException as exc:
        finish_call(call, Outcome(error=exc, duration_ms=(time.perf_counter() - t0) * 1000), check_cancel=False)
        raise
    headers = {k: response.headers[k] for k in _KEEP if k in response.headers}
    value = {"status": response.status_code, "headers": headers, "body": content.decode("utf-8", "replace")}
    finish_call(call, Outcome(value=value, duration_ms=(time.perf_counter() - t0) * 1000), check_cancel=False)
    if req.hide_usage:
        response._content = _without_usage(content.decode("utf-8", "replace")).encode()
    return response


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
