"""Grants: a run uses only the tools granted to it; destructive tools ask; grants are on the record."""

from __future__ import annotations

from typing import Any

import pytest

import wflo
from wflo import _config
from wflo._errors import UserError
from wflo.engine import Worker
from wflo.tools import ToolRefused, grant, grants, revoke
from wflo.tools._manifest import Effects


@wflo.tool
def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()


@wflo.tool(effects=Effects(destructive=True))
def wipe(table: str) -> str:
    """Delete every row of a table."""
    return f"wiped {table}"


@wflo.workflow(name="grants-research")
def research(key: str) -> list[Any]:
    out: list[Any] = []
    for _ in range(3):
        try:
            out.append(lookup(key))
        except ToolRefused as refused:
            out.append(f"refused: {refused.reason}")
    return out


@wflo.workflow(name="cleanup")
def cleanup(table: str) -> str:
    return wipe(table)


def _serve() -> None:
    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=1.0)


def test_without_the_setting_nothing_changes(configured: str) -> None:
    assert research.run("a") == ["A", "A", "A"]


def test_require_tool_grants_refuses_an_ungranted_tool_and_journals_it(configured: str) -> None:
    _config.configure(database=configured, require_tool_grants=True)
    handle = research.start("a")
    _serve()
    out = handle.result(timeout=5)
    assert all(o.startswith("refused: tool 'lookup' is not granted to workflow:grants-research") for o in out), out
    failed = [e.data for e in handle.events() if e.type == "call.failed"]
    assert len(failed) == 3 and failed[0]["error"]["type"] == "ToolRefused" and failed[0]["grant"] is None


def test_a_grant_lets_it_through_with_max_calls_per_run(configured: str) -> None:
    _config.configure(database=configured, require_tool_grants=True)
    g = grant("lookup", "workflow:grants-research", max_calls=2)
    assert g.max_calls == 2 and g.granted_by.startswith("user:")
    out = research.run("a")
    assert out[:2] == ["A", "A"] and "allows 2 call(s)" in out[2]
    # on the record, with who granted it
    store = _config.get_store()
    kinds = [(e.type, e.data.get("tool")) for e in store.events("system")]
    assert ("tool.granted", "lookup") in kinds
    assert revoke("lookup", "workflow:grants-research") is True
    assert grants() == []
    assert research.run("a")[0].startswith("refused:")
    assert [e.type for e in store.events("system")][-1] == "tool.revoked"


def test_tenant_and_agent_grants(configured: str) -> None:
    _config.configure(database=configured, require_tool_grants=True)
    grant("lookup", "agent:scout")

    @wflo.workflow(name="scouting")
    def scouting() -> list[str]:
        with wflo.scope(agent="scout"):
            first = lookup("x")
        try:
            lookup("y")
        except ToolRefused:
            return [first, "refused outside the agent"]
        return [first, "allowed"]

    assert scouting.run() == ["X", "refused outside the agent"]


def test_destructive_tool_waits_for_approval_unless_the_grant_says_none(configured: str) -> None:
    handle = cleanup.start("orders")
    _serve()
    assert handle.status() == "waiting"
    grant("wipe", "workflow:cleanup", approval="none")
    assert cleanup.run("orders") == "wiped orders"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"tool": "x y", "to": "workflow:a"}, "not a tool name"),
        ({"tool": "x", "to": "team:a"}, "workflow:NAME"),
        ({"tool": "x", "to": "workflow:a", "approval": "maybe"}, "approval must be"),
        ({"tool": "x", "to": "workflow:a", "max_calls": 0}, "max_calls"),
        ({"tool": "x", "to": "workflow:a", "budget_usd": "-1"}, "budget"),
    ],
)
def test_bad_grants_are_clear_errors(configured: str, args: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match):
        grant(**args)


def test_priced_tool_budget_per_run(configured: str) -> None:
    from decimal import Decimal

    from wflo.tools._manifest import Capabilities

    @wflo.tool(name="paid", capabilities=Capabilities(cost_usd=Decimal("0.40")))
    def paid() -> str:
        return "ok"

    @wflo.workflow(name="spender")
    def spender() -> list[str]:
        out = []
        for _ in range(3):
            try:
                out.append(paid())
            except ToolRefused as refused:
                out.append(refused.reason)
        return out

    grant("paid", "workflow:spender", budget_usd="1.00")
    out = spender.run()
    assert out[:2] == ["ok", "ok"] and "$1" in out[2] and "per run" in out[2]
