"""OpenAI legacy Completions (``POST …/completions``; LiteLLM's ``text_completion``)."""

from __future__ import annotations

from typing import Any

from ._base import Format, LLMRequest, openai_usage, positive_int
from .openai_chat import ask_usage


class OpenAICompletions(Format):
    api = "completions"
    cap_fields = ("max_tokens",)
    default_cap = 16
    """The API's own default: writing it in keeps the request's meaning."""

    def matches(self, path: str) -> bool:
        return path.endswith("/completions") and not path.endswith("/chat/completions")

    def choices(self, body: dict[str, Any]) -> int:
        # best_of completions are generated (and billed) per prompt, n of them returned;
        # a list of prompts is a batch: each prompt gets its own.
        per_prompt = max(positive_int(body.get("n")), positive_int(body.get("best_of")))
        prompt = body.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
        return per_prompt * max(1, prompts)

    def check(self, req: LLMRequest) -> None:
        pass

    def prepare_stream(self, req: LLMRequest) -> None:
        ask_usage(req)

    def usage(self, document: dict[str, Any]) -> Any:
        return openai_usage(document)

    def streamed_text(self, events: list[dict[str, Any]]) -> str:
        return "".join(str(c.get("text") or "") for ev in events for c in ev.get("choices") or [])
