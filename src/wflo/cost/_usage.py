"""Token usage as providers report it, normalised to one convention.

Convention: ``input_tokens`` counts *every* input token, including cache reads and cache
writes (OpenAI's ``prompt_tokens`` already does; Anthropic reports them apart and they are
added); ``output_tokens`` counts every output token including reasoning tokens. Extraction
from raw responses is done by ``genai-prices``' maintained extractors.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

_FLAVORS = {"chat": ("openai", "chat"), "responses": ("openai", "responses"), "messages": ("anthropic", "default")}
# genai-prices' extractors also match the model; usage fields do not depend on it, so a
# model it knows stands in (your own fine-tunes have usage too).
_STAND_IN = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def usage_from_response(api: str, document: dict[str, Any]) -> Usage | None:
    """Usage of a provider response document (chat completion, response, message)."""
    import genai_prices

    provider_id, flavor = _FLAVORS.get(api, ("openai", "chat"))
    if not document.get("usage"):
        return None
    doc = {**document, "model": _STAND_IN[provider_id]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extracted = genai_prices.extract_usage(doc, provider_id=provider_id, api_flavor=flavor)
    except Exception:
        return None
    u = extracted.usage
    return Usage(
        input_tokens=int(u.input_tokens or 0),
        output_tokens=int(u.output_tokens or 0),
        cached_input_tokens=int(getattr(u, "cache_read_tokens", 0) or 0),
        cache_write_tokens=int(getattr(u, "cache_write_tokens", 0) or 0),
        reasoning_tokens=int(getattr(u, "output_reasoning_tokens", 0) or 0),
    )


def anthropic_stream_document(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Fold Anthropic stream events into one message document with its final usage."""
    message: dict[str, Any] | None = None
    for ev in events:
        if ev.get("type") == "message_start" and isinstance(ev.get("message"), dict):
            message = dict(ev["message"])
            message["usage"] = dict(message.get("usage") or {})
        elif ev.get("type") == "message_delta" and message is not None:
            for key, value in (ev.get("usage") or {}).items():
                if value is not None:
                    message["usage"][key] = value
    return message
