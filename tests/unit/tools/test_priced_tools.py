"""Priced tool calls are charged to the budget ledger like LLM calls: reserved before the call,
settled after, refused before they run when the budget cannot hold them."""

from __future__ import annotations

import json
from decimal import Decimal

from click.testing import CliRunner

import wflo
from wflo import _config
from wflo._errors import BudgetExceededError
from wflo.cli import cli
from wflo.cost._ledger import Ledger
from wflo.cost._spend import spend
from wflo.store import open_store
from wflo.tools._manifest import Capabilities

RUNS: list[str] = []


@wflo.tool(name="paid_search", capabilities=Capabilities(cost_usd=Decimal("0.40")))
def paid_search(q: str) -> str:
    RUNS.append(q)
    return f"found {q}"


@wflo.tool(name="paid_broken", capabilities=Capabilities(cost_usd=Decimal("0.40")))
def paid_broken() -> str:
    raise RuntimeError("the service failed")


@wflo.workflow(name="priced-run", budget=wflo.Budget(usd="1.00"))
def priced_run() -> list[str]:
    out = []
    for q in ("a", "b", "c"):
        try:
            out.append(paid_search(q))
        except BudgetExceededError as exc:
            out.append(f"refused: {exc}")
    return out


@wflo.workflow(name="priced-scope")
def priced_scope() -> list[str]:
    out = []
    for q in ("x", "y"):
        try:
            paid_broken()
        except RuntimeError:
            out.append("broken")
        out.append(paid_search(q))
    return out


def test_a_priced_tool_is_refused_past_the_run_budget(configured: str) -> None:
    RUNS.clear()
    out = priced_run.run()
    assert out[:2] == ["found a", "found b"]
    assert out[2].startswith("refused:") and "run:" in out[2]
    assert RUNS == ["a", "b"]  # the third call never ran
    store = open_store(configured)
    try:
        run_id = store.read("SELECT id FROM runs WHERE workflow = ?", ("priced-run",))[0][0]
        usage = Ledger(store).scope_usage(f"run:{run_id}")
        assert usage is not None and usage.spent == Decimal("0.80") and usage.reserved == 0
        totals = spend(store, "model")
        assert Decimal(totals["total"]["cost_usd"]) == Decimal("0.80")
        assert [r["key"] for r in totals["rows"]] == ["tool:paid_search"]
        assert Ledger(store).open_reservations() == 0
    finally:
        store.close()
    shown = CliRunner().invoke(cli, ["costs", "--json"], env={"WFLO_DATABASE_URL": configured})
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)
    assert [(r["model"], Decimal(r["cost_usd"]), r["calls"]) for r in rows] == [
        ("tool:paid_search", Decimal("0.80"), 2)
    ]


def test_a_scope_limit_holds_priced_tools_and_failures_are_free(configured: str) -> None:
    RUNS.clear()
    Ledger(_config.get_store()).set_limit("workflow:priced-scope", "0.50", by="test")
    # x: 0.40 of 0.50 spent (the broken call was released at $0); y does not fit.
    try:
        priced_scope.run()
    except BudgetExceededError as exc:
        assert "workflow:priced-scope" in str(exc)
    else:
        raise AssertionError("the second priced call should have been refused")
    assert RUNS == ["x"]
    usage = {u.scope: u for u in Ledger(_config.get_store()).usage()}
    assert usage["workflow:priced-scope"].spent == Decimal("0.40")
