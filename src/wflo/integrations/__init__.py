"""Integrations: how wflo sees the LLM and tool calls of the SDKs and frameworks you use."""

from ._egress import egress
from ._http import fallback
from ._http import install as install_http_interception
from ._wrap import wrap

__all__ = ["egress", "fallback", "install_http_interception", "wrap"]
