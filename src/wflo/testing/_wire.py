"""The wire formats the scripted server speaks, and how it bills them (as the provider would).

Billing rules (the numbers reported as usage):

* input: ``ceil(characters of the request's text / 4)`` (or the reply's ``input_tokens``),
  plus :data:`IMAGE_TOKENS` per image part and :data:`FILE_TOKENS` per file/PDF/audio part
  (the most OpenAI's documented image rule can bill one image: gpt-4o-mini at high detail),
  plus, for a Responses ``previous_response_id``, the input and output of that earlier response;
* output: per choice the reply's words (or ``output_tokens``), never more than the request's
  cap, times the choices (``n``, ``best_of`` per prompt, ``candidateCount``); Gemini thinking
  (``reasoning_tokens``) is billed on top, up to ``thinkingBudget``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

IMAGE_TOKENS = 48_169
"""gpt-4o-mini, detail high, a 768x2048 image: 2,833 + 8 tiles x 5,667 tokens."""
FILE_TOKENS = 20_000
"""A PDF/file part: pages x (text + page image) tokens; a 10-page document."""
_IMAGE_TYPES = {"image_url", "image", "input_image"}
_FILE_TYPES = {"file", "input_file", "document", "input_audio", "audio", "video"}


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
    """Reported output tokens per choice (default: words of the text returned)."""
    cached_tokens: int = 0
    """Input tokens reported as read from the provider's cache."""
    cache_write_tokens: int = 0
    """Input tokens reported as written to the cache (Anthropic)."""
    reasoning_tokens: int = 0
    """Output tokens reported as reasoning (part of the output tokens; Gemini: thoughts, on top)."""
    error: int | None = None
    """Answer with this HTTP status instead (in the provider's error JSON shape)."""
    error_message: str = "scripted error"
    retry_after: float | None = None
    """``Retry-After`` header on an error."""
    delay: float = 0.0
    """Seconds to wait before answering (kill the client meanwhile to lose the answer)."""
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


@dataclass(frozen=True)
class Billing:
    """What one request is billed (the usage the server reports)."""

    input_tokens: int
    output_tokens: int
    """All choices, reasoning included."""
    per_choice: int
    truncated: bool
    words: list[str]


# --------------------------------------------------------------------- billing
def _walk(value: Any, texts: list[str], media: list[int]) -> None:
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, dict):
        kind = value.get("type")
        if kind in _IMAGE_TYPES or ("image" in value and isinstance(value["image"], dict)):
            media.append(IMAGE_TOKENS)
            return
        if kind in _FILE_TYPES or any(k in value for k in ("document", "inlineData", "fileData", "video")):
            media.append(FILE_TOKENS)
            return
        for k, v in value.items():
            texts.append(str(k))
            _walk(v, texts, media)
    elif isinstance(value, list):
        for v in value:
            _walk(v, texts, media)
    elif value is not None:
        texts.append(str(value))


_PROMPT_KEYS = ("messages", "input", "system", "instructions", "tools", "prompt", "contents", "systemInstruction",
                "toolConfig", "response_format", "text", "generationConfig")  # fmt: skip


def input_tokens(reply: Reply, body: dict[str, Any], state: int = 0) -> int:
    if reply.input_tokens is not None:
        return reply.input_tokens + state
    texts: list[str] = []
    media: list[int] = []
    for key in _PROMPT_KEYS:
        if key == "generationConfig":
            _walk((body.get(key) or {}).get("responseSchema"), texts, media)
        else:
            _walk(body.get(key), texts, media)
    return max(1, math.ceil(sum(len(t) for t in texts) / 4)) + sum(media) + state


def cap(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if isinstance(body.get(key), int):
            return int(body[key])
    for parent, key in (("generationConfig", "maxOutputTokens"), ("inferenceConfig", "maxTokens")):
        value = (body.get(parent) or {}).get(key)
        if isinstance(value, int):
            return value
    return None


def _tool_tokens(reply: Reply) -> int:
    return sum(math.ceil(len(json.dumps(tc.arguments)) / 4) for tc in reply.tool_calls)


def bill(reply: Reply, body: dict[str, Any], choices: int = 1, state: int = 0) -> Billing:
    words = reply.text.split()
    limit = cap(body)
    cut = limit is not None and len(words) > limit
    if cut:
        words = words[:limit]
    out = reply.output_tokens if reply.output_tokens is not None else len(words) + _tool_tokens(reply)
    if limit is not None:
        out = min(out, limit)  # a real provider never bills more output than the request allowed
    inp = max(input_tokens(reply, body, state), reply.cached_tokens + reply.cache_write_tokens)
    return Billing(inp, out * choices, out, cut, words)


def _int(value: Any, default: int = 1) -> int:
    return value if isinstance(value, int) and value > 0 else default


def _call_id(tc: ToolCall, i: int) -> str:
    return tc.id or f"call_{i}_{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------- OpenAI chat
def chat_document(reply: Reply, body: dict[str, Any], state: int = 0) -> dict[str, Any]:
    n = _int(body.get("n"))
    b = bill(reply, body, n)
    message: dict[str, Any] = {"role": "assistant", "content": " ".join(b.words) or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": _call_id(tc, i), "type": "function", "function": {"name": tc.name, "arguments": json.dumps(tc.arguments)}}
            for i, tc in enumerate(reply.tool_calls)
        ]  # fmt: skip
    finish = "length" if b.truncated else "tool_calls" if reply.tool_calls else "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "unknown"),
        "choices": [{"index": i, "message": message, "finish_reason": finish, "logprobs": None} for i in range(n)],
        "usage": {"prompt_tokens": b.input_tokens, "completion_tokens": b.output_tokens,
                  "total_tokens": b.input_tokens + b.output_tokens,
                  "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
                  "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens}},
    }  # fmt: skip


def chat_stream(reply: Reply, body: dict[str, Any], state: int = 0) -> Iterator[dict[str, Any]]:
    doc = chat_document(reply, body)
    base = {"id": doc["id"], "object": "chat.completion.chunk", "created": doc["created"], "model": doc["model"]}
    for choice in doc["choices"]:
        i = choice["index"]
        yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        for j, word in enumerate((choice["message"]["content"] or "").split()):
            delta = {"content": word if j == 0 else " " + word}
            yield {**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}
        for k, tc in enumerate(choice["message"].get("tool_calls") or []):
            delta = {"tool_calls": [{"index": k, **tc}]}
            yield {**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}
        yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": choice["finish_reason"]}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": doc["usage"]}


# --------------------------------------------------------------------- OpenAI legacy completions
def completions_document(reply: Reply, body: dict[str, Any], state: int = 0) -> dict[str, Any]:
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    n = _int(body.get("n"))
    generated = max(n, _int(body.get("best_of"))) * prompts  # best_of are all generated and billed
    b = bill(reply, body, generated)
    text = " ".join(b.words)
    finish = "length" if b.truncated else "stop"
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
        "model": body.get("model", "unknown"),
        "choices": [{"index": i, "text": text, "finish_reason": finish, "logprobs": None} for i in range(n * prompts)],
        "usage": {"prompt_tokens": b.input_tokens, "completion_tokens": b.output_tokens,
                  "total_tokens": b.input_tokens + b.output_tokens},
    }  # fmt: skip


def completions_stream(reply: Reply, body: dict[str, Any], state: int = 0) -> Iterator[dict[str, Any]]:
    doc = completions_document(reply, body)
    base = {"id": doc["id"], "object": "text_completion", "created": doc["created"], "model": doc["model"]}
    for choice in doc["choices"]:
        for j, word in enumerate(choice["text"].split()):
            part = {
                "index": choice["index"],
                "text": word if j == 0 else " " + word,
                "finish_reason": None,
                "logprobs": None,
            }
            yield {**base, "choices": [part]}
        yield {**base, "choices": [{"index": choice["index"], "text": "", "finish_reason": choice["finish_reason"], "logprobs": None}]}  # fmt: skip
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": doc["usage"]}


# --------------------------------------------------------------------- OpenAI embeddings
def embeddings_document(reply: Reply, body: dict[str, Any], state: int = 0) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
    tokens = input_tokens(reply, body)
    data = [{"object": "embedding", "index": i, "embedding": [0.0, 0.5, 1.0]} for i in range(len(items))]
    return {"object": "list", "data": data, "model": body.get("model", "unknown"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


# --------------------------------------------------------------------- OpenAI responses
def responses_document(reply: Reply, body: dict[str, Any], state: int = 0) -> dict[str, Any]:
    b = bill(reply, body, 1, state)
    output: list[dict[str, Any]] = []
    if b.words:
        output.append({"type": "message", "id": f"msg_{uuid.uuid4().hex[:10]}", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": " ".join(b.words), "annotations": []}]})  # fmt: skip
    for i, tc in enumerate(reply.tool_calls):
        output.append({"type": "function_call", "id": f"fc_{i}", "call_id": _call_id(tc, i), "name": tc.name,
                       "arguments": json.dumps(tc.arguments), "status": "completed"})  # fmt: skip
    return {
        "id": f"resp_{uuid.uuid4().hex[:12]}", "object": "response", "created_at": int(time.time()),
        "status": "incomplete" if b.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if b.truncated else None,
        "model": body.get("model", "unknown"), "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
        "tools": [], "error": None, "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
        "previous_response_id": body.get("previous_response_id"),
        "usage": {"input_tokens": b.input_tokens, "output_tokens": b.output_tokens,
                  "total_tokens": b.input_tokens + b.output_tokens,
                  "input_tokens_details": {"cached_tokens": reply.cached_tokens},
                  "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens}},
    }  # fmt: skip


def responses_stream(reply: Reply, body: dict[str, Any], state: int = 0) -> Iterator[dict[str, Any]]:
    doc = responses_document(reply, body, state)
    seq = 0

    def ev(kind: str, **data: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"type": kind, "sequence_number": seq, **data}

    yield ev("response.created", response={**doc, "status": "in_progress", "output": [], "usage": None})
    for index, item in enumerate(doc["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield ev(
                "response.output_item.added", output_index=index, item={**item, "status": "in_progress", "content": []}
            )
            yield ev(
                "response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []}
            )
            for i, word in enumerate(text.split()):
                yield ev("response.output_text.delta", **where, delta=word if i == 0 else " " + word, logprobs=[])
            yield ev("response.output_text.done", **where, text=text, logprobs=[])
            yield ev("response.content_part.done", **where, part=item["content"][0])
        yield ev("response.output_item.done", output_index=index, item=item)
    yield ev("response.incomplete" if doc["status"] == "incomplete" else "response.completed", response=doc)


# --------------------------------------------------------------------- Anthropic messages
def messages_document(reply: Reply, body: dict[str, Any], state: int = 0) -> dict[str, Any]:
    b = bill(reply, body)
    content: list[dict[str, Any]] = []
    if b.words:
        content.append({"type": "text", "text": " ".join(b.words)})
    for i, tc in enumerate(reply.tool_calls):
        content.append({"type": "tool_use", "id": tc.id or f"toolu_{i}", "name": tc.name, "input": tc.arguments})
    uncached = max(0, b.input_tokens - reply.cached_tokens - reply.cache_write_tokens)
    return {
        "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant", "model": body.get("model", "unknown"),
        "content": content, "stop_reason": "max_tokens" if b.truncated else "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": uncached, "output_tokens": b.output_tokens, "cache_read_input_tokens": reply.cached_tokens,
                  "cache_creation_input_tokens": reply.cache_write_tokens},
    }  # fmt: skip


def messages_stream(reply: Reply, body: dict[str, Any], state: int = 0) -> Iterator[dict[str, Any]]:
    doc = messages_document(reply, body)
    start_usage = {**doc["usage"], "output_tokens": 1}
    yield {"type": "message_start", "message": {**doc, "content": [], "stop_reason": None, "usage": start_usage}}
    for index, block in enumerate(doc["content"]):
        if block["type"] == "text":
            yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
            for i, word in enumerate(block["text"].split()):
                delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        else:
            yield {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": doc["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": doc["usage"]["output_tokens"]},
    }
    yield {"type": "message_stop"}


# --------------------------------------------------------------------- Gemini
def gemini_document(reply: Reply, body: dict[str, Any], state: int = 0) -> dict[str, Any]:
    config = body.get("generationConfig") or {}
    n = _int(config.get("candidateCount"))
    b = bill(reply, body, n)
    budget = (config.get("thinkingConfig") or {}).get("thinkingBudget")
    thoughts = (
        reply.reasoning_tokens if not isinstance(budget, int) or budget < 0 else min(budget, reply.reasoning_tokens)
    )
    thoughts *= n
    parts: list[dict[str, Any]] = [{"text": " ".join(b.words)}] if b.words else []
    parts += [{"functionCall": {"name": tc.name, "args": tc.arguments}} for tc in reply.tool_calls]
    finish = "MAX_TOKENS" if b.truncated else "STOP"
    usage = {"promptTokenCount": b.input_tokens, "candidatesTokenCount": b.output_tokens,
             "totalTokenCount": b.input_tokens + b.output_tokens + thoughts}  # fmt: skip
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if reply.cached_tokens:
        usage["cachedContentTokenCount"] = reply.cached_tokens
    return {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": i} for i in range(n)
        ],
        "usageMetadata": usage,
        "modelVersion": body.get("_model", "gemini"),
        "responseId": uuid.uuid4().hex[:16],
    }


def gemini_stream(reply: Reply, body: dict[str, Any], state: int = 0) -> Iterator[dict[str, Any]]:
    doc = gemini_document(reply, body)
    text = " ".join(p.get("text", "") for p in doc["candidates"][0]["content"]["parts"])
    words = text.split()
    for i, word in enumerate(words):
        last = i == len(words) - 1
        chunk: dict[str, Any] = {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": word if i == 0 else " " + word}]}, "index": 0}
            ],
            "modelVersion": doc["modelVersion"],
        }
        if last:
            chunk["candidates"][0]["finishReason"] = doc["candidates"][0]["finishReason"]
            chunk["usageMetadata"] = doc["usageMetadata"]
        yield chunk
    if not words:
        yield {"candidates": doc["candidates"], "usageMetadata": doc["usageMetadata"]}


# --------------------------------------------------------------------- Bedrock converse
def converse_document(reply: Reply, body: dict[str, Any], state: int = 0) -> dict[str, Any]:
    b = bill(reply, body)
    content: list[dict[str, Any]] = [{"text": " ".join(b.words)}] if b.words else []
    content += [{"toolUse": {"toolUseId": tc.id or f"tool_{i}", "name": tc.name, "input": tc.arguments}}
                for i, tc in enumerate(reply.tool_calls)]  # fmt: skip
    uncached = max(0, b.input_tokens - reply.cached_tokens - reply.cache_write_tokens)
    usage = {"inputTokens": uncached, "outputTokens": b.output_tokens,
             "totalTokens": b.input_tokens + b.output_tokens}  # fmt: skip
    if reply.cached_tokens:
        usage["cacheReadInputTokens"] = reply.cached_tokens
    if reply.cache_write_tokens:
        usage["cacheWriteInputTokens"] = reply.cache_write_tokens
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": "max_tokens" if b.truncated else "tool_use" if reply.tool_calls else "end_turn",
        "usage": usage,
        "metrics": {"latencyMs": 1},
    }


def error_body(api: str, status: int, message: str) -> dict[str, Any]:
    if api == "messages":
        kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                529: "overloaded_error"}.get(status, "api_error")  # fmt: skip
        return {"type": "error", "error": {"type": kind, "message": message}}
    if api == "gemini":
        return {
            "error": {"code": status, "message": message, "status": "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"}
        }
    if api == "bedrock":
        return {"message": message}
    return {
        "error": {
            "message": message,
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "code": str(status),
            "param": None,
        }
    }
