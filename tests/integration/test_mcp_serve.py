"""MCP out: the official SDK's client lists and calls the tools `wflo mcp serve` exposes, over
stdio and streamable HTTP; only granted tools are listed, and each call is a journaled run."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wflo import _config
from wflo.tools import grant

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "tools"))
from toolpkg import make_package

pytest.importorskip("mcp")

CODE = "def shout(text):\n    return text.upper() + '!'\n\ndef whisper(text):\n    return text.lower()\n"


def _tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"{name} a text",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            "effects": {"read_only": True, "idempotent": True}}  # fmt: skip


@pytest.fixture
def served(sqlite_url: str) -> Iterator[dict[str, str]]:
    site = Path(tempfile.mkdtemp(prefix="wflo-mcp-site-"))
    site.chmod(0o755)
    make_package(site, "loud_tools", CODE, [_tool("shout"), _tool("whisper")])
    _config.configure(database=sqlite_url)
    grant("shout", "workflow:mcpflow")
    src = str(Path(__file__).parents[2] / "src")
    env = {"PYTHONPATH": os.pathsep.join([src, str(site)]), "WFLO_DATABASE_URL": sqlite_url,
           "WFLO_PRINCIPAL": "user:mcp-test"}  # fmt: skip
    try:
        yield env
    finally:
        shutil.rmtree(site, ignore_errors=True)


async def _exercise(read: Any, write: Any) -> dict[str, Any]:
    from mcp.client.session import ClientSession

    async with ClientSession(read, write) as session:
        await session.initialize()
        listed = await session.list_tools()
        ok = await session.call_tool("shout", {"text": "hello"})
        hidden = await session.call_tool("whisper", {"text": "HELLO"})
        bad = await session.call_tool("shout", {"text": 3})
    return {
        "tools": [(t.name, t.annotations.read_only_hint if t.annotations else None) for t in listed.tools],
        "ok": (ok.is_error, ok.content[0].text),
        "hidden": (hidden.is_error, hidden.content[0].text),
        "bad": (bad.is_error, bad.content[0].text),
    }


def _check(out: dict[str, Any]) -> None:
    assert out["tools"] == [("shout", True)]  # whisper is installed but not granted
    assert out["ok"] == (False, "HELLO!")
    assert out["hidden"][0] is True and "granted" in out["hidden"][1]
    assert out["bad"][0] is True and "text" in out["bad"][1]
    rows = _config.get_store()._fetchall("SELECT id, status FROM runs WHERE workflow = ?", ["mcpflow"])
    assert sorted(r[1] for r in rows) == ["succeeded"]  # a mistyped argument is refused before a run starts
    events = [e for r in rows for e in _config.get_store().events(r[0])]
    calls = [e.data for e in events if e.type in ("call.completed", "call.failed") and e.data.get("kind") == "tool"]
    assert {c["name"] for c in calls} == {"shout"} and any(c.get("output") == "HELLO!" for c in calls)


def test_stdio_client_lists_and_calls_granted_tools(served: dict[str, str]) -> None:
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=["-m", "wflo.cli", "mcp", "serve", "--workflow", "mcpflow"],
                                   env=served)  # fmt: skip

    async def go() -> dict[str, Any]:
        async with stdio_client(params) as (read, write):
            return await _exercise(read, write)

    _check(asyncio.run(asyncio.wait_for(go(), 60)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_streamable_http_client_lists_and_calls_granted_tools(served: dict[str, str], tmp_path: Path) -> None:
    from mcp.client.streamable_http import streamable_http_client

    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wflo.cli", "mcp", "serve", "--workflow", "mcpflow", "--transport", "http",
         "--port", str(port)],
        env={**os.environ, **served}, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.1)

        async def go() -> dict[str, Any]:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams:
                return await _exercise(streams[0], streams[1])

        _check(asyncio.run(asyncio.wait_for(go(), 60)))
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_mcp_serve_without_a_workflow_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "mcp", "serve"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "--workflow" in done.stderr and "Traceback" not in done.stderr
