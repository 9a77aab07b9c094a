"""OpenAI Responses (``POST …/responses``).

Server-side state: ``previous_response_id`` makes the provider bill the whole earlier
conversation (its input and output) as this request's input. wflo bounds it from its own
record of that response (the budget guard passes ``state_tokens``); a response it has no
record of, or a stored ``conversation``, cannot be bounded and is refused.
"""

from __future__ import annotations

from typing import Any

from .._usage import Usage, usage_from_response
from ._base import Format, LLMRequest
from .openai_chat import check_openai_pricing

# Built-in tools billed per use (searches, containers, generated images), outside token caps.
_BILLED_TOOLS = ("web_search", "file_search", "code_interpreter", "image_generation", "computer_use", "mcp")


class OpenAIResponses(Format):
    api = "responses"
    cap_fields = ("max_output_tokens",)

    def matches(self, path: str) -> bool:
        return path.endswith("/responses")

    def check(self, req: LLMRequest) -> None:
        body = req.body
        if body.get("conversation") is not None:
            raise self.unbounded(req, "a stored conversation is server-side state wflo has no record of")
        if body.get("background"):
            raise self.unbounded(req, "a background response is billed after this request returns")
        check_openai_pricing(self, req)
        for tool in body.get("tools") or []:
            kind = str(tool.get("type", "")) if isinstance(tool, dict) else ""
            if kind.startswith(_BILLED_TOOLS):
                raise self.unbounded(req, f"the built-in tool {kind!r} is billed per use, outside the token caps")

    def usage(self, document: dict[str, Any]) -> Usage | None:
        return usage_from_response("responses", document) if document.get("usage") else None

    def stream_usage(self, events: list[dict[str, Any]]) -> Usage | None:
        for ev in reversed(events):
            response = ev.get("response")
            if isinstance(response, dict) and response.get("usage"):
                return self.usage(response)
        return None

    def streamed_text(self, events: list[dict[str, Any]]) -> str:
        return "".join(
            str(ev.get("delta") or "")
            for ev in events
            if ev.get("type") in ("response.output_text.delta", "response.function_call_arguments.delta")
        )

    def response_id(self, document: dict[str, Any]) -> str | None:
        if isinstance(document.get("response"), dict):  # a stream event
            document = document["response"]
        rid = document.get("id")
        return rid if isinstance(rid, str) and document.get("object", "response") == "response" else None
