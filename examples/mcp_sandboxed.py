"""An external MCP server started inside wflo's sandbox with a manifest of its own, and its
priced tool charged to the run's budget.

The server here is a few lines of standard-library Python (MCP over stdio is newline-delimited
JSON-RPC), run by the sandbox's own /usr/bin/python3. It may read one directory and nothing
else: no host files, no network, only the secret it declares. Its ``search`` tool costs $0.40
a call; the run's $1 budget allows two.

python examples/mcp_sandboxed.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

try:
    import mcp  # noqa: F401
except ImportError:
    print("examples/mcp_sandboxed.py needs the MCP SDK: pip install 'wflo[mcp]'")
    sys.exit(0)

import wflo
from wflo.mcp import connect
from wflo.tools import Capabilities, ToolLimits, ToolRefused

SERVER = r"""
import json, sys

TOOLS = {"read": {"path": {"type": "string"}}, "search": {"q": {"type": "string"}}}

def call(name, args):
    if name == "read":
        with open(args["path"]) as fh:
            return fh.read().strip()
    return f"3 results for {args['q']!r}"

for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    params = msg.get("params") or {}
    if msg["method"] == "initialize":
        result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "docs", "version": "1"}}
    elif msg["method"] == "tools/list":
        result = {"tools": [{"name": n, "description": n, "inputSchema": {"type": "object", "properties": p}}
                            for n, p in TOOLS.items()]}
    else:
        try:
            result = {"content": [{"type": "text", "text": call(params["name"], params["arguments"])}]}
        except Exception as exc:
            result = {"content": [{"type": "text", "text": f"{type(exc).__name__}: {exc}"}], "isError": True}
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
"""

work = Path(tempfile.mkdtemp(prefix="wflo-mcp-sandboxed-"))
work.chmod(0o755)  # the sandbox runs as a uid of its own when wflo runs as root
(work / "server.py").write_text(SERVER)
(work / "docs").mkdir()
(work / "docs" / "readme.txt").write_text("granted: the docs directory")
(work / "private.txt").write_text("not granted")
MANIFEST = Capabilities(
    read=(str(work / "server.py"), str(work / "docs")),
    limits=ToolLimits(output="256KiB"),  # a longer message stops the server; stderr is cut there
)


@wflo.workflow(name="mcp-sandboxed-example", budget=wflo.Budget(usd="1.00"))
def research() -> list[str]:
    out = []
    command = ["/usr/bin/python3", "-I", str(work / "server.py")]
    with connect(command, sandbox=MANIFEST, read_only=["read", "search"], prices={"search": "0.40"}) as mcp:
        tools = {t.name: t for t in mcp.tools}
        out.append(tools["read"](path=str(work / "docs" / "readme.txt")))
        try:
            tools["read"](path=str(work / "private.txt"))
        except ToolRefused as exc:
            out.append(f"refused: {exc.reason}")
        for q in ("budgets", "sandboxes", "grants"):
            try:
                out.append(tools["search"](q=q))
            except wflo.BudgetExceededError as exc:
                out.append(f"refused: {exc}")
    return out


def main() -> None:
    wflo.configure(database=f"sqlite:///{work}/wflo.db")
    try:
        out = research.run()
        for line in out:
            print(line)
        assert out[0] == "granted: the docs directory"
        assert out[1].startswith("refused:") and "FileNotFoundError" in out[1]
        assert out[2:4] == ["3 results for 'budgets'", "3 results for 'sandboxes'"]
        assert out[4].startswith("refused:")
        spent = wflo.cost.spend(wflo._config.get_store(), "model")
        print("spent:", {r["key"]: r["cost_usd"] for r in spent["rows"]})
        assert spent["total"]["cost_usd"] in ("0.8", "0.80")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
