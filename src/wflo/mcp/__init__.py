"""The Model Context Protocol, both ways (needs ``pip install 'wflo[mcp]'``).

- **out**: ``serve(tools, workflow=...)`` / ``wflo mcp serve`` exposes granted tools to MCP
  clients over stdio or streamable HTTP; each call is a journaled, guarded run.
- **in**: ``connect(command)`` wraps an external stdio MCP server's tools as ``wflo.tools.Tool``
  objects, so each call passes the call boundary (journal, loop guard, approval).

The SDK is imported only when one of them is used.
"""

from __future__ import annotations

from ._connect import Connection, MCPTool, connect
from ._serve import ToolServer, serve

__all__ = ["Connection", "MCPTool", "ToolServer", "connect", "serve"]
