"""Sandboxed code execution (promise P4): untrusted code with no host files, network or secrets."""

from ._base import Limits, SandboxBackend, SandboxResult, parse_size
from ._egress import Egress
from ._sandbox import Sandbox, register_backend

__all__ = ["Egress", "Limits", "Sandbox", "SandboxBackend", "SandboxResult", "parse_size", "register_backend"]
