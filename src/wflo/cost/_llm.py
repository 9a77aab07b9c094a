"""LLM wire formats as the budget guard meets them: recorded HTTP responses → usage → cost.

The HTTP layer records a response as ``{"status", "headers", "body"}``, where the body is the
JSON document, or the whole server-sent-event stream for a streamed call. This module turns
that into a :class:`Usage` and a cost.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from ._estimate import estimate_input_tokens, estimate_text_tokens
from ._ledger import CostRequest
from ._prices import Price, prices
from ._usage import Usage, anthropic_stream_document, usage_from_response

_M = Decimal(1_000_000)


def cost_request(price: Price, provider: str, body: dict[str, Any], output_cap: int) -> CostRequest:
    """The worst case of a request: every input token (bounded) and the whole output cap."""
    input_tokens = estimate_input_tokens(provider, price.model, body, context_window=price.context_window)
    input_cost, out_per_token = prices.worst_case(price.model, price.provider, input_tokens, output_cap)
    return CostRequest(input_cost=input_cost, output_price_per_token=out_per_token, output_cap=output_cap)


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


def _is_stream(recorded: dict[str, Any]) -> bool:
    return "text/event-stream" in (recorded.get("headers") or {}).get("content-type", "")


def usage_of(api: str, recorded: dict[str, Any]) -> Usage | None:
    """The usage a recorded response reports, or ``None`` when it reports none."""
    body = recorded.get("body") or ""
    if _is_stream(recorded):
        events = sse_events(body)
        if api == "messages":
            doc = anthropic_stream_document(events)
            return usage_from_response(api, doc) if doc else None
        if api == "responses":
            for ev in reversed(events):
                response = ev.get("response")
                if isinstance(response, dict) and response.get("usage"):
                    return usage_from_response(api, response)
            return None
        for ev in reversed(events):
            if ev.get("usage"):
                return usage_from_response(api, ev)
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return usage_from_response(api, doc) if isinstance(doc, dict) else None


def _streamed_text(events: list[dict[str, Any]]) -> str:
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


def fallback_cost(price: Price, provider: str, body: dict[str, Any], recorded: dict[str, Any] | None) -> Decimal:
    """Cost of a call whose usage is unknown: the input bound plus what was seen of the output
    (for a stream cut short); zero for an error status (providers do not bill refusals)."""
    if recorded is None or int(recorded.get("status", 200)) >= 400:
        return Decimal(0)
    input_tokens = estimate_input_tokens(provider, price.model, body, context_window=price.context_window)
    text = _streamed_text(sse_events(recorded.get("body") or "")) if _is_stream(recorded) else ""
    usage = Usage(input_tokens=input_tokens, output_tokens=estimate_text_tokens(price.model, text))
    return prices.cost(price.model, usage, price.provider).total
