"""Amazon Bedrock ``Converse`` (``POST /model/{modelId}/converse``), seen through botocore's
parsed parameters or raw HTTP. The cap is ``inferenceConfig.maxTokens``; Claude's thinking
(``additionalModelRequestFields.thinking.budget_tokens``) is inside it."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .._usage import Usage
from ._base import Format, LLMRequest


class BedrockConverse(Format):
    api = "bedrock"
    cap_fields = ("inferenceConfig.maxTokens",)

    def matches(self, path: str) -> bool:
        return path.startswith("/model/") and path.endswith("/converse")

    def model(self, body: dict[str, Any], path: str) -> str:
        if body.get("modelId"):
            return str(body["modelId"])
        return unquote(path[len("/model/") : -len("/converse")]) or "unknown"

    def is_stream(self, body: dict[str, Any], path: str) -> bool:
        return False

    def check(self, req: LLMRequest) -> None:
        if req.body.get("promptVariables") or str(req.model).startswith("arn:"):
            raise self.unbounded(req, "a prompt-management ARN hides the prompt wflo would bound")

    def usage(self, document: dict[str, Any]) -> Usage | None:
        u = document.get("usage")
        if not isinstance(u, dict) or "inputTokens" not in u:
            return None
        read = int(u.get("cacheReadInputTokens") or 0)
        write = int(u.get("cacheWriteInputTokens") or 0)
        return Usage(
            input_tokens=int(u.get("inputTokens") or 0) + read + write,
            output_tokens=int(u.get("outputTokens") or 0),
            cached_input_tokens=read,
            cache_write_tokens=write,
        )
