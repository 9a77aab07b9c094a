"""``urllib3`` and ``http.client`` (thus ``urllib.request``): LLM requests wflo understands are
guarded through :mod:`._whole` (priced, reserved, journaled, replayed, answers read whole).

The gate in :mod:`._egress` calls these for a request of a known API format inside a guarded
run; any other request to an LLM provider it refuses. ``http.client`` is guarded at
``HTTPConnection.request`` (what ``urllib.request`` and most code use): the answer is read
there and handed out by the next ``getresponse()``. A request written piece by piece
(``putrequest``/``putheader``/``send``) cannot be bounded before its body is known and stays
refused.
"""

from __future__ import annotations

import http.client
import io
from typing import Any

from .._errors import EgressRefusedError
from ..cost._formats import Format
from . import _whole

_HOP = ("content-length", "transfer-encoding", "connection", "content-encoding")


def _raw(client: str, method: str, host: str, path: str, body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise EgressRefusedError(
        client=client, method=method, host=host, path=path,
        reason="its body is a file or an iterator, which wflo cannot bound before it is sent (pass bytes)",
    )  # fmt: skip


def _with_length(headers: Any, body: bytes) -> dict[str, Any]:
    """The request's headers for a body wflo may have rewritten: the length follows the body."""
    items = dict(headers or {})
    had = [k for k in items if str(k).lower() == "content-length"]
    for k in had:
        del items[k]
    if had:
        items[had[0]] = str(len(body))
    return items


# ----------------------------------------------------------------------------- urllib3
def urllib3_send(ctx: Any, fmt: Format, client: str, original: Any, pool: Any, method: str, url: str,
                 host: str, port: int | None, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:  # fmt: skip
    import urllib3

    kwargs = dict(kwargs)
    if args:  # urlopen(method, url, body, headers, ...): the positional ones by name
        names = ("body", "headers", "retries", "redirect", "assert_same_host", "timeout", "pool_timeout",
                 "release_conn", "chunked", "body_pos", "preload_content", "decode_content")  # fmt: skip
        kwargs.update(zip(names, args, strict=False))
    raw = _raw(client, method, host, path, kwargs.get("body"))
    preload = kwargs.get("preload_content", True)
    scheme = "https" if pool.scheme == "https" else "http"

    def sender(body: bytes) -> _whole.Answer:
        sent = {**kwargs, "body": body, "preload_content": False}
        if kwargs.get("headers") is not None:
            sent["headers"] = _with_length(kwargs["headers"], body)
        response = original(pool, method, url, **sent)
        try:
            content = response.read(decode_content=True)
        finally:
            response.release_conn()
        return _whole.Answer(response.status, dict(response.headers), content, response)

    full = url if "://" in url else f"{scheme}://{host}:{port}{url}"
    answer = _whole.send(ctx, fmt, client, full, host, port, path, raw, sender)
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
    headers["content-length"] = str(len(answer.content))
    return urllib3.HTTPResponse(
        body=io.BytesIO(answer.content), headers=headers, status=answer.status,
        reason=http.client.responses.get(answer.status, ""), preload_content=preload, decode_content=False,
        request_method=method, request_url=full, version=11, version_string="HTTP/1.1",
    )  # fmt: skip


# ----------------------------------------------------------------------------- http.client
def target(conn: Any, url: str) -> tuple[str, int | None, str]:
    """Host, port and path a request on ``conn`` goes to (through a tunnel or a plain proxy too)."""
    from urllib.parse import urlsplit

    host, port = conn.host, conn.port
    if getattr(conn, "_tunnel_host", None):
        host, port = conn._tunnel_host, getattr(conn, "_tunnel_port", None)
    path = url
    if "://" in url:  # an absolute URL: a request through a plain HTTP proxy
        parts = urlsplit(url)
        host, port, path = parts.hostname or host, parts.port, parts.path or "/"
    return host, port, path.split("?", 1)[0]


class _Bytes:
    """A socket stand-in whose only file is a finished answer (for ``HTTPResponse``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self._data)


def _http_response(answer: _whole.Answer, method: str, url: str) -> http.client.HTTPResponse:
    lines = [f"HTTP/1.1 {answer.status} {http.client.responses.get(answer.status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in answer.headers.items() if k.lower() not in _HOP]
    lines.append(f"Content-Length: {len(answer.content)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + answer.content
    response = http.client.HTTPResponse(_Bytes(data), method=method, url=url)  # type: ignore[arg-type]
    response.begin()
    return response


def http_client_send(ctx: Any, fmt: Format, client: str, original_request: Any, original_getresponse: Any,
                     conn: Any, method: str, url: str, body: Any, headers: Any, encode_chunked: bool) -> None:  # fmt: skip
    host, port, path = target(conn, url)
    raw = _raw(client, method, host, path, body)

    def sender(new: bytes) -> _whole.Answer:
        original_request(conn, method, url, new, _with_length(headers, new), encode_chunked=encode_chunked)
        response = original_getresponse(conn)
        content = response.read()
        return _whole.Answer(response.status, dict(response.getheaders()), content, response)

    scheme = "https" if isinstance(conn, http.client.HTTPSConnection) else "http"
    full = url if "://" in url else f"{scheme}://{host}:{port}{url}"
    answer = _whole.send(ctx, fmt, client, full, host, port, path, raw, sender)
    conn._wflo_answer = _http_response(answer, method, full)
