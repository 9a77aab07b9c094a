"""The error a secure tool raises when it refuses its input.

::

    ToolDeniedError (wflo._errors)     a secure tool refused its input
    ├── ToolRefused                    also a UserError: the call (the agent's input) is wrong
    └── UntrustedTool                  also a UserError: a packaged tool failed its signature check

``ToolRefused`` carries ``tool`` (the tool's name) and ``reason`` (written for the model that
made the call, so it can correct itself), pickles cleanly and is never retried.
"""

from __future__ import annotations

from .._errors import ToolDeniedError, UserError

__all__ = ["ToolRefused", "UntrustedTool"]


class ToolRefused(ToolDeniedError, UserError):
    """A secure tool refused the call: a SQL write, an address it may not reach, a path outside
    its root, a limit (rows, bytes, time) that would be exceeded, …"""

    code = "tool_denied"


class UntrustedTool(ToolDeniedError, UserError):
    """A packaged tool refused under ``require_signed_tools``: unsigned, signed by a key nobody
    trusted (``wflo tools trust``), or altered after it was signed (the file is named)."""

    code = "tool_untrusted"

    def _message(self) -> str:
        return f"tool {self.tool!r} is not trusted: {self.reason}"
