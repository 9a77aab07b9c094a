"""``wflo budgets …`` and ``wflo costs``."""

from __future__ import annotations

from decimal import Decimal

import click
from rich.text import Text

from .. import config
from ..audit import parse_when
from ..auth import ServerClient, load_credentials
from ..cost import PERIODS, BudgetUsage, spend, usd_str
from ..cost import budgets as api
from ..cost import ledger as api_ledger
from ..errors import RunNotFoundError, UserError
from ._app import Table, cli, console, dump_json, handle_errors


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
        console.print(f"budget {done['scope']}: ${done['limit_usd']} per {per} (set on {creds.server})", markup=False)
        return
    lim = api.set(scope, usd=usd, period=period, max_reservation_usd=max_reservation)
    console.print(
        f"budget {lim.scope}: ${usd_str(lim.limit)} per {lim.period if lim.period != 'none' else 'total'}", markup=False
    )


@budgets.command("list")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def budgets_list(as_json: bool) -> None:
    """Every limited scope with its spend and open reservations this period."""
    config.get_store(create=False)  # only reads: a store that is not there is named, not created
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
            Text(f"{pct:.1f}%", style=style),
        )
    console.print(table)


@budgets.command("show")
@click.argument("scope")
@handle_errors
def budgets_show(scope: str) -> None:
    """One scope's limit and current period."""
    config.get_store(create=False)  # only reads: a store that is not there is named, not created
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
        run = config.get_store(create=False).find_run(scope[4:])
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
@click.option("--since", help="Only calls charged in the hour of this UTC date/time or later (e.g. 2026-11-01).")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def costs(group: str, since: str | None, as_json: bool) -> None:
    """Spend on LLM and priced tool calls, grouped by model, workflow, tenant or run."""
    store = config.get_store(create=False)
    # The spend book (wflo.cost._spend), which the server's /api/v1/costs reads too: completed
    # calls, failed calls that were charged, and calls a dead process left in flight (charged at
    # their reservation: estimates). Runs pruned by `wflo audit prune` still count: money was spent.
    cutoff = parse_when(since, option="--since") if since else None
    ordered = spend(store, group, since=cutoff)["rows"]
    if as_json:
        keys = ("calls", "cost_usd", "input_tokens", "output_tokens", "estimated_usd")
        dump_json([{group: r["key"], **{k: r[k] for k in keys}} for r in ordered])
        return
    table = Table(box=None, header_style="bold")
    for col in (group, "calls", "input tokens", "output tokens", "cost", "of which estimated"):
        table.add_column(col)
    for r in ordered:
        est = f"${r['estimated_usd']}" if Decimal(r["estimated_usd"]) else "-"
        table.add_row(
            r["key"], str(r["calls"]), str(r["input_tokens"]), str(r["output_tokens"]), f"${r['cost_usd']}", est
        )
    console.print(table if ordered else "no LLM calls recorded")
    if any(Decimal(r["estimated_usd"]) for r in ordered):
        console.print(
            "estimated: calls whose outcome was lost (crash, timeout after sending), charged at their reservation"
        )
