"""One guarded LLM request whose answer is read whole: the path of every HTTP client but httpx.

``requests``, ``urllib3``, ``http.client`` (and ``urllib.request``, which sends through it)
hand wflo a method, a URL and a body, and take back a status, headers and content. For a
request of an API format wflo understands (``wflo.cost._formats``) made inside a guarded run,
:func:`send` makes it one journaled call of kind ``llm``: the guard chain runs before it is
sent (the budget may write or lower the output cap, or refuse it: then nothing is sent), the
answer (a stream too) is read whole and recorded, the guards settle on the usage it reports,
and on replay the recorded answer comes back without any request. A stream that wflo asked for
its usage has that chunk taken out before the caller sees it.

Each client module only adapts its own request and response objects to this.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from ..cost._formats import Format, LLMRequest
from ..engine import NOT_REPLAYED, Call, Outcome, finish_call, start_call
from ..engine._attempts import Attempts, Step, adrive, drive
from . import _egress

_KEEP = ("content-type", "retry-after", "x-request-id", "request-id")


class Answer(NamedTuple):
    """What the caller gets back: the response's status, headers and content."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    native: Any = None
    """The client's own response object for a live answer (``None`` when replayed)."""


Sender = Callable[[bytes], Answer]
"""Sends the request with the given body (inside the gate's ``understood``), reads it whole."""


def body_of(raw: bytes | str | None) -> dict[str, Any]:
    """The JSON document of a request body (``{}`` when it is none)."""
    data = raw.encode() if isinstance(raw, str) else raw or b""
    try:
        doc = json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError, TypeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def attempt(ctx: Any, fmt: Format, client: str, url: str, host: str, port: int | None, path: str,
            raw: bytes) -> Attempts[Answer]:  # fmt: skip
    """One understood LLM request of a guarded run, as attempts (``wflo.engine._attempts``): it
    asks its driver to send the body (``Step("send", body)``) and is sent the answer or thrown
    the error; returns what the caller gets. Sync and async clients differ only in the driver."""
    from ._http import _without_usage, exact_body, provider_of

    body = body_of(raw)
    req = LLMRequest(fmt, fmt.model(body, path), provider_of(fmt, host, port, path), host, path, client, body,
                     stream=fmt.is_stream(body, path))  # fmt: skip
    fmt.prepare_stream(req)  # before the journal: a replay must hide the same chunk
    call = Call(
        kind="llm", name=req.model, args=(), kwargs={}, run=ctx, record_input=False,
        meta={"request": req, "api": fmt.api, "provider": req.provider, "body": body, "url": url},
    )  # fmt: skip
    call.meta["_args_digest"] = hashlib.sha256(raw).hexdigest()
    replayed = yield Step("begin", functools.partial(start_call, call))  # a rate limit waits on an async loop
    if replayed is not NOT_REPLAYED:
        recorded = exact_body(ctx, call, replayed)
        content = (recorded.get("body") or "").encode()
        if req.hide_usage:
            content = _without_usage(content.decode()).encode()
        return Answer(int(recorded.get("status", 200)), dict(recorded.get("headers") or {}), content)
    t0 = time.perf_counter()
    try:
        answer: Answer = yield Step("send", json.dumps(req.body).encode() if req.changed else raw)
    except BaseException as exc:
        failed = Outcome(error=exc, duration_ms=(time.perf_counter() - t0) * 1000)
        yield Step("store", functools.partial(finish_call, call, failed, check_cancel=False))
        raise
    lower = {k.lower(): v for k, v in answer.headers.items()}
    kept = {k: lower[k] for k in _KEEP if k in lower}
    value = {"status": answer.status, "headers": kept, "body": answer.content.decode("utf-8", "replace")}
    done = Outcome(value=value, duration_ms=(time.perf_counter() - t0) * 1000)
    yield Step("store", functools.partial(finish_call, call, done, check_cancel=False))
    if req.hide_usage:
        return answer._replace(content=_without_usage(answer.content.decode("utf-8", "replace")).encode())
    return answer


class _Sync:
    def __init__(self, sender: Sender) -> None:
        self._sender = sender

    def send(self, body: bytes) -> Answer:
        with _egress.understood():
            return self._sender(body)


class _Async:
    run: Any = None

    def __init__(self, sender: Callable[[bytes], Awaitable[Answer]]) -> None:
        self._sender = sender

    async def send(self, body: bytes) -> Answer:
        with _egress.understood():
            return await self._sender(body)


def send(ctx: Any, fmt: Format, client: str, url: str, host: str, port: int | None, path: str,
         raw: bytes, sender: Sender) -> Answer:  # fmt: skip
    """Send one understood LLM request of a guarded run with a synchronous client."""
    return drive(attempt(ctx, fmt, client, url, host, port, path, raw), _Sync(sender))


async def asend(ctx: Any, fmt: Format, client: str, url: str, host: str, port: int | None, path: str,
                raw: bytes, sender: Callable[[bytes], Awaitable[Answer]]) -> Answer:  # fmt: skip
    """Send one understood LLM request of a guarded run with an asynchronous client."""
    io = _Async(sender)
    io.run = ctx  # the run whose store the "store" steps go to
    return await adrive(attempt(ctx, fmt, client, url, host, port, path, raw), io)
