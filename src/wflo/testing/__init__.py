"""Helpers for your tests (and wflo's): a scripted OpenAI/Anthropic-compatible LLM server."""

from ._llm_server import LLMServer, Recorded, Reply, ToolCall

__all__ = ["LLMServer", "Recorded", "Reply", "ToolCall"]
