"""OpenAI Chat Completions (``POST …/chat/completions``), also spoken by Azure OpenAI, Groq,
Mistral, Together, Fireworks, OpenRouter, DeepSeek, xAI, vLLM and Ollama."""

from __future__ import annotations

from typing import Any

from .._usage import Usage, usage_from_response
from ._base import Format, LLMRequest, positive_int


class OpenAIChat(Format):
    api = "chat"
    cap_fields = ("max_completion_tokens", "max_tokens")

    def matches(self, path: str) -> bool:
        return path.endswith("/chat/completions")

    def cap_field(self, body: dict[str, Any], provider: str) -> str:
        for name in self.cap_fields:
            if body.get(name) is not None:
                return name
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
        # compatible servers know max_tokens.
        return "max_completion_tokens" if provider in ("openai", "azure") else "max_tokens"

    def choices(self, body: dict[str, Any]) -> int:
        return positive_int(body.get("n"))

    def check(self, req: LLMRequest) -> None:
        modalities = req.body.get("modalities")
        if isinstance(modalities, list) and "audio" in modalities:
            raise self.unbounded(req, "audio output is billed at audio-token rates wflo does not bound")
        if req.body.get("web_search_options") is not None or "search-preview" in req.model.lower():
            # The search models (gpt-4o-search-preview, …) search on every call, options or not.
            raise self.unbounded(req, "web search is billed per search, outside the token caps")
        check_openai_pricing(self, req)

    def prepare_stream(self, req: LLMRequest) -> None:
        ask_usage(req)

    def usage(self, document: dict[str, Any]) -> Usage | None:
        return usage_from_response("chat", document) if document.get("usage") else None

    def streamed_text(self, events: list[dict[str, Any]]) -> str:
        import json

        parts: list[str] = []
        for ev in events:
            for choice in ev.get("choices") or []:
                delta = choice.get("delta") or {}
                parts.append(str(delta.get("content") or ""))
                for tc in delta.get("tool_calls") or []:
                    parts.append(json.dumps(tc.get("function") or {}))
        return "".join(parts)


def ask_usage(req: LLMRequest) -> None:
    """A stream reports its usage only when asked (``stream_options.include_usage``): ask,
    and keep the extra chunk from a caller who did not."""
    if not req.stream:
        return
    options = req.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return
    req.body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    req.hide_usage = True
    req.changed = True


def check_openai_pricing(fmt: Format, req: LLMRequest) -> None:
    """Options that bill outside the price book's token rates or the output cap."""
    if req.body.get("service_tier") == "priority":
        raise fmt.unbounded(req, "the priority service tier is billed above the model's listed rates")
    if req.body.get("prediction") is not None:
        raise fmt.unbounded(req, "rejected prediction tokens are billed outside the output cap")
