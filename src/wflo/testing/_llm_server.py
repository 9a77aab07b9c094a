"""A scripted OpenAI- and Anthropic-compatible HTTP server for tests, demos and examples.

Start it on localhost and point the real SDKs at it with ``base_url``: it speaks Chat
Completions, Responses and Messages, streaming or not, with tool calls, usage fields (cached,
cache-write and reasoning tokens), errors and slow responses on demand. Replies come from a
script (consumed in request order), else from ``responder(request)``, else ``"ok"``.

Token counts: a reply's output tokens are its whitespace-separated words (tool-call arguments
count one token per 4 characters) unless the reply sets ``output_tokens``; input tokens are
``ceil(characters of all request text / 4)`` unless it sets ``input_tokens``. The request's
output cap (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``) truncates the
text, reports ``length`` / ``max_tokens`` / ``incomplete``, and bounds the reported output
tokens, as a real provider's bill is bounded.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A tool call the scripted model makes."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True, kw_only=True)
class Reply:
    """One scripted answer. ``Reply("text")`` or ``Reply(tool_calls=[...])`` or ``Reply(error=429)``."""

    text: str = ""
    """The answer text."""
    tool_calls: tuple[ToolCall, ...] | list[ToolCall] = ()
    """Tool calls the model makes (after the text, if any)."""
    input_tokens: int | None = None
    """Reported input tokens (default: computed from the request)."""
    output_tokens: int | None = None
    """Reported output tokens (default: words of the text returned)."""
    cached_tokens: int = 0
    """Input tokens reported as read from the provider's cache."""
    cache_write_tokens: int = 0
    """Input tokens reported as written to the cache (Anthropic)."""
    reasoning_tokens: int = 0
    """Output tokens reported as reasoning (part of the output tokens)."""
    error: int | None = None
    """Answer with this HTTP status instead (in the provider's error JSON shape)."""
    error_message: str = "scripted error"
    retry_after: float | None = None
    """``Retry-After`` header on an error."""
    delay: float = 0.0
    """Seconds to wait before answering."""
    chunk_delay: float = 0.0
    """Seconds between stream chunks."""
    abort_stream_after: int | None = None
    """Close the connection after this many stream chunks (an abandoned stream)."""

    def __init__(self, text: str = "", **kwargs: Any) -> None:  # allow Reply("text")
        object.__setattr__(self, "text", text)
        defaults = {f: getattr(type(self), f, None) for f in self.__dataclass_fields__ if f != "text"}
        for name, default in defaults.items():
            object.__setattr__(self, name, kwargs.pop(name, default))
        if kwargs:
            raise TypeError(f"Reply got unknown fields: {sorted(kwargs)}")
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))


@dataclass(frozen=True, slots=True)
class Recorded:
    """A request the server received."""

    path: str
    api: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str]


def _words(text: str) -> list[str]:
    return text.split()


def _request_text(body: dict[str, Any]) -> str:
    return json.dumps(
        [body.get("messages"), body.get("input"), body.get("system"), body.get("instructions"), body.get("tools")],
        default=str,
    )


class LLMServer:
    """The server. ``with LLMServer() as llm: OpenAI(base_url=llm.openai_url, api_key="test")``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.responder: Callable[[Recorded], Reply] | None = None
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
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
    def anthropic_url(self) -> str:
        """Base URL for ``anthropic.Anthropic(base_url=...)``."""
        return self.url

    def start(self) -> LLMServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="wflo-llm-server", daemon=True)
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

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _next(self, rec: Recorded) -> Reply:
        with self._lock:
            self.requests.append(rec)
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(rec)
        return Reply("ok")


# --------------------------------------------------------------------- wire formats
def _usage_numbers(reply: Reply, body: dict[str, Any], out_tokens: int) -> tuple[int, int]:
    inp = reply.input_tokens if reply.input_tokens is not None else max(1, math.ceil(len(_request_text(body)) / 4))
    out = reply.output_tokens if reply.output_tokens is not None else out_tokens
    cap = _cap(body)
    # Like a real provider, never report (bill) more output than the request allowed.
    return inp, min(out, cap) if cap is not None else out


def _cap(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if isinstance(body.get(key), int):
            return int(body[key])
    return None


def _truncate(reply: Reply, body: dict[str, Any]) -> tuple[list[str], bool]:
    words = _words(reply.text)
    cap = _cap(body)
    if cap is not None and len(words) > cap:
        return words[:cap], True
    return words, False


def _tool_tokens(reply: Reply) -> int:
    return sum(math.ceil(len(json.dumps(tc.arguments)) / 4) for tc in reply.tool_calls)


def _call_id(tc: ToolCall, i: int) -> str:
    return tc.id or f"call_{i}_{uuid.uuid4().hex[:8]}"


def chat_document(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    words, cut = _truncate(reply, body)
    inp, out = _usage_numbers(reply, body, len(words) + _tool_tokens(reply))
    message: dict[str, Any] = {"role": "assistant", "content": " ".join(words) or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": _call_id(tc, i),
                "type": "function",
                "function": {"name": tc.name, "arguments": json.dumps(tc.arguments)},
            }
            for i, tc in enumerate(reply.tool_calls)
        ]
    finish = "length" if cut else "tool_calls" if reply.tool_calls else "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "unknown"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
                  "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
                  "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens}},
    }  # fmt: skip


def chat_stream(reply: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    doc = chat_document(reply, body)
    base = {"id": doc["id"], "object": "chat.completion.chunk", "created": doc["created"], "model": doc["model"]}
    yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    words = (doc["choices"][0]["message"]["content"] or "").split()
    for i, word in enumerate(words):
        yield {
            **base,
            "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}],
        }
    for i, tc in enumerate(doc["choices"][0]["message"].get("tool_calls") or []):
        yield {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, **tc}]}, "finish_reason": None}]}
    yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": doc["choices"][0]["finish_reason"]}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": doc["usage"]}


def responses_document(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    words, cut = _truncate(reply, body)
    inp, out = _usage_numbers(reply, body, len(words) + _tool_tokens(reply))
    output: list[dict[str, Any]] = []
    if words:
        output.append({"type": "message", "id": f"msg_{uuid.uuid4().hex[:10]}", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": " ".join(words), "annotations": []}]})  # fmt: skip
    for i, tc in enumerate(reply.tool_calls):
        output.append({"type": "function_call", "id": f"fc_{i}", "call_id": _call_id(tc, i), "name": tc.name,
                       "arguments": json.dumps(tc.arguments), "status": "completed"})  # fmt: skip
    return {
        "id": f"resp_{uuid.uuid4().hex[:12]}", "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "model": body.get("model", "unknown"), "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
        "tools": [], "error": None, "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
        "usage": {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out,
                  "input_tokens_details": {"cached_tokens": reply.cached_tokens},
                  "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens}},
    }  # fmt: skip


def responses_stream(reply: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    doc = responses_document(reply, body)
    seq = 0

    def ev(kind: str, **data: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"type": kind, "sequence_number": seq, **data}

    yield ev("response.created", response={**doc, "status": "in_progress", "output": [], "usage": None})
    for index, item in enumerate(doc["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield ev(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            empty = {"type": "output_text", "text": "", "annotations": []}
            yield ev("response.content_part.added", item_id=item["id"], output_index=index, content_index=0, part=empty)
            for i, word in enumerate(text.split()):
                yield ev(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=word if i == 0 else " " + word,
                    logprobs=[],
                )
            yield ev(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            yield ev(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=item["content"][0],
            )
        yield ev("response.output_item.done", output_index=index, item=item)
    yield ev("response.incomplete" if doc["status"] == "incomplete" else "response.completed", response=doc)


def messages_document(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    words, cut = _truncate(reply, body)
    inp, out = _usage_numbers(reply, body, len(words) + _tool_tokens(reply))
    content: list[dict[str, Any]] = []
    if words:
        content.append({"type": "text", "text": " ".join(words)})
    for i, tc in enumerate(reply.tool_calls):
        content.append({"type": "tool_use", "id": tc.id or f"toolu_{i}", "name": tc.name, "input": tc.arguments})
    uncached = max(0, inp - reply.cached_tokens - reply.cache_write_tokens)
    return {
        "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant", "model": body.get("model", "unknown"),
        "content": content, "stop_reason": "max_tokens" if cut else "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": uncached, "output_tokens": out, "cache_read_input_tokens": reply.cached_tokens,
                  "cache_creation_input_tokens": reply.cache_write_tokens},
    }  # fmt: skip


def messages_stream(reply: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    doc = messages_document(reply, body)
    start_usage = {**doc["usage"], "output_tokens": 1}
    yield {"type": "message_start", "message": {**doc, "content": [], "stop_reason": None, "usage": start_usage}}
    for index, block in enumerate(doc["content"]):
        if block["type"] == "text":
            yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            for i, word in enumerate(block["text"].split()):
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
                }
        else:
            yield {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])},
            }
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": doc["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": doc["usage"]["output_tokens"]},
    }
    yield {"type": "message_stop"}


_APIS = {
    "/v1/chat/completions": ("chat", chat_document, chat_stream),
    "/v1/responses": ("responses", responses_document, responses_stream),
    "/v1/messages": ("messages", messages_document, messages_stream),
}


def _error_body(api: str, status: int, message: str) -> dict[str, Any]:
    if api == "messages":
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {
        "error": {
            "message": message,
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "code": str(status),
            "param": None,
        }
    }


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
            route = _APIS.get(path)
            if route is None:
                self._json(404, {"error": {"message": f"no route {path}"}})
                return
            api, document, stream = route
            rec = Recorded(path, api, str(body.get("model", "")), body, {k.lower(): v for k, v in self.headers.items()})
            reply = server._next(rec)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.error is not None:
                extra = {"Retry-After": str(reply.retry_after)} if reply.retry_after is not None else {}
                self._json(reply.error, _error_body(api, reply.error, reply.error_message), extra)
                return
            if not body.get("stream"):
                self._json(200, document(reply, body))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for n, event in enumerate(stream(reply, body)):
                    if reply.abort_stream_after is not None and n >= reply.abort_stream_after:
                        self.close_connection = True
                        return
                    prefix = f"event: {event['type']}\n" if "type" in event and api != "chat" else ""
                    self.wfile.write(f"{prefix}data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    if reply.chunk_delay:
                        time.sleep(reply.chunk_delay)
                if api == "chat":
                    self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    return Handler
