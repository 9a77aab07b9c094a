"""``wflo budgets …`` and ``wflo costs``."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal

import click
from rich.table import Table

from .. import _config
from .._errors import RunNotFoundError, UserError
from ..audit import parse_when
from ..auth import ServerClient, load_credentials
from ..cost import PERIODS, BudgetUsage, usd_str
from ..cost import budgets as api
from ..cost import ledger as api_ledger
from ._app import cli, console, dump_json, err_console, handle_errors, plural


@cli.group()
def budgets() -> None:
    """Set and inspect budget limits (tenant, workflow, agent, project, global)."""


@budgets.command("set")
@click.argument("scope")
@click.option("--usd", required=True, help="Limit in USD, e.g. 20.00")
@click.option("--period", type=click.Choice(PERIODS), default="none", show_default=True)
@click.option("--max-reservation", "max_reservation", help="Cap on what one call may reserve (USD).")
@handle_errors
def budgets_set(scope: str, usd: str, period: str, max_reservation: str | None) -> None:
    """Set a limit: `wflo budgets set tenant:acme --usd 20 --period day`.

    Signed in to a server (`wflo login`), the change goes through it as you (`via: api`)."""
    creds = load_credentials()
    if creds is not None:
        body = {"scope": scope, "usd": usd, "period": period, "max_reservation_usd": max_reservation}
        done = ServerClient(creds).call("PUT", "/api/v1/budgets", body)
        per = done["period"] if done["period"] != "none" else "total"
        console.print(f"budget {done['scope']}: ${done['limit_usd']} per {per} (set on {creds.server})")
        return
    lim = api.set(scope, usd=usd, period=period, max_reservation_usd=max_reservation)
    console.print(f"budget {lim.scope}: ${usd_str(lim.limit)} per {lim.period if lim.period != 'none' else 'total'}")


@budgets.command("list")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def budgets_list(as_json: bool) -> None:
    """Every limited scope with its spend and open reservations this period."""
    rows = api.usage()
    if as_json:
        dump_json([{"scope": u.scope, "period": u.period, "period_start": u.period_start, "limit_usd": usd_str(u.limit),
                    "spent_usd": usd_str(u.spent), "reserved_usd": usd_str(u.reserved)} for u in rows])  # fmt: skip
        return
    if not rows:
        console.print("no budgets set (wflo budgets set SCOPE --usd N)")
        return
    table = Table(box=None, header_style="bold")
    for col in ("scope", "period", "limit", "spent", "reserved", "used"):
        table.add_column(col)
    for u in rows:
        pct = (u.spent / u.limit * 100) if u.limit else Decimal(0)
        style = "red" if pct >= 100 else "yellow" if pct >= 80 else "green"
        table.add_row(
            u.scope,
            u.period_start or "total",
            f"${usd_str(u.limit)}",
            f"${usd_str(u.spent)}",
            f"${usd_str(u.reserved)}",
            f"[{style}]{pct:.1f}%[/]",
        )
    console.print(table)


@budgets.command("show")
@click.argument("scope")
@handle_errors
def budgets_show(scope: str) -> None:
    """One scope's limit and current period."""
    rows = api.usage(scope)
    note = ""
    if not rows:
        # A run's own budget (``Budget(usd=…)`` on its workflow) lives in the ledger, not among
        # the limits set with `budgets set`: show it too (the report lists it).
        own = _run_budget(scope)
        if own is None:
            raise UserError(f"no budget is set for {scope!r} (wflo budgets list shows the scopes that have one)")
        rows, note = [own], " (the run's own budget, from its workflow)"
    u = rows[0]
    console.print(
        f"{u.scope}: limit ${usd_str(u.limit)} ({u.period}), spent ${usd_str(u.spent)}, reserved ${usd_str(u.reserved)}, remaining ${usd_str(u.remaining)}{note}"
    )


def _run_budget(scope: str) -> BudgetUsage | None:
    """``run:ID``: the limit stored with the run, and what the ledger holds for it."""
    if not scope.startswith("run:"):
        return None
    try:
        run = _config.get_store(create=False).find_run(scope[4:])
    except RunNotFoundError:
        return None
    usd = ((run.options or {}).get("budget") or {}).get("usd")
    used = api_ledger().scope_usage(scope)
    if usd is None and used is None:
        return None
    limit = Decimal(usd) if usd is not None else used.limit  # type: ignore[union-attr]
    spent, reserved = (used.spent, used.reserved) if used is not None else (Decimal(0), Decimal(0))
    return BudgetUsage(scope, "none", "", limit, spent, reserved)


@cli.command("costs")
@click.option(
    "--by", "group", type=click.Choice(["model", "workflow", "tenant", "run"]), default="model", show_default=True
)
@click.option("--since", help="Only calls at or after this UTC date/time (e.g. 2026-11-01).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def costs(group: str, since: str | None, as_json: bool) -> None:
    """Spend on LLM calls, grouped by model, workflow, tenant or run."""
    store = _config.get_store(create=False)
    # Completed calls, failed calls that were charged (an answer lost after sending), and calls
    # a dead process left in flight (charged at their reservation: estimates).
    sql = (
        "SELECT e.data, r.workflow, r.tenant, r.id FROM events e JOIN runs r ON r.id = e.chain "
        "WHERE e.type IN ('call.completed', 'call.failed', 'budget.unknown_outcome')"
    )
    params: list[str] = []
    if since:
        sql += " AND e.at >= ?"
        params.append(parse_when(since, option="--since"))
    totals: dict[str, dict[str, Decimal]] = defaultdict(
        lambda: {
            "calls": Decimal(0),
            "usd": Decimal(0),
            "input": Decimal(0),
            "output": Decimal(0),
            "estimated": Decimal(0),
        }
    )

    def add(data: dict[str, object], workflow: str, tenant: str | None, run_id: str) -> None:
        key = {"model": data.get("name"), "workflow": workflow, "tenant": tenant or "-", "run": run_id}[group]
        row = totals[str(key)]
        row["calls"] += 1
        cost = Decimal(str(data.get("cost_usd") or 0))
        row["usd"] += cost
        if data.get("cost_estimated"):
            row["estimated"] += cost
        usage = data.get("usage") or {}
        assert isinstance(usage, dict)
        row["input"] += usage.get("input_tokens", 0)
        row["output"] += usage.get("output_tokens", 0)

    for data_json, workflow, tenant, run_id in store.read(sql, params):
        data = json.loads(data_json)
        if data.get("kind") != "llm" or (data.get("error") and not data.get("cost_usd")):
            continue
        add(data, workflow, tenant, run_id)
    lost_sql = (
        "SELECT u.model, u.amount_usd, r.workflow, r.tenant, r.id FROM budget_unknown u JOIN runs r ON r.id = u.run_id "
        "WHERE u.recorded = 0 AND u.actual_usd IS NULL" + (" AND u.created_at >= ?" if since else "")
    )
    for model, amount, workflow, tenant, run_id in store.read(lost_sql, params):
        add({"name": model, "cost_usd": amount, "cost_estimated": True}, workflow, tenant, run_id)
    ordered = sorted(totals.items(), key=lambda kv: kv[1]["usd"], reverse=True)
    # Pruned runs keep their `runs` row but not their events, which is what is summed here.
    pruned = store.read("SELECT COUNT(*) FROM runs r WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.chain = r.id)")
    n_pruned = int(pruned[0][0]) if pruned else 0
    if n_pruned:
        err_console.print(
            f"note: {plural(n_pruned, 'run')} pruned by `wflo audit prune` {'is' if n_pruned == 1 else 'are'} not "
            "included (costs are summed from the journal; a run's spend under a budget stays in `wflo budgets list`)",
            soft_wrap=True,
        )
    if as_json:
        dump_json(
            [
                {
                    group: k,
                    "calls": int(v["calls"]),
                    "cost_usd": usd_str(v["usd"]),
                    "input_tokens": int(v["input"]),
                    "output_tokens": int(v["output"]),
                    "estimated_usd": usd_str(v["estimated"]),
                }
                for k, v in ordered
            ]
        )
        return
    table = Table(box=None, header_style="bold")
    for col in (group, "calls", "input tokens", "output tokens", "cost", "of which estimated"):
        table.add_column(col)
    for k, v in ordered:
        est = f"${usd_str(v['estimated'])}" if v["estimated"] else "-"
        table.add_row(k, str(v["calls"]), str(v["input"]), str(v["output"]), f"${usd_str(v['usd'])}", est)
    console.print(table if ordered else "no LLM calls recorded")
    if any(v["estimated"] for v in totals.values()):
        console.print(
            "estimated: calls whose outcome was lost (crash, timeout after sending), charged at their reservation"
        )
