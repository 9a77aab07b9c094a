"""The error a secure tool raises when it refuses its input.

::

    ToolDeniedError (wflo._errors)     a secure tool refused its input
    └── ToolRefused                    also a UserError: the call (the agent's input) is wrong

``ToolRefused`` carries ``tool`` (the tool's name) and ``reason`` (written for the model that
made the call, so it can correct itself), pickles cleanly and is never retried.
"""

from __future__ import annotations

from .._errors import ToolDeniedError, UserError

__all__ = ["ToolRefused"]


class ToolRefused(ToolDeniedError, UserError):
    """A secure tool refused the call: a SQL write, an address it may not reach, a path outside
    its root, a limit (rows, bytes, time) that would be exceeded, …"""

    code = "tool_denied"
