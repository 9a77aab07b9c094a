"""MCP in, sandboxed: an external stdio MCP server started inside wflo's bubblewrap sandbox with
a manifest of its own (``connect(..., sandbox=Capabilities(...))``). It lists and calls its
tools through ``connect``; reaching a host file outside its paths, the network, or a secret it
did not declare is refused by the sandbox, and the refusal is on the call's journal record."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import wflo
from wflo._errors import UserError
from wflo.mcp import connect
from wflo.tools import Capabilities, ToolLimits, ToolRefused

pytest.importorskip("mcp")

# A plain standard-library MCP server (newline-delimited JSON-RPC over stdio), so that it runs
# on the sandbox's own /usr/bin/python3, which has no third-party packages.
SERVER = r"""
import json, os, socket, sys

TOOLS = {
    "read": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    "fetch": {"type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"]},
    "env": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
}


def call(name, args):
    if name == "read":
        with open(args["path"]) as fh:
            return fh.read()
    if name == "fetch":
        s = socket.create_connection((args["host"], 80), timeout=2)
        s.close()
        return "connected"
    if name == "env":
        return os.environ.get(args["name"], "<unset>")
    raise ValueError(name)


for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method, params = msg["method"], msg.get("params") or {}
    if method == "initialize":
        result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "probe", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": n, "description": n, "inputSchema": s} for n, s in TOOLS.items()]}
    elif method == "tools/call":
        try:
            text, error = call(params["name"], params.get("arguments") or {}), False
        except Exception as exc:
            text, error = f"{type(exc).__name__}: {exc}", True
        result = {"content": [{"type": "text", "text": text}], "isError": error}
    else:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                     "error": {"code": -32601, "message": method}}) + "\n")
        sys.stdout.flush()
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
"""


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are private to this user, and the sandbox runs
    # as a uid of its own when wflo runs as root.
    root = Path(tempfile.mkdtemp(prefix="wflo-mcpsbx-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path) -> list[str]:
    code = tmp_path / "srv"
    code.mkdir()
    (code / "server.py").write_text(SERVER)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("granted notes")
    (tmp_path / "secret.txt").write_text("host secret")
    return ["/usr/bin/python3", "-I", str(code / "server.py")]


def test_sandboxed_server_gets_exactly_its_capabilities(
    server: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TOKEN", "t0k3n")
    monkeypatch.setenv("OTHER_TOKEN", "leaked")
    caps = Capabilities(read=(str(tmp_path / "srv"), str(tmp_path / "data")), secrets=("PROBE_TOKEN",))
    with connect(server, sandbox=caps, read_only=["read", "fetch", "env"]) as mcp:
        tools = {t.name: t for t in mcp.tools}
        assert sorted(tools) == ["env", "fetch", "read"]
        assert tools["read"](path=str(tmp_path / "data" / "notes.txt")) == "granted notes"
        assert tools["env"](name="PROBE_TOKEN") == "t0k3n"
        assert tools["env"](name="OTHER_TOKEN") == "<unset>"  # not declared: not there
        assert tools["env"](name="HOME") == "/work"  # the sandbox's environment, not the host's
        with pytest.raises(ToolRefused, match="FileNotFoundError"):
            tools["read"](path=str(tmp_path / "secret.txt"))  # outside its paths: absent
        with pytest.raises(ToolRefused, match="FileNotFoundError"):
            tools["read"](path="/etc/passwd")
        with pytest.raises(ToolRefused, match="Error"):
            tools["fetch"](host="127.0.0.1")  # no network at all, not even the host's loopback
        # The server is still up after its refused reaches.
        assert tools["read"](path=str(tmp_path / "data" / "notes.txt")) == "granted notes"


@wflo.workflow(name="mcp-sandboxed")
def probe(command: list[str], readable: list[str], target: str) -> list[str]:
    out = []
    with connect(command, sandbox=Capabilities(read=tuple(readable)), read_only=["read"]) as mcp:
        read = {t.name: t for t in mcp.tools}["read"]
        for path in (readable[1] + "/notes.txt", target):
            try:
                out.append(read(path=path))
            except ToolRefused as exc:
                out.append(f"refused: {exc.reason}")
    return out


def test_a_refused_reach_is_on_the_record(server: list[str], tmp_path: Path, configured: str) -> None:
    readable = [str(tmp_path / "srv"), str(tmp_path / "data")]
    out = probe.run(server, readable, str(tmp_path / "secret.txt"))
    assert out[0] == "granted notes"
    assert out[1].startswith("refused:") and "host secret" not in out[1]
    store = wflo._config.get_store()
    rows = store.read("SELECT e.type, e.data FROM events e JOIN runs r ON r.id = e.chain "
                      "WHERE r.workflow = ? AND e.type = 'call.failed'", ("mcp-sandboxed",))  # fmt: skip
    assert len(rows) == 1 and "FileNotFoundError" in json.dumps(rows[0][1])
    data = rows[0][1] if isinstance(rows[0][1], dict) else json.loads(rows[0][1])
    assert data["sandbox"] == {"read": readable, "write": [], "network": [], "secrets": []}


def test_bad_sandbox_arguments_are_clear(server: list[str]) -> None:
    with pytest.raises(UserError, match="Capabilities"):
        connect(server, sandbox={"read": ["/tmp"]})
    with pytest.raises(UserError, match="absolute"):
        connect(server, sandbox=Capabilities(read=("relative/dir",)))
    with pytest.raises(UserError, match="cannot be granted"):
        connect(server, sandbox=Capabilities(write=("/usr/lib",)))
    assert os.environ.get("WFLO_MCP_JAIL") is None


def test_network_goes_only_through_the_egress_proxy(server: list[str], tmp_path: Path) -> None:
    caps = Capabilities(read=(str(tmp_path / "srv"),), network=("api.example.com:443",))
    with connect(server, sandbox=caps, read_only=["fetch", "env"]) as mcp:
        tools = {t.name: t for t in mcp.tools}
        assert tools["env"](name="HTTPS_PROXY") == "http://127.0.0.1:3128"  # the sandbox's forwarder
        with pytest.raises(ToolRefused, match="Error"):
            tools["fetch"](host="10.1.2.3")  # its own network namespace: no route past the proxy


# The same server with two hostile tools: one answers with a message of ``n`` bytes, one
# writes ``n`` bytes to its stderr.
FLOOD = SERVER.replace(
    '    "env": {',
    '    "flood": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},\n'
    '    "noise": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},\n'
    '    "env": {',
).replace(
    '    if name == "env":',
    '    if name == "flood":\n'
    '        return "x" * args["n"]\n'
    '    if name == "noise":\n'
    '        sys.stderr.write("e" * args["n"])\n'
    "        sys.stderr.flush()\n"
    '        return "ok"\n'
    '    if name == "env":',
)


@pytest.fixture
def flood(tmp_path: Path) -> list[str]:
    code = tmp_path / "flood"
    code.mkdir()
    (code / "server.py").write_text(FLOOD)
    return ["/usr/bin/python3", "-I", str(code / "server.py")]


def test_a_message_past_the_output_limit_stops_the_server(flood: list[str], tmp_path: Path) -> None:
    """A server's message is held whole by the client to parse it: one longer than the
    output limit stops the server instead of reaching the client."""
    caps = Capabilities(read=(str(tmp_path / "flood"),), limits=ToolLimits(output=64 << 10))
    with connect(flood, sandbox=caps, read_only=["flood", "noise"], timeout=20) as mcp:
        tools = {t.name: t for t in mcp.tools}
        assert tools["flood"](n=30_000) == "x" * 30_000  # within the limit: as it came
        with pytest.raises(ToolRefused, match="MCP server failed"):
            tools["flood"](n=4 << 20)
        with pytest.raises(ToolRefused, match="MCP server"):
            tools["flood"](n=10)  # stopped: nothing more from it


def test_a_noisy_server_keeps_working(flood: list[str], tmp_path: Path) -> None:
    """Megabytes on stderr past the output limit are read and dropped, so the server is not
    blocked on a full pipe (what reaches the host is checked in tests/unit/tools/test_mcp_jail.py)."""
    caps = Capabilities(read=(str(tmp_path / "flood"),), limits=ToolLimits(output=32 << 10))
    with connect(flood, sandbox=caps, read_only=["flood", "noise"], timeout=20) as mcp:
        tools = {t.name: t for t in mcp.tools}
        assert tools["noise"](n=2 << 20) == "ok"
        assert tools["flood"](n=10) == "x" * 10
