"""A scripted LLM provider over HTTP for tests, demos and examples.

Start it on localhost and point the real SDKs at it with ``base_url``: it speaks OpenAI Chat
Completions (``n`` choices), Responses (``previous_response_id`` billed as the provider does),
legacy Completions (``n``, ``best_of``, prompt batches), Embeddings, Anthropic Messages, Gemini
``generateContent``/``streamGenerateContent`` and Bedrock ``Converse``; streaming or not, with
tool calls, usage fields (cached, cache-write and reasoning tokens), errors, answers delayed
long enough to kill the client mid-call, and streams cut short. Replies come from a script
(consumed in request order), else from ``responder(request)``, else ``"ok"``.

It bills as the provider would (see ``_wire``): the usage it reports never exceeds what the
request's caps allow, and ``billed`` keeps the total of all usage it reported.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from . import _wire
from ._wire import Reply, ToolCall

__all__ = ["LLMServer", "Recorded", "Reply", "ToolCall"]


@dataclass(frozen=True, slots=True)
class Recorded:
    """A request the server received."""

    path: str
    api: str
    """The API format, or ``""`` for a POST to a path the server has no route for (answered 404)."""
    model: str
    body: dict[str, Any]
    headers: dict[str, str]


class LLMServer:
    """The server. ``with LLMServer() as llm: OpenAI(base_url=llm.openai_url, api_key="test")``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, context_window: int | None = None) -> None:
        self.context_window = context_window
        """Refuse (HTTP 400, not billed) a request whose input is longer, as a provider does."""
        self._responses: dict[str, int] = {}
        self.billed: list[dict[str, Any]] = []
        """The usage reported for each answered request: ``{"input_tokens", "output_tokens"}``."""
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.responder: Callable[[Recorded], Reply] | None = None
        self._httpd = _QuietServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_url(self) -> str:
        """Base URL for ``openai.OpenAI(base_url=...)`` (ends with ``/v1``)."""
        return self.url + "/v1"

    @property
    def gemini_url(self) -> str:
        """Base URL of the Gemini API (``{gemini_url}/models/{model}:generateContent``)."""
        return self.url + "/v1beta"

    @property
    def anthropic_url(self) -> str:
        """Base URL for ``anthropic.Anthropic(base_url=...)``."""
        return self.url

    def start(self) -> LLMServer:
        if self._thread is None:
            # A short poll: stop() waits for the serving loop to look, and with the default 0.5 s
            # every stop (every test's server) took half a second.
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="wflo-llm-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- scripting
    def script(self, *replies: Reply | str) -> None:
        """Queue replies, answered in request order across all endpoints."""
        with self._lock:
            self._script.extend(Reply(r) if isinstance(r, str) else r for r in replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
            self.billed.clear()
            self._responses.clear()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _remember(self, response_id: str, used: tuple[int, int]) -> None:
        # A later previous_response_id bills this whole conversation again as input.
        with self._lock:
            self._responses[response_id] = used[0] + used[1]

    def _next(self, rec: Recorded) -> Reply:
        with self._lock:
            self.requests.append(rec)
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(rec)
        return Reply("ok")


_Doc = Callable[[Reply, dict[str, Any], int], dict[str, Any]]
_Stream = Callable[[Reply, dict[str, Any], int], Iterator[dict[str, Any]]]
_OPENAI: dict[str, tuple[str, _Doc, _Stream | None]] = {
    "/v1/chat/completions": ("chat", _wire.chat_document, _wire.chat_stream),
    "/v1/completions": ("completions", _wire.completions_document, _wire.completions_stream),
    "/v1/embeddings": ("embeddings", _wire.embeddings_document, None),
    "/v1/responses": ("responses", _wire.responses_document, _wire.responses_stream),
    "/v1/messages": ("messages", _wire.messages_document, _wire.messages_stream),
}


def _route(path: str) -> tuple[str, str, _Doc, _Stream | None] | None:
    """``(api, model from the path or "", document, stream)`` of a request path."""
    if path in _OPENAI:
        api, doc, stream = _OPENAI[path]
        return api, "", doc, stream
    if path.startswith("/v1beta/models/") and ":" in path:
        model, method = unquote(path[len("/v1beta/models/") :]).split(":", 1)
        if method in ("generateContent", "streamGenerateContent"):
            return "gemini", model, _wire.gemini_document, _wire.gemini_stream
    if path.startswith("/model/") and path.endswith("/converse"):
        return "bedrock", unquote(path[len("/model/") : -len("/converse")]), _wire.converse_document, None
    return None


def _usage(api: str, doc: dict[str, Any]) -> tuple[int, int]:
    """``(input, output)`` tokens a document reports, in wflo's convention (cache included)."""
    if api == "gemini":
        u = doc["usageMetadata"]
        return u["promptTokenCount"], u["candidatesTokenCount"] + u.get("thoughtsTokenCount", 0)
    u = doc.get("usage") or {}
    if api == "bedrock":
        cache = u.get("cacheReadInputTokens", 0) + u.get("cacheWriteInputTokens", 0)
        return u["inputTokens"] + cache, u["outputTokens"]
    if api == "messages":
        cache = u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0)
        return u["input_tokens"] + cache, u["output_tokens"]
    if api == "responses":
        return u["input_tokens"], u["output_tokens"]
    return u["prompt_tokens"], u.get("completion_tokens", 0)


class _QuietServer(ThreadingHTTPServer):
    """A client that went away mid-answer (a test killed it on purpose) is not an error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _handler(server: LLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every response.
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                doc = json.loads(raw or b"{}")
            except ValueError:
                return {}
            return doc if isinstance(doc, dict) else {}

        def do_GET(self) -> None:
            if self.path == "/_wflo/requests":
                with server._lock:
                    reqs = [{"path": r.path, "api": r.api, "model": r.model, "body": r.body} for r in server.requests]
                self._json(200, reqs)
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            body = self._body()
            if path == "/_wflo/script":
                replies = body.get("replies", [])
                server.script(
                    *[Reply(**{**r, "tool_calls": [ToolCall(**t) for t in r.get("tool_calls", [])]}) for r in replies]
                )
                self._json(200, {"queued": len(replies)})
                return
            if path == "/_wflo/reset":
                server.reset()
                self._json(200, {"reset": True})
                return
            route = _route(path)
            if route is None:  # recorded too: a test can tell that it reached the server
                with server._lock:
                    server.requests.append(
                        Recorded(path, "", "", body, {k.lower(): v for k, v in self.headers.items()})
                    )
                self._json(404, {"error": {"message": f"no route {path}"}})
                return
            api, model, document, stream = route
            model = model or str(body.get("model", ""))
            rec = Recorded(path, api, model, body, {k.lower(): v for k, v in self.headers.items()})
            reply = server._next(rec)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.error is not None:
                extra = {"Retry-After": str(reply.retry_after)} if reply.retry_after is not None else {}
                self._json(reply.error, _wire.error_body(api, reply.error, reply.error_message), extra)
                return
            state = 0
            prev = body.get("previous_response_id") if api == "responses" else None
            if prev is not None:
                with server._lock:
                    known = server._responses.get(str(prev))
                if known is None:
                    self._json(400, _wire.error_body(api, 400, f"Previous response with id '{prev}' not found."))
                    return
                state = known
            doc = document(reply, body, state)
            used = _usage(api, doc)
            if server.context_window is not None and used[0] > server.context_window:
                message = f"input of {used[0]} tokens exceeds the context window of {server.context_window}"
                self._json(400, _wire.error_body(api, 400, message))
                return
            with server._lock:
                server.billed.append({"model": model, "input_tokens": used[0], "output_tokens": used[1]})
            streamed = stream is not None and (body.get("stream") or (api == "gemini" and "stream" in path.lower()))
            if not streamed:
                if api == "responses":
                    server._remember(doc["id"], used)
                self._json(200, doc)
                return
            assert stream is not None
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for n, event in enumerate(stream(reply, body, state)):
                    if api == "responses" and isinstance(event.get("response"), dict):
                        server._remember(event["response"]["id"], used)
                    if reply.abort_stream_after is not None and n >= reply.abort_stream_after:
                        self.close_connection = True
                        return
                    prefix = f"event: {event['type']}\n" if "type" in event and api != "chat" else ""
                    self.wfile.write(f"{prefix}data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if reply.chunk_delay:
                        time.sleep(reply.chunk_delay)
                if api in ("chat", "completions"):
                    self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    return Handler
