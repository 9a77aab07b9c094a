"""OpenAI Embeddings (``POST …/embeddings``): input only, no output tokens."""

from __future__ import annotations

from typing import Any

from .._usage import Usage
from ._base import Format, LLMRequest, openai_usage


class OpenAIEmbeddings(Format):
    api = "embeddings"
    cap_fields = ()
    default_cap = None

    def matches(self, path: str) -> bool:
        return path.endswith("/embeddings")

    def get_cap(self, body: dict[str, Any]) -> int | None:
        return None

    def set_cap(self, body: dict[str, Any], value: int, provider: str = "") -> None:
        raise NotImplementedError("embeddings have no output cap")

    def choices(self, body: dict[str, Any]) -> int:
        return 0

    def input_tokens(self, req: LLMRequest, context_window: int | None) -> int:
        # Each input is embedded (and billed) on its own, each at most the model's window.
        inputs = req.body.get("input")
        if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int):
            return sum(super(OpenAIEmbeddings, self).input_tokens(_one(req, i), context_window) for i in inputs)
        return super().input_tokens(req, context_window)

    def usage(self, document: dict[str, Any]) -> Usage | None:
        found = openai_usage(document)
        return Usage(input_tokens=found.input_tokens) if found is not None else None


def _one(req: LLMRequest, item: Any) -> LLMRequest:
    return LLMRequest(req.fmt, req.model, req.provider, req.host, req.path, req.client, {"input": item})
