"""MCP out: wflo tools as an MCP server (the official ``mcp`` SDK, stdio or streamable HTTP).

``wflo mcp serve --workflow research`` exposes the tools granted to ``workflow:research``
(and to ``--tenant``/``--agent`` when given). Each ``tools/call`` is a durable run of the
workflow ``research`` holding one tool call, so it passes the call boundary like any other:
grant check, loop guard, approval (a destructive tool's call waits for a decision), journal.
A refusal comes back to the MCP client as an error result whose text is the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import _config
from .._errors import UserError, WfloError
from .._scope import scope
from ..tools import Tool, ToolRefused, grants


def _sdk() -> Any:
    try:
        import mcp_types
        from mcp.server.lowlevel import Server
    except ImportError:
        raise UserError("MCP needs the official SDK: pip install 'wflo[mcp]'") from None
    return mcp_types, Server


CALL_THREADS = 64
"""Tool calls in progress at once on one server (each may wait for an approval); more queue."""


class ToolServer:
    """The tools an MCP client may call, for one workflow (and optionally tenant and agent)."""

    def __init__(
        self, tools: Sequence[Tool[..., Any]], *, workflow: str, tenant: str | None = None, agent: str | None = None
    ) -> None:
        import wflo

        if not workflow or ":" in workflow:
            raise UserError(f"workflow must be a name (the runs' workflow), got {workflow!r}")
        self.tools = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise UserError("two tools have the same name")
        self.workflow, self.tenant, self.agent = workflow, tenant, agent
        self._calls: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.principals = [f"workflow:{workflow}"] + ([f"tenant:{tenant}"] if tenant else []) + (
            [f"agent:{agent}"] if agent else [])  # fmt: skip

        def call_tool(name: str, arguments: dict[str, Any]) -> Any:
            with scope(agent=agent) if agent else contextlib.nullcontext():
                return self.tools[name](**arguments)

        call_tool.__name__ = f"mcp_{workflow}"
        self._wf = wflo.workflow(name=workflow)(call_tool)

    def visible(self) -> list[Tool[..., Any]]:
        """The tools this server lists: those granted to one of its principals (and, unless
        grants are required, the non-packaged ones given to it)."""
        granted = {g.tool for g in grants() if g.principal in self.principals}
        required = _config.settings().require_tool_grants
        return [t for n, t in self.tools.items() if n in granted or not (t.packaged or required)]

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """One call, as a run of the workflow (raises what the tool or a guard raised)."""
        if name not in {t.name for t in self.visible()}:
            raise UserError(f"no tool named {name!r} is granted here")
        _check_arguments(self.tools[name], arguments)
        return self._wf.options(tenant=self.tenant).run(name, arguments)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._calls is None:
                self._calls = ThreadPoolExecutor(max_workers=CALL_THREADS, thread_name_prefix="wflo-mcp-call")
            return self._calls

    def build(self) -> Any:
        """The ``mcp.server.lowlevel.Server``."""
        types, server_cls = _sdk()

        async def list_tools(ctx: Any, params: Any) -> Any:
            listed = await asyncio.to_thread(self.visible)
            return types.ListToolsResult(tools=[_describe(types, t) for t in listed])

        async def call_tool(ctx: Any, params: Any) -> Any:
            try:
                # On threads of their own: a call waiting for an approval holds its thread for
                # hours; in asyncio's default pool (6 threads on 2 CPUs) a few such calls left
                # no thread for tools/list or any other call.
                work = functools.partial(contextvars.copy_context().run, self.call, params.name,
                                         dict(params.arguments or {}))  # fmt: skip
                value = await asyncio.get_running_loop().run_in_executor(self._executor(), work)
            except (WfloError, UserError) as exc:
                return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)
            except Exception as exc:  # the tool's own failure: its name, not its text (which may hold secrets)
                why = (f"the call failed ({type(exc).__name__}); the failed run of workflow {self.workflow!r} "
                       "has the details")  # fmt: skip
                return types.CallToolResult(content=[types.TextContent(type="text", text=why)], is_error=True)
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            structured = value if isinstance(value, dict) else None
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                        structured_content=structured)  # fmt: skip

        return server_cls("wflo", on_list_tools=list_tools, on_call_tool=call_tool)

    async def serve_stdio(self) -> None:
        server = self.build()  # first: without the SDK, the line naming the extra
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    def http_app(self, *, host: str = "127.0.0.1") -> Any:
        """A Starlette app serving streamable HTTP at ``/mcp``."""
        return self.build().streamable_http_app(host=host)


def _check_arguments(tool: Tool[..., Any], arguments: dict[str, Any]) -> None:
    """Refuse arguments that do not fit the tool's input schema, before a run is started: a
    missing, extra or mistyped argument is the client's mistake, told as such, not a failed run."""
    from jsonschema import Draft202012Validator

    try:
        errors = sorted(Draft202012Validator(tool.parameters()).iter_errors(arguments), key=lambda e: list(e.path))
    except Exception:  # the tool's own schema is odd (not the client's fault): the tool checks its input
        return
    if errors:
        where = ".".join(str(p) for p in errors[0].path) or "arguments"
        raise ToolRefused(tool=tool.name, reason=f"{where}: {errors[0].message[:500]}")


def _describe(types: Any, t: Tool[..., Any]) -> Any:
    e = t.effects
    notes = types.ToolAnnotations(read_only_hint=e.read_only, destructive_hint=e.destructive,
                                  idempotent_hint=e.idempotent, open_world_hint=e.open_world)  # fmt: skip
    return types.Tool(name=t.name, description=t.description, input_schema=t.parameters(), annotations=notes)


def serve(
    tools: Sequence[Tool[..., Any]],
    *,
    workflow: str,
    tenant: str | None = None,
    agent: str | None = None,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
) -> None:
    """Serve ``tools`` over MCP until the client goes away (stdio) or the process is stopped (http)."""
    srv = ToolServer(tools, workflow=workflow, tenant=tenant, agent=agent)
    if transport == "stdio":
        asyncio.run(srv.serve_stdio())
    elif transport == "http":
        import uvicorn

        uvicorn.run(srv.http_app(host=host), host=host, port=port, log_level="warning")
    else:
        raise UserError(f"transport must be 'stdio' or 'http', got {transport!r}")
