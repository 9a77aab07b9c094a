"""Anthropic Messages (``POST …/messages``). Extended thinking's ``budget_tokens`` is inside
``max_tokens``; a cache write is billed above the input rate (the budget guard prices the
input at the write rate when the request marks anything for caching)."""

from __future__ import annotations

from typing import Any

from .._usage import Usage, anthropic_stream_document, usage_from_response
from ._base import Format, LLMRequest

_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution")
CLIENT_TOOL_ALLOWANCE = 1000
"""Tokens of system prompt a provider-defined client tool (bash, text editor, computer) adds."""


class AnthropicMessages(Format):
    api = "messages"
    cap_fields = ("max_tokens",)

    def matches(self, path: str) -> bool:
        return path.endswith("/messages")

    def check(self, req: LLMRequest) -> None:
        if req.body.get("mcp_servers"):
            raise self.unbounded(req, "MCP server tool use is billed outside the token caps")
        if req.body.get("container"):
            raise self.unbounded(req, "a code-execution container is billed per use")
        for tool in req.body.get("tools") or []:
            kind = str(tool.get("type", "")) if isinstance(tool, dict) else ""
            if kind.startswith(_SERVER_TOOLS):
                raise self.unbounded(req, f"the server tool {kind!r} is billed per use, outside the token caps")

    def input_tokens(self, req: LLMRequest, context_window: int | None) -> int:
        tools = req.body.get("tools") or []
        builtin = sum(1 for t in tools if isinstance(t, dict) and t.get("type") not in (None, "custom"))
        total = super().input_tokens(req, context_window) + CLIENT_TOOL_ALLOWANCE * builtin
        return min(total, context_window) if context_window else total

    def usage(self, document: dict[str, Any]) -> Usage | None:
        return usage_from_response("messages", document) if document.get("usage") else None

    def stream_usage(self, events: list[dict[str, Any]]) -> Usage | None:
        # The output is counted in ``message_delta`` at the end: ``message_start``'s usage
        # (all input, one output token) is not what a stream cut before it was billed.
        if not any(ev.get("type") == "message_delta" and ev.get("usage") for ev in events):
            return None
        doc = anthropic_stream_document(events)
        return self.usage(doc) if doc else None

    def streamed_text(self, events: list[dict[str, Any]]) -> str:
        parts = []
        for ev in events:
            delta = ev.get("delta")
            if ev.get("type") == "content_block_delta" and isinstance(delta, dict):
                parts.append(str(delta.get("text") or delta.get("partial_json") or delta.get("thinking") or ""))
        return "".join(parts)
