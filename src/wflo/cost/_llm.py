"""LLM wire formats as the budget guard meets them: recorded HTTP responses → usage → cost.

The HTTP layer records a response as ``{"status", "headers", "body"}``, where the body is the
JSON document, or the whole server-sent-event stream for a streamed call. This module turns
that into a :class:`Usage` (using the extractors of ``_usage``) and a cost (``_prices``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from ._estimate import default_output_tokens, estimate_input_tokens, estimate_text_tokens
from ._ledger import CostRequest
from ._prices import Price, prices
from ._usage import Usage, usage_from_anthropic, usage_from_openai_chat, usage_from_openai_responses

_PER_TOKEN = Decimal(1_000_000)


def lookup_price(model: str, provider: str) -> Price:
    return prices.lookup(model, provider)


def estimate_input(provider: str, model: str, body: dict[str, Any]) -> int:
    return estimate_input_tokens(provider, model, body)


def default_output_cap(model: str, provider: str) -> int:
    return default_output_tokens(model, provider)


def cost_request(price: Price, input_tokens: int, output_cap: int) -> CostRequest:
    return CostRequest(
        input_cost=price.input_per_mtok * input_tokens / _PER_TOKEN,
        output_price_per_token=price.output_per_mtok / _PER_TOKEN,
        output_cap=output_cap,
    )


def sse_events(body: str) -> list[dict[str, Any]]:
    """The JSON payloads of a server-sent-event stream, in order (``[DONE]`` and junk skipped)."""
    events = []
    for line in body.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                try:
                    value = json.loads(data)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    events.append(value)
    return events


def usage_of(api: str, recorded: dict[str, Any]) -> Usage | None:
    """The usage a recorded response reports, or ``None`` when it reports none."""
    body = recorded.get("body") or ""
    content_type = (recorded.get("headers") or {}).get("content-type", "")
    if "text/event-stream" in content_type:
        return _stream_usage(api, sse_events(body))
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not doc.get("usage"):
        return None
    if api == "messages":
        return usage_from_anthropic(doc)
    if api == "responses":
        return usage_from_openai_responses(doc)
    return usage_from_openai_chat(doc)


def _stream_usage(api: str, events: list[dict[str, Any]]) -> Usage | None:
    if api == "messages":
        return (
            usage_from_anthropic(events)
            if any(e.get("type") in ("message_start", "message_delta") for e in events)
            else None
        )
    if api == "responses":
        for ev in reversed(events):
            response = ev.get("response")
            if isinstance(response, dict) and response.get("usage"):
                return usage_from_openai_responses(response)
        return None
    for ev in reversed(events):
        if ev.get("usage"):
            return usage_from_openai_chat(ev)
    return None


def usage_dict(usage: Usage) -> dict[str, int]:
    return {k: v for k, v in vars_of(usage).items() if isinstance(v, int)}


def vars_of(obj: Any) -> dict[str, Any]:
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields:
        return {name: getattr(obj, name) for name in fields}
    return dict(vars(obj))


def cost_of(model: str, provider: str, usage: Usage) -> Decimal:
    return prices.cost(model, usage, provider=provider).total


def _streamed_text(api: str, events: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for ev in events:
        for choice in ev.get("choices") or []:
            delta = choice.get("delta") or {}
            parts.append(str(delta.get("content") or ""))
            for tc in delta.get("tool_calls") or []:
                parts.append(json.dumps(tc.get("function") or {}))
        if ev.get("type") == "response.output_text.delta":
            parts.append(str(ev.get("delta") or ""))
        delta = ev.get("delta")
        if ev.get("type") == "content_block_delta" and isinstance(delta, dict):
            parts.append(str(delta.get("text") or delta.get("partial_json") or ""))
    return "".join(parts)


def fallback_cost(price: Price, body: dict[str, Any], provider: str, recorded: dict[str, Any] | None) -> Decimal:
    """Cost of a call whose usage is unknown: the input estimate plus what was seen of the
    output (for a cut stream), priced conservatively; zero for a refused request (4xx/5xx
    with no body tokens, which providers do not bill)."""
    if recorded is None:
        return Decimal(0)
    status = int(recorded.get("status", 200))
    if status >= 400:
        return Decimal(0)
    model = str(body.get("model", ""))
    input_tokens = estimate_input_tokens(provider, model, body)
    text = ""
    if "text/event-stream" in (recorded.get("headers") or {}).get("content-type", ""):
        text = _streamed_text("", sse_events(recorded.get("body") or ""))
    output_tokens = estimate_text_tokens(model, text) if text else 0
    cost = price.input_per_mtok * input_tokens / _PER_TOKEN + price.output_per_mtok * output_tokens / _PER_TOKEN
    return cost if cost == cost else Decimal(0)
