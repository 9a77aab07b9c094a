"""Integrations: how wflo sees the LLM and tool calls of the SDKs and frameworks you use."""

from ._http import install as install_http_interception

__all__ = ["install_http_interception"]
