"""MCP in: an external MCP server's tools as ``wflo.tools.Tool`` objects.

``wflo.mcp.connect(["python", "server.py"])`` starts the server over stdio (the official SDK's
client, on a thread of its own) and returns a ``Connection`` whose ``tools`` an agent calls
like any other tool. Inside a run each call passes the call boundary: it is journaled (a
resumed run replays the recorded answer instead of calling the server again), loop-guarded,
and waits for approval when the tool is destructive or a policy says so.

MCP annotations are hints from the server, not facts: unless ``trust_hints=True``, every tool is
treated as destructive (so it asks for approval) except those named in ``read_only=``.
``prices={"search": "0.01"}`` prices a tool's calls: the budget ledger reserves and charges
them like LLM calls, and a grant's ``budget_usd`` caps them too.

``sandbox=Capabilities(...)`` (or a ``Manifest``) starts the server inside wflo's bubblewrap
sandbox with exactly those capabilities (``_jail.py``).

Grants name tools, so a tool's name must be its own: a server whose tool (after ``prefix=``)
has the name of a built-in tool, of a declared packaged tool or of a tool of another open
connection is refused (it would get that tool's grants: ``approval="none"``, its call caps).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from .._errors import UserError
from ..approvals import Approval
from ..tools import Capabilities, Effects, Manifest, Tool, ToolRefused


class MCPTool(Tool[..., Any]):
    """One tool of an external MCP server."""

    def __init__(
        self,
        conn: Connection,
        remote: Any,
        *,
        name: str,
        effects: Effects,
        approval: Approval | None,
        cost_usd: Decimal | None = None,
    ) -> None:
        self.remote_name = remote.name
        self._conn = conn
        self.schema = dict(remote.input_schema or {"type": "object", "properties": {}})
        # The SDK wraps a non-object return value as {"result": value}; the agent gets the value.
        unwrap = set((remote.output_schema or {}).get("properties") or {}) == {"result"}

        def call(**kwargs: Any) -> Any:
            value = conn.call(self.remote_name, kwargs)
            return value["result"] if unwrap and isinstance(value, dict) and set(value) == {"result"} else value

        call.__name__ = name
        super().__init__(call, name=name, description=remote.description or name, effects=effects,
                         approval=approval, risk="high" if effects.destructive else "medium",
                         capabilities=Capabilities(cost_usd=cost_usd))  # fmt: skip

    def parameters(self) -> dict[str, Any]:
        return self.schema

    def _call(self, ctx: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = super()._call(ctx, args, kwargs)
        caps = self._conn.sandbox
        if caps is not None:  # what the server could reach is part of the record (secrets by name)
            call.event["sandbox"] = {"read": list(caps.read), "write": list(caps.write),
                                     "network": list(caps.network), "secrets": list(caps.secrets)}  # fmt: skip
        return call


_OPEN: weakref.WeakSet[Connection] = weakref.WeakSet()
"""The connections not closed yet: their tool names are taken."""
_OPEN_LOCK = threading.Lock()


class Connection:
    """A running stdio MCP server and its tools (``close()`` or ``with`` stops it).

    ``sandbox=`` runs the server in the sandbox with a manifest of its own: only its paths,
    its network allow-list (or none), its secrets and its limits; ``cwd`` is then ``/work``."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        prefix: str = "",
        read_only: Sequence[str] = (),
        trust_hints: bool = False,
        approval: Approval | None = None,
        prices: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        sandbox: Capabilities | Manifest | None = None,
    ) -> None:
        if isinstance(command, str) or not command or not all(isinstance(c, str) for c in command):
            raise UserError("connect() takes the server's command as a list: ['python', 'server.py']")
        # One name as a string is that name (as Approval's approvers): ``name in "a_text"`` was a
        # substring test, so read_only="count_and_wipe" made an unhinted "wipe" read-only,
        # and it ran without the approval a destructive tool waits for.
        read_only_names = frozenset([read_only] if isinstance(read_only, str) else read_only)
        try:
            from mcp.client.stdio import StdioServerParameters
        except ImportError:
            raise UserError("MCP needs the official SDK: pip install 'wflo[mcp]'") from None
        costs = {name: _price(name, value) for name, value in (prices or {}).items()}
        self._params = StdioServerParameters(command=command[0], args=list(command[1:]), env=dict(env or {}), cwd=cwd)
        self._timeout = timeout
        self.sandbox: Capabilities | None = None
        if sandbox is not None:
            self.sandbox = _checked(sandbox)
            self._params = _jailed(list(command), self.sandbox, dict(env or {}))
            self._timeout = min(timeout, self.sandbox.limits.wall)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wflo-mcp", daemon=True)
        self._thread.start()
        self._requests: asyncio.Queue[Any] | None = None
        # Which server this is, for the names it may share with another open connection: its
        # program and directory (not env=, which two runs at once may set per run).
        self._source = (tuple(command), cwd)
        self._task: asyncio.Task[None] | None = None
        self._stopped = threading.Event()
        ready: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        self._main = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        try:
            self.tools: list[MCPTool] = self._wrap(ready.result(timeout), prefix, read_only_names, trust_hints,
                                                   approval, costs)  # fmt: skip
            self._claim_names()
        except BaseException:  # the server is stopped, whatever refused it (no process left behind)
            self.close()
            raise

    def _wrap(
        self, remote: list[Any], prefix: str, read_only_names: frozenset[str], trust_hints: bool,
        approval: Approval | None, costs: dict[str, Decimal],
    ) -> list[MCPTool]:  # fmt: skip
        names = [r.name for r in remote]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice or "" in names:
            what = f"two tools named {twice[0]!r}" if twice else "a tool with an empty name"
            raise UserError(f"the MCP server {self._params.command!r} lists {what}; wflo cannot tell them apart")
        tools = []
        for r in remote:
            hints = r.annotations
            if trust_hints and hints is not None:
                eff = Effects(read_only=bool(hints.read_only_hint), idempotent=bool(hints.idempotent_hint),
                              destructive=not hints.read_only_hint and hints.destructive_hint is not False,
                              open_world=hints.open_world_hint is not False)  # fmt: skip
            elif r.name in read_only_names:
                eff = Effects(read_only=True, open_world=True)
            else:
                eff = Effects(destructive=True, open_world=True)
            tools.append(
                MCPTool(self, r, name=prefix + r.name, effects=eff, approval=approval, cost_usd=costs.get(r.name))
            )
        return tools

    def _claim_names(self) -> None:
        """Refuse a tool name that another tool answers to in grants (a built-in, a declared
        packaged tool, a tool of another server still open); then hold the names until ``close()``."""
        from ..tools._packages import name_owners

        prefix_hint = "connect it with prefix= (prefix='srv_' names it 'srv_{}')"
        owners = name_owners([t.name for t in self.tools])
        for t in self.tools:
            owner = owners.get(t.name)
            if owner is not None:
                raise UserError(f"the MCP server {self._params.command!r} lists {t.remote_name!r}, named like {owner}; "
                                f"grants name tools, so it would get that tool's grants: "
                                + prefix_hint.format(t.remote_name))  # fmt: skip
        with _OPEN_LOCK:
            mine = {t.name for t in self.tools}
            for other in list(_OPEN):
                if other._source == self._source:
                    continue  # the same server started twice (two runs at once): the same tools
                clash = sorted(mine & {t.name for t in other.tools})
                if clash:
                    remote = next(t.remote_name for t in self.tools if t.name == clash[0])
                    raise UserError(f"the MCP server {self._params.command!r} lists {remote!r}, named like a tool of "
                                    f"the open MCP server {other._params.command!r}; grants name tools, so it would "
                                    f"get that tool's grants: " + prefix_hint.format(remote))  # fmt: skip
            _OPEN.add(self)

    async def _serve(self, ready: concurrent.futures.Future[list[Any]]) -> None:
        # One task owns the SDK's contexts from start to end (anyio's scopes must be left by
        # the task that entered them); calls come in on a queue.
        from mcp.client.session import ClientSession
        from mcp.client.stdio import stdio_client

        self._requests = asyncio.Queue()
        self._task = asyncio.current_task()
        try:
            # Every request waits at most the timeout: a server that never answers (or sends a
            # line the SDK drops) ends that call, not the connection's one task.
            async with (
                stdio_client(self._params) as (read, write),
                ClientSession(read, write, read_timeout_seconds=self._timeout) as session,
            ):
                await session.initialize()
                listed = await session.list_tools()
                ready.set_result(list(listed.tools))
                while True:
                    item = await self._requests.get()
                    if item is None:
                        return
                    name, args, fut = item
                    try:
                        fut.set_result(await session.call_tool(name, args))
                    except Exception as exc:
                        fut.set_exception(exc)
        except BaseException as exc:
            if not ready.done():
                leaf: BaseException = exc
                while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                    leaf = leaf.exceptions[0]
                why = f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__
                ready.set_exception(UserError(f"the MCP server {self._params.command!r} did not start ({why})"))
            raise
        finally:
            self._stopped.set()

    def call(self, name: str, args: dict[str, Any]) -> Any:
        """Call a tool of the server (blocking); its structured result, or its text."""
        if self._requests is None or self._main.done():
            raise ToolRefused(tool=name, reason="the MCP server is not running")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._requests.put_nowait, (name, args, fut))
        try:
            result = fut.result(self._timeout + 5)  # the SDK's own timeout answers first
        except concurrent.futures.TimeoutError:
            raise ToolRefused(tool=name, reason=f"the MCP server did not answer within {self._timeout:g}s") from None
        except Exception as exc:  # the connection closed under the call, or the SDK refused the answer
            if "timed out" in str(exc).lower():
                raise ToolRefused(
                    tool=name, reason=f"the MCP server did not answer within {self._timeout:g}s"
                ) from None
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self.sandbox is not None:
                why += " (a sandboxed server is stopped when it passes a limit: its stderr says which)"
            raise ToolRefused(tool=name, reason=f"the MCP server failed ({why})") from None
        text = "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text")
        if result.is_error:
            raise ToolRefused(tool=name, reason=f"the MCP server answered with an error: {text[:1000]}")
        return result.structured_content if result.structured_content is not None else text

    def close(self) -> None:
        """Stop the server and the connection's thread."""
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if self._requests is not None and not self._main.done():
            self._loop.call_soon_threadsafe(self._requests.put_nowait, None)
            with contextlib.suppress(Exception):
                self._main.result(2)
        if not self._main.done() and self._task is not None:
            # A call still waits on the server (or it never finished starting): cancelling the
            # task leaves the SDK's contexts, which stop the server's process. Stopping the
            # loop under them instead left the process running.
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._stopped.wait(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checked(sandbox: Any) -> Capabilities:
    if isinstance(sandbox, Manifest):
        sandbox = sandbox.capabilities
    if not isinstance(sandbox, Capabilities):
        raise UserError("sandbox= takes a wflo.tools.Capabilities(...) or a Manifest")
    # Checked like a manifest's (absolute paths, nothing over the sandbox's own tree).
    return Manifest.from_dict({"name": "mcp-server", "capabilities": Manifest(name="x", capabilities=sandbox)
                               .to_dict()["capabilities"]}).capabilities  # fmt: skip


def _jailed(command: list[str], caps: Capabilities, env: dict[str, str]) -> Any:
    import sys

    from mcp.client.stdio import StdioServerParameters

    from ..tools._runner import resolve_secrets
    from . import _jail

    secrets = resolve_secrets(caps.secrets, command[0])
    jail_env = {_jail.ENV: _jail.config(command, caps, env, secrets)}
    if "PYTHONPATH" in os.environ:
        jail_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return StdioServerParameters(command=sys.executable, args=["-m", "wflo.mcp._jail"], env=jail_env)


def _price(name: str, value: Any) -> Decimal:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        price = Decimal(-1)
    if isinstance(value, bool | float) or not price.is_finite() or price < 0:
        raise UserError(f"prices[{name!r}] must be a decimal string like '0.01', got {value!r}")
    return price


def connect(command: Sequence[str], **options: Any) -> Connection:
    """Start an external stdio MCP server and wrap its tools (see ``Connection``)."""
    return Connection(command, **options)
