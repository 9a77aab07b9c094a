"""Upper bounds on a request's tokens, computed offline before it is sent.

Input: byte-level BPE tokenizers (OpenAI's, Anthropic's, most others) never produce more
tokens than the UTF-8 bytes of the text, so wflo counts bytes (plus a per-message overhead
and a fixed allowance per image), capped by the model's context window when known (a longer
request is refused by the provider, not billed). That is a true upper bound with no
tokenizer download; it over-reserves (often ~4x for English), and the difference is
released when the call settles on the provider's reported usage.

Output: the request's own cap (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``). A request without one gets ``DEFAULT_OUTPUT_CAP`` written into it,
so that the bound holds.
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_OUTPUT_CAP = 4096
PER_MESSAGE = 8
PER_IMAGE = 2000


def estimate_text_tokens(model: str, text: str) -> int:
    """Upper bound on the tokens of ``text``."""
    return len(text.encode("utf-8"))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") in (
                "image_url",
                "image",
                "input_image",
                "file",
                "input_file",
                "document",
            ):
                total += PER_IMAGE
            elif isinstance(part, dict):
                total += _content_tokens(part.get("text") if "text" in part else part.get("content", json.dumps(part)))
            else:
                total += _content_tokens(part)
        return total
    if isinstance(content, dict):
        return _content_tokens(content.get("text") if "text" in content else json.dumps(content))
    return len(json.dumps(content, default=str).encode("utf-8"))


def estimate_input_tokens(provider: str, model: str, body: dict[str, Any], *, context_window: int | None = None) -> int:
    """Upper bound on the input tokens of a chat-completions, responses or messages request."""
    total = 0
    for message in body.get("messages") or []:
        total += PER_MESSAGE
        if isinstance(message, dict):
            total += _content_tokens(message.get("content"))
            for call in message.get("tool_calls") or []:
                total += len(json.dumps(call).encode("utf-8"))
    inp = body.get("input")
    if isinstance(inp, str):
        total += _content_tokens(inp)
    elif isinstance(inp, list):
        for item in inp:
            total += PER_MESSAGE + (
                _content_tokens(item.get("content"))
                if isinstance(item, dict) and "content" in item
                else _content_tokens(item)
            )
    for key in ("system", "instructions"):
        total += _content_tokens(body.get(key))
    if body.get("tools"):
        total += len(json.dumps(body["tools"]).encode("utf-8"))
    total = max(1, total)
    return min(total, context_window) if context_window else total
