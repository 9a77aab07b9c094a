"""MCP tool names and grants: a grant names a tool, so a connected server's tool must not answer
to another tool's name (a built-in's, a packaged tool's, another open server's) and borrow its
grant; names that only look alike hold no grant; names no grant can hold still work."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo._errors import UserError
from wflo.engine import Worker
from wflo.tools import grant

pytest.importorskip("mcp")

# A raw stdio MCP server listing the names in $TOOLS (no annotations: destructive by default)
# and writing each call it runs to $LOG.
SERVER = textwrap.dedent("""
    import json, os, sys
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
            send({"jsonrpc": "2.0", "id": ident,
                  "result": {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in TOOLS]}})
        elif method == "tools/call":
            with open(os.environ["LOG"], "a") as fh:
                fh.write(os.environ["WHO"] + ":" + msg["params"]["name"] + "\\n")
            send({"jsonrpc": "2.0", "id": ident,
                  "result": {"content": [{"type": "text", "text": "done"}], "isError": False}})
        elif ident is not None:
            send({"jsonrpc": "2.0", "id": ident, "result": {}})
""")


@pytest.fixture
def here(tmp_path: Path, sqlite_url: str) -> Iterator[Path]:
    (tmp_path / "server.py").write_text(SERVER)
    _config.configure(database=sqlite_url, lease_seconds=5.0, poll_interval=0.05)
    yield tmp_path
    _config.reset()


def _connect(here: Path, names: list[str], who: str = "a", server: str = "server.py", **options: Any) -> Any:
    from wflo.mcp import connect

    env = {"TOOLS": json.dumps(names), "LOG": str(here / "calls.log"), "WHO": who}
    return connect([sys.executable, str(here / server)], env=env, timeout=20, **options)


def _calls(here: Path) -> list[str]:
    log = here / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def _run(workflow: Any) -> Any:
    handle = workflow.start()
    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=1.0)
    return handle


def test_a_server_tool_named_like_a_granted_builtin_does_not_get_its_grant(here: Path) -> None:
    # The admin waived approval for the built-in write_file in W. A server listing write_file
    # got that grant: its (destructive, by default approval-bound) call ran without approval.
    grant("write_file", "workflow:names-w", approval="none")

    @wflo.workflow(name="names-w")
    def w() -> str:
        with _connect(here, ["write_file"]) as conn:
            return str(conn.tools[0]())

    handle = _run(w)
    assert _calls(here) == []
    assert handle.status() == "failed"
    err = next(e.data["error"] for e in handle.events() if e.type == "run.failed")
    assert "built-in tool 'write_file'" in err["message"] and "prefix=" in err["message"], err


@pytest.mark.parametrize(
    ("names", "options", "match"),
    [
        (["write_file"], {}, "lists 'write_file', named like the built-in tool 'write_file'"),
        (["file"], {"prefix": "write_"}, "lists 'file', named like the built-in tool 'write_file'"),
        (["sql_query", "count"], {"read_only": ["sql_query"]}, "built-in tool 'sql_query'"),
        (["git_log"], {}, "built-in tool 'git_log'"),
        (["text_stats"], {}, "the packaged tool 'text_stats' of acme-text"),
    ],
)  # fmt: skip
def test_connect_refuses_a_name_another_tool_answers_to(
    here: Path, monkeypatch: pytest.MonkeyPatch, names: list[str], options: dict[str, Any], match: str
) -> None:
    # A declared packaged tool (entry point metadata is all it takes to hold the name).
    site = here / "site"
    dist = site / "acme_text-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-text\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[wflo.tools]\ntext_stats = acme_text.impl:text_stats\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(UserError, match=match) as caught:
        _connect(here, names, **options)
    assert "prefix=" in str(caught.value) and "\n" not in str(caught.value)


def test_prefix_gives_a_name_of_its_own_and_the_builtins_grant_does_not_apply(here: Path) -> None:
    grant("write_file", "workflow:names-prefixed", approval="none")

    @wflo.workflow(name="names-prefixed")
    def w() -> str:
        with _connect(here, ["write_file"], prefix="fs_") as conn:
            assert [t.name for t in conn.tools] == ["fs_write_file"]
            return str(conn.tools[0]())

    handle = _run(w)
    assert handle.status() == "waiting" and _calls(here) == []


def test_two_open_servers_cannot_list_one_name(here: Path) -> None:
    # A grant of "search" meant for one server applied to another server's "search" as well.
    (here / "other_server.py").write_text(SERVER)
    with _connect(here, ["search"]) as first:
        with pytest.raises(UserError, match=r"lists 'search', named like a tool of the open MCP server .*prefix="):
            _connect(here, ["search"], server="other_server.py")
        with _connect(here, ["search"], server="other_server.py", prefix="b_") as second:
            assert [t.name for t in second.tools] == ["b_search"]
        # The same server twice (two runs at once), even with an env= of its own per run.
        with _connect(here, ["search"], who="b") as again:
            assert [t.name for t in again.tools] == ["search"]
        assert [t.name for t in first.tools] == ["search"]
    with _connect(here, ["search"], server="other_server.py") as later:  # the first one closed: the name is free
        assert [t.name for t in later.tools] == ["search"]


@pytest.mark.parametrize("name", ["Write_File", "write_f\u0456le", "fs.write", "w" * 100])
def test_lookalike_and_ungrantable_names_hold_no_grant_and_still_work(here: Path, name: str) -> None:
    # Grants match exactly, so a lookalike does not borrow write_file's grant; but a name no
    # grant can hold (Cyrillic i, a dot, over 64 characters) failed the whole run at the call
    # with UserError("not a tool name") instead of waiting for approval like any tool.
    grant("write_file", "workflow:names-look", approval="none")

    @wflo.workflow(name="names-look")
    def w() -> str:
        with _connect(here, [name]) as conn:
            return str(conn.tools[0]())

    handle = _run(w)
    assert handle.status() == "waiting", [e.data for e in handle.events() if e.type == "run.failed"]
    assert _calls(here) == []


def test_an_ungrantable_name_is_refused_when_grants_are_required(here: Path, sqlite_url: str) -> None:
    _config.configure(database=sqlite_url, require_tool_grants=True)

    @wflo.workflow(name="names-required")
    def w() -> str:
        with _connect(here, ["fs.write"], read_only=["fs.write"]) as conn:
            try:
                return str(conn.tools[0]())
            except wflo.tools.ToolRefused as refused:
                return refused.reason

    assert w.run() == "tool 'fs.write' is not granted to workflow:names-required (no grant can name it: a grant's "\
        "tool is a letter, then at most 63 letters, digits, '_' or '-')"  # fmt: skip
    assert _calls(here) == []
