"""LLM requests as the budget guard meets them: request → worst-case cost; recorded HTTP
response → usage → cost.

The HTTP layer records a response as ``{"status", "headers", "body"}``, where the body is the
JSON document, or the whole server-sent-event stream for a streamed call. The wire shapes
themselves live in ``_formats`` (one module per API format).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from ._estimate import estimate_text_tokens
from ._formats import Format, LLMRequest
from ._ledger import CostRequest
from ._prices import Price, PriceBook, prices
from ._usage import Usage

_M = Decimal(1_000_000)


def _cache_write_rate(price: Price, body: dict[str, Any]) -> Decimal | None:
    """The input rate when the request asks for cache writes (Anthropic ``cache_control``): a
    write is billed above the input rate (1.25x for 5 minutes, 2x for an hour)."""
    text = json.dumps(body, default=str)
    if '"cache_control"' not in text:
        return None
    one_hour = '"ttl": "1h"' in text
    write = price.cache_write_per_mtok or price.input_per_mtok * Decimal("1.25")
    return max(write, price.input_per_mtok * (2 if one_hour else 1))


def cost_request(price: Price, req: LLMRequest, *, book: PriceBook | None = None) -> CostRequest:
    """The worst case of a request: every input token it can be billed (server-side state and
    cache writes included), and ``choices x cap`` output tokens (plus thinking a cap does not
    bound). The per-token output price is multiplied by the choices, so the ledger's clamp
    lowers the per-choice cap. ``book``: the price book ``price`` came from (default
    ``wflo.cost.prices``)."""
    fmt = req.fmt
    input_tokens = fmt.input_tokens(req, price.context_window)
    cap = req.output_cap
    choices = fmt.choices(req.body)
    input_cost, out_per_token = (book or prices).worst_case(
        price.model, price.provider, input_tokens, (cap or 0) * choices
    )
    write_rate = _cache_write_rate(price, req.body)
    if write_rate is not None and not price.tiered:
        input_cost = max(input_cost, input_tokens * write_rate / _M)
    extra = fmt.extra_output_tokens(req)
    if extra:
        input_cost += extra * out_per_token
    req.notes["bound"] = {"input_tokens": input_tokens, "choices": choices, "output_cap": cap}
    if extra:
        req.notes["bound"]["extra_output_tokens"] = extra
    return CostRequest(
        input_cost=input_cost,
        output_price_per_token=out_per_token * choices,
        output_cap=cap if choices else None,
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


def is_stream(recorded: dict[str, Any]) -> bool:
    return "text/event-stream" in (recorded.get("headers") or {}).get("content-type", "")


def document(recorded: dict[str, Any]) -> dict[str, Any] | None:
    try:
        doc = json.loads(recorded.get("body") or "")
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def usage_of(fmt: Format, recorded: dict[str, Any]) -> Usage | None:
    """The usage a recorded response reports, or ``None`` when it reports none."""
    if is_stream(recorded):
        return fmt.stream_usage(sse_events(recorded.get("body") or ""))
    doc = document(recorded)
    return fmt.usage(doc) if doc is not None else None


def response_id(fmt: Format, recorded: dict[str, Any]) -> str | None:
    """The provider's id of a recorded response (for ``previous_response_id`` later)."""
    if is_stream(recorded):
        for ev in sse_events(recorded.get("body") or ""):
            found = fmt.response_id(ev)
            if found:
                return found
        return None
    doc = document(recorded)
    return fmt.response_id(doc) if doc is not None else None


def fallback_cost(
    price: Price, req: LLMRequest, recorded: dict[str, Any] | None, *, book: PriceBook | None = None
) -> Decimal:
    """Cost of a finished call whose usage is unknown: the input bound plus what was seen of
    the output, never more than the output cap allows; zero for an error status (providers do
    not bill refusals). ``book``: the price book ``price`` came from."""
    if recorded is None or int(recorded.get("status", 200)) >= 400:
        return Decimal(0)
    fmt = req.fmt
    input_tokens = fmt.input_tokens(req, price.context_window)
    seen = 0
    if is_stream(recorded):
        seen = estimate_text_tokens(price.model, fmt.streamed_text(sse_events(recorded.get("body") or "")))
    cap = req.output_cap
    if cap is not None:
        seen = min(seen, cap * max(1, fmt.choices(req.body)) + fmt.extra_output_tokens(req))
    usage = Usage(input_tokens=input_tokens, output_tokens=seen)
    return (book or prices).cost(price.model, usage, price.provider).total
