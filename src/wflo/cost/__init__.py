"""Cost: prices, usage, worst-case estimates and the budget ledger (promise P1)."""

from ._api import Budgets, budgets, ledger
from ._estimate import DEFAULT_OUTPUT_CAP, estimate_input_tokens, estimate_text_tokens
from ._guard import BudgetGuard
from ._ledger import Budget, BudgetUsage, CostRequest, Ledger, Limit, Reservation
from ._prices import Cost, Price, PriceBook, prices
from ._usage import Usage, usage_from_response

__all__ = [
    "DEFAULT_OUTPUT_CAP",
    "Budget",
    "BudgetGuard",
    "BudgetUsage",
    "Budgets",
    "Cost",
    "CostRequest",
    "Ledger",
    "Limit",
    "Price",
    "PriceBook",
    "Reservation",
    "Usage",
    "budgets",
    "estimate_input_tokens",
    "estimate_text_tokens",
    "ledger",
    "prices",
    "usage_from_response",
]
