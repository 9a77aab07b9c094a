"""Provider API formats, one module each: request → upper bound and output-cap rewrite;
response or stream → usage. :func:`detect` picks the format of an HTTP request."""

from __future__ import annotations

from ._base import DEFAULT_OUTPUT_CAP, Format, LLMRequest, body_bound, has_media
from .anthropic import AnthropicMessages
from .bedrock import BedrockConverse
from .gemini import Gemini
from .openai_chat import OpenAIChat
from .openai_completions import OpenAICompletions
from .openai_embeddings import OpenAIEmbeddings
from .openai_responses import OpenAIResponses

FORMATS: tuple[Format, ...] = (
    OpenAIChat(),
    OpenAICompletions(),
    OpenAIEmbeddings(),
    OpenAIResponses(),
    AnthropicMessages(),
    Gemini(),
    BedrockConverse(),
)
BY_API = {f.api: f for f in FORMATS}


def detect(method: str, path: str) -> Format | None:
    """The format of a ``POST`` to ``path`` (any host), or ``None``."""
    if method.upper() != "POST":
        return None
    for fmt in FORMATS:
        if fmt.matches(path):
            return fmt
    return None


__all__ = ["BY_API", "DEFAULT_OUTPUT_CAP", "FORMATS", "Format", "LLMRequest", "body_bound", "detect", "has_media"]
