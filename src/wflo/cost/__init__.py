"""Cost: prices, usage, worst-case estimates and the budget ledger (promise P1)."""

from ._api import Budgets, budgets, ledger
from ._estimate import DEFAULT_OUTPUT_CAP, estimate_input_tokens, estimate_text_tokens
from ._guard import BudgetGuard
from ._ledger import PERIODS, Budget, BudgetUsage, CostRequest, Ledger, Limit, Reservation, period_start, usd_str
from ._llm import sse_events
from ._prices import Cost, Price, PriceBook, prices
from ._records import budget_alerted, budget_periods, budget_records
from ._spend import (
    RunSpend,
    SpendLine,
    book_and_journal,
    book_runs_since,
    journal_run_spend,
    run_cost,
    run_spend,
    run_spend_sql,
    spend,
    spend_rows,
    top_runs,
)
from ._usage import Usage, usage_from_response

__all__ = [
    "Budget",
    "BudgetGuard",
    "BudgetUsage",
    "Budgets",
    "Cost",
    "CostRequest",
    "DEFAULT_OUTPUT_CAP",
    "Ledger",
    "Limit",
    "PERIODS",
    "Price",
    "PriceBook",
    "Reservation",
    "RunSpend",
    "SpendLine",
    "Usage",
    "book_and_journal",
    "book_runs_since",
    "budget_alerted",
    "budget_periods",
    "budget_records",
    "budgets",
    "estimate_input_tokens",
    "estimate_text_tokens",
    "journal_run_spend",
    "ledger",
    "period_start",
    "prices",
    "run_cost",
    "run_spend",
    "run_spend_sql",
    "spend",
    "spend_rows",
    "sse_events",
    "top_runs",
    "usage_from_response",
    "usd_str",
]
