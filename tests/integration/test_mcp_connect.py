"""MCP in: an external stdio MCP server (written here, with the official SDK) wrapped by
``wflo.mcp.connect``: calls journaled, replayed after SIGKILL, stopped by the loop guard,
destructive tools waiting for approval."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wflo import _config
from wflo._errors import UserError

pytest.importorskip("mcp")

SERVER = '''
import os
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

app = MCPServer("notes")
NOTES = os.environ["NOTES_FILE"]


@app.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False))
def add_note(text: str) -> str:
    """Append a note."""
    with open(NOTES, "a") as fh:
        fh.write(text + "\\n")
    return f"noted {text}"


@app.tool(annotations=ToolAnnotations(read_only_hint=True))
def count() -> int:
    """How many notes there are."""
    try:
        with open(NOTES) as fh:
            return len(fh.read().splitlines())
    except FileNotFoundError:
        return 0


@app.tool()
def wipe() -> str:
    """Delete every note."""
    open(NOTES, "w").close()
    return "wiped"


app.run()
'''

APP = """
import os, sys, time
import wflo
from wflo.mcp import connect

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = [sys.executable, os.path.join(HERE, "notes_server.py")]


def _tools(**options):
    conn = connect(SERVER, env={"NOTES_FILE": os.environ["NOTES_FILE"]}, **options)
    return conn, {t.name: t for t in conn.tools}


@wflo.workflow(name="mcp_notes")
def notes() -> list:
    conn, tools = _tools(trust_hints=True)
    with conn:
        first = tools["add_note"](text="a")
        if os.environ.get("HANG_AFTER_FIRST"):
            open(os.environ["HANG_AFTER_FIRST"], "w").close()
            time.sleep(120)
        second = tools["add_note"](text="b")
        return [first, second]


@wflo.workflow(name="mcp_poll")
def poll() -> int:
    conn, tools = _tools(read_only=["count"])
    with conn:
        n = 0
        for _ in range(20):
            n = tools["count"]()
        return n


@wflo.workflow(name="mcp_paid")
def paid() -> list:
    conn, tools = _tools(read_only=["count"], prices={"count": "0.40"})
    with conn:
        out = []
        for _ in range(3):
            try:
                out.append(tools["count"]())
            except wflo.tools.ToolRefused as refused:
                out.append(refused.reason)
        return out


@wflo.workflow(name="mcp_wipe")
def wipe() -> str:
    conn, tools = _tools(read_only=["count"])
    with conn:
        return tools["wipe"]()
"""


@pytest.fixture
def app(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "notes_server.py").write_text(SERVER)
    (tmp_path / "mcp_notes_app.py").write_text(textwrap.dedent(APP))
    monkeypatch.setenv("NOTES_FILE", str(tmp_path / "notes.txt"))
    monkeypatch.syspath_prepend(str(tmp_path))
    _config.configure(database=sqlite_url, lease_seconds=1.0, poll_interval=0.05)
    yield tmp_path
    sys.modules.pop("mcp_notes_app", None)


def _worker() -> None:
    from wflo.engine import Worker

    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=3.0)


def test_calls_are_journaled_and_replayed_after_sigkill(app: Path, sqlite_url: str) -> None:
    ready = app / "ready"
    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(app)]), "WFLO_DATABASE_URL": sqlite_url,
           "WFLO_LEASE_SECONDS": "1", "HANG_AFTER_FIRST": str(ready)}  # fmt: skip
    code = "import mcp_notes_app as m; m.notes.options(id='notes-1').run()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach its first call"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert (app / "notes.txt").read_text() == "a\n"

    import mcp_notes_app as m

    from wflo.engine import RunHandle

    time.sleep(1.2)  # the dead worker's lease runs out
    _worker()
    handle = RunHandle("notes-1")
    assert handle.result(timeout=10) == ["noted a", "noted b"]
    # the first call was replayed from the journal, not made again
    assert (app / "notes.txt").read_text() == "a\nb\n"
    calls = [e.data for e in handle.events() if e.type == "call.completed" and e.data.get("kind") == "tool"]
    assert [c["name"] for c in calls] == ["add_note", "add_note"] and calls[0]["output"] == "noted a"
    assert m.notes.name == "mcp_notes"


def test_the_loop_guard_stops_a_polling_agent(app: Path) -> None:
    import mcp_notes_app as m

    from wflo._errors import LoopDetectedError

    with pytest.raises(LoopDetectedError):
        m.poll.run()


def test_an_unhinted_tool_is_destructive_and_waits_for_approval(app: Path) -> None:
    import mcp_notes_app as m

    (app / "notes.txt").write_text("keep\n")
    handle = m.wipe.start()
    _worker()
    assert handle.status() == "waiting"
    assert (app / "notes.txt").read_text() == "keep\n"


def test_a_priced_tool_is_capped_by_its_grant_budget(app: Path) -> None:
    import mcp_notes_app as m

    from wflo.tools import grant

    grant("count", "workflow:mcp_paid", budget_usd="1.00")
    out = m.paid.run()
    assert out[:2] == [0, 0] and "$1" in out[2] and "per run" in out[2]


def test_bad_commands_are_clear_errors(tmp_path: Path) -> None:
    from wflo.mcp import connect

    with pytest.raises(UserError, match="as a list"):
        connect("python server.py")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="decimal string"):
        connect([sys.executable, "-c", "pass"], prices={"x": 0.1})
    with pytest.raises(UserError, match="did not start"):
        connect([sys.executable, str(tmp_path / "missing.py")], timeout=20)


def test_read_only_names_tools_not_substrings(app: Path) -> None:
    # read_only="count_and_wipe" was a string searched by substring: the unhinted "wipe" (a
    # destructive tool, which waits for approval) became read-only. One string is one name.
    from wflo.mcp import connect

    with connect(
        [sys.executable, str(app / "notes_server.py")],
        env={"NOTES_FILE": str(app / "notes.txt")},
        read_only="count_and_wipe",
    ) as conn:
        effects = {t.name: t.effects for t in conn.tools}
    assert effects["wipe"].destructive and not effects["wipe"].read_only, effects["wipe"]
    with connect(
        [sys.executable, str(app / "notes_server.py")], env={"NOTES_FILE": str(app / "notes.txt")}, read_only="wipe"
    ) as conn:
        assert next(t for t in conn.tools if t.name == "wipe").effects.read_only
