"""``aiohttp``: LLM requests wflo understands are guarded through :mod:`._whole`.

The gate in :mod:`._egress` calls :func:`request` from ``ClientSession._request`` for a request
of a known API format inside a guarded run. The body (``json=`` or bytes/text ``data=``) is
bounded and may get its cap rewritten; the answer is read whole and handed back as a
``ClientResponse`` whose ``content`` stream holds it (so ``read()``, ``json()``, ``text()`` and
``async for line in response.content`` all work); a replayed answer is such a response built
from the journal, without any connection.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

from .._errors import EgressRefusedError
from ..cost._formats import Format
from . import _whole

_HOP = ("content-length", "transfer-encoding", "content-encoding", "connection")


class _NoFlow:
    """The flow control a finished answer's stream does not need."""

    _reading_paused = False

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        pass


def _stream(aiohttp: Any, content: bytes) -> Any:
    reader = aiohttp.StreamReader(_NoFlow(), 2**16, loop=asyncio.get_running_loop())
    if content:
        reader.feed_data(content)
    reader.feed_eof()
    return reader


def _raw(method: str, host: str, path: str, kwargs: dict[str, Any], session: Any) -> bytes:
    if kwargs.get("json") is not None:
        return str(session._json_serialize(kwargs["json"])).encode()
    data = kwargs.get("data")
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise EgressRefusedError(
        client="aiohttp", method=method, host=host, path=path,
        reason="its body is a form, file or stream, which wflo cannot bound before it is sent (pass json= or bytes)",
    )  # fmt: skip


def _replayed(aiohttp: Any, session: Any, method: str, url: str, answer: _whole.Answer) -> Any:
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    target = URL(url)
    info = aiohttp.RequestInfo(target, method, CIMultiDictProxy(CIMultiDict()), target)
    response = aiohttp.ClientResponse(
        method, target, writer=None, continue100=None, timer=aiohttp.helpers.TimerNoop(), request_info=info,
        traces=[], loop=asyncio.get_running_loop(), session=session,
        stream_writer=types.SimpleNamespace(output_size=0),
    )  # fmt: skip
    headers = CIMultiDict({k: v for k, v in answer.headers.items() if k.lower() not in _HOP})
    headers["Content-Length"] = str(len(answer.content))
    response.status = answer.status
    response.reason = aiohttp.http.RESPONSES.get(answer.status, ("",))[0]
    response._headers = CIMultiDictProxy(headers)
    response._raw_headers = tuple((k.encode(), v.encode()) for k, v in headers.items())
    return response


async def request(ctx: Any, fmt: Format, original: Any, session: Any, method: str, str_or_url: Any, url: str,
                  host: str, port: int | None, path: str, kwargs: dict[str, Any]) -> Any:  # fmt: skip
    import aiohttp

    raw = _raw(method, host, path, kwargs, session)
    used_json = kwargs.get("json") is not None

    async def sender(body: bytes) -> _whole.Answer:
        sent = {**kwargs, "json": None, "data": body}
        if used_json:
            headers = dict(kwargs.get("headers") or {})
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
            sent["headers"] = headers
        response = await original(session, method, str_or_url, **sent)
        content = await response.read()
        return _whole.Answer(response.status, dict(response.headers), content, response)

    answer = await _whole.asend(ctx, fmt, "aiohttp", url, host, port, path, raw, sender)
    response = answer.native if answer.native is not None else _replayed(aiohttp, session, method, url, answer)
    response._body = answer.content  # without the usage chunk wflo asked for
    response.content = _stream(aiohttp, answer.content)
    if answer.native is None and response.status >= 400:
        check = kwargs.get("raise_for_status")
        check = session._raise_for_status if check is None else check
        if check is True:
            response.raise_for_status()
    return response
