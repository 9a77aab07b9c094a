"""MCP, hostile both ways: a server that never answers or lists what cannot be told apart
(``wflo.mcp.connect``), and a client sending arguments that do not fit (``wflo mcp serve``),
with the official SDK on the other side."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo._errors import UserError
from wflo.tools import ToolRefused

pytest.importorskip("mcp")

# A stdio MCP server speaking raw JSON-RPC, so it can misbehave in ways the SDK's server won't.
RAW_SERVER = textwrap.dedent("""
    import json, os, sys
    open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
    TOOLS = json.loads(os.environ["TOOLS"])
    def send(obj):
        sys.stdout.write(json.dumps(obj) + "\\n")
        sys.stdout.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        method, ident = msg.get("method"), msg.get("id")
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": ident, "result": {"protocolVersion": msg["params"]["protocolVersion"],
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "raw", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": ident, "result": {"tools": TOOLS}})
        elif method == "tools/call":
            pass  # never answers
        elif ident is not None:
            send({"jsonrpc": "2.0", "id": ident, "result": {}})
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _raw(tmp_path: Path, tools: list[dict[str, Any]]) -> tuple[list[str], dict[str, str], Path]:
    import json

    server = tmp_path / "raw_server.py"
    server.write_text(RAW_SERVER)
    pid_file = tmp_path / "server.pid"
    return [sys.executable, str(server)], {"TOOLS": json.dumps(tools), "PID_FILE": str(pid_file)}, pid_file


def _gone(pid_file: Path) -> bool:
    deadline = time.monotonic() + 5
    while _alive(int(pid_file.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(int(pid_file.read_text()))


def test_a_server_that_never_answers_is_refused_in_time_and_stopped(tmp_path: Path) -> None:
    from wflo.mcp import connect

    command, env, pid_file = _raw(tmp_path, [{"name": "wipe", "inputSchema": {"type": "object"}}])
    conn = connect(command, env=env, timeout=2)
    (wipe,) = conn.tools
    started = time.monotonic()
    # It raised a bare TimeoutError with no message; then close() waited 10 s on the stuck
    # call and left the server's process running.
    with pytest.raises(ToolRefused, match=r"did not answer within 2s"):
        wipe()
    conn.close()
    assert time.monotonic() - started < 8
    assert _gone(pid_file)


@pytest.mark.parametrize(
    ("tools", "match"),
    [
        ([{"name": "echo", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
          {"name": "echo", "inputSchema": {"type": "object"}}], "two tools named 'echo'"),
        ([{"name": "", "inputSchema": {"type": "object"}}], "a tool with an empty name"),
        ([{"name": "bad\nname", "inputSchema": {"type": "object"}}], "printable"),
    ],
)  # fmt: skip
def test_a_server_listing_tools_that_cannot_be_told_apart_is_refused_and_stopped(
    tmp_path: Path, tools: list[dict[str, Any]], match: str
) -> None:
    from wflo.mcp import connect

    command, env, pid_file = _raw(tmp_path, tools)
    # The name error came after the server started, and nothing stopped it: its process and
    # the connection's thread stayed behind.
    with pytest.raises(UserError, match=match):
        connect(command, env=env, timeout=10, trust_hints=True)
    assert _gone(pid_file)


def test_serve_answers_misfit_arguments_and_tool_failures_with_a_reason(sqlite_url: str) -> None:
    from mcp import Client

    from wflo.mcp import ToolServer

    _config.configure(database=sqlite_url)

    @wflo.tool
    def repeat(text: str, times: int = 1) -> str:
        return text * times

    @wflo.tool
    def leaky(x: str) -> str:
        raise RuntimeError("password=hunter2 in the connection string")

    server = ToolServer([repeat, leaky], workflow="hostile_mcp")

    async def go() -> list[tuple[bool, str]]:
        out = []
        async with Client(server.build()) as client:
            for name, args in [("repeat", {"text": "ab", "times": 2}), ("repeat", {}),
                               ("repeat", {"text": "a", "run_id": "x", "tenant": "other"}),
                               ("repeat", {"text": "a", "times": "9"}), ("leaky", {"x": "1"})]:  # fmt: skip
                result = await client.call_tool(name, args)
                out.append((result.is_error, result.content[0].text))
        return out

    # Each misfit was a failed run and a JSON-RPC "Internal server error" with no reason; the
    # tool's exception text (which can hold secrets) went nowhere useful either.
    ok, missing, extra, mistyped, failed = asyncio.run(asyncio.wait_for(go(), 60))
    assert ok == (False, "abab")
    assert missing[0] and "'text' is a required property" in missing[1]
    assert extra[0] and "'run_id', 'tenant' were unexpected" in extra[1]
    assert mistyped[0] and "times: '9' is not of type 'integer'" in mistyped[1]
    assert failed[0] and "RuntimeError" in failed[1] and "hunter2" not in failed[1]
    rows = _config.get_store()._fetchall("SELECT status FROM runs WHERE workflow = ?", ["hostile_mcp"])
    assert sorted(r[0] for r in rows) == ["failed", "succeeded"]  # misfits start no run


def test_calls_waiting_for_approval_leave_the_server_answering(sqlite_url: str) -> None:
    # Each call waiting for an approval held a thread of asyncio's default pool (6 on 2 CPUs):
    # with a handful waiting, tools/list and every other call hung until someone decided.
    from mcp import Client

    from wflo.mcp import ToolServer

    _config.configure(database=sqlite_url)

    @wflo.tool(approval=wflo.Approval(approvers=["user:fin"]))
    def wire(amount: int) -> str:
        return f"sent {amount}"

    @wflo.tool
    def ping() -> str:
        return "pong"

    server = ToolServer([wire, ping], workflow="mcp_waits")
    waiting = 10

    async def go() -> tuple[float, str, list[bool]]:
        async with Client(server.build()) as client:
            calls = [asyncio.ensure_future(client.call_tool("wire", {"amount": i})) for i in range(waiting)]
            while len(await asyncio.to_thread(wflo.approvals.list)) < waiting:
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            listed = await asyncio.wait_for(client.list_tools(), 10)
            pong = await asyncio.wait_for(client.call_tool("ping", {}), 10)
            took = time.monotonic() - t0
            assert {t.name for t in listed.tools} == {"wire", "ping"}
            for request in await asyncio.to_thread(wflo.approvals.list):
                await asyncio.to_thread(wflo.approvals.reject, request.id, principal="user:fin", reason="no")
            results = await asyncio.wait_for(asyncio.gather(*calls), 30)
            return took, pong.content[0].text, [r.is_error for r in results]

    took, pong, errors = asyncio.run(asyncio.wait_for(go(), 90))
    assert pong == "pong" and took < 5, f"the server answered after {took:.1f} s with {waiting} calls waiting"
    assert errors == [True] * waiting  # each rejected, told to its caller
