"""Google Gemini ``generateContent`` / ``streamGenerateContent`` (Gemini API and Vertex AI):
``POST …/models/{model}:generateContent``. The model is in the path; the cap is
``generationConfig.maxOutputTokens`` per candidate (``candidateCount``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .._usage import Usage
from ._base import Format, LLMRequest, positive_int

THINKING_ALLOWANCE = 32768
"""Largest thinking budget of a Gemini model: reserved when a request sets none, because
whether thinking counts inside ``maxOutputTokens`` differs between model generations."""


class Gemini(Format):
    api = "gemini"
    cap_fields = ("generationConfig.maxOutputTokens",)

    def matches(self, path: str) -> bool:
        return path.endswith((":generateContent", ":streamGenerateContent"))

    def model(self, body: dict[str, Any], path: str) -> str:
        name = unquote(path).rsplit("/models/", 1)[-1].split(":", 1)[0]
        return name or "unknown"

    def is_stream(self, body: dict[str, Any], path: str) -> bool:
        return path.endswith(":streamGenerateContent")

    def choices(self, body: dict[str, Any]) -> int:
        config = body.get("generationConfig") or {}
        return positive_int(config.get("candidateCount"))

    def check(self, req: LLMRequest) -> None:
        if req.body.get("cachedContent"):
            raise self.unbounded(req, "cached content is server-side state wflo has no record of")
        for tool in req.body.get("tools") or []:
            if isinstance(tool, dict) and set(tool) - {"functionDeclarations", "function_declarations"}:
                raise self.unbounded(req, f"the built-in tool {sorted(tool)} is billed per use, outside the token caps")

    def extra_output_tokens(self, req: LLMRequest) -> int:
        thinking = (req.body.get("generationConfig") or {}).get("thinkingConfig") or {}
        budget = thinking.get("thinkingBudget")
        per_candidate = budget if isinstance(budget, int) and budget >= 0 else THINKING_ALLOWANCE
        return per_candidate * self.choices(req.body)

    def usage(self, document: dict[str, Any]) -> Usage | None:
        u = document.get("usageMetadata")
        if not isinstance(u, dict) or "promptTokenCount" not in u:
            return None
        thoughts = int(u.get("thoughtsTokenCount") or 0)
        return Usage(
            input_tokens=int(u.get("promptTokenCount") or 0) + int(u.get("toolUsePromptTokenCount") or 0),
            output_tokens=int(u.get("candidatesTokenCount") or 0) + thoughts,
            cached_input_tokens=int(u.get("cachedContentTokenCount") or 0),
            reasoning_tokens=thoughts,
        )

    def stream_usage(self, events: list[dict[str, Any]]) -> Usage | None:
        # Every chunk may carry the usage so far; it is the call's only once a candidate
        # finished (a stream cut before that was billed for more).
        if not any(c.get("finishReason") for ev in events for c in ev.get("candidates") or [] if isinstance(c, dict)):
            return None
        return super().stream_usage(events)

    def streamed_text(self, events: list[dict[str, Any]]) -> str:
        return "".join(
            str(part.get("text") or "")
            for ev in events
            for cand in ev.get("candidates") or []
            for part in (cand.get("content") or {}).get("parts") or []
        )
