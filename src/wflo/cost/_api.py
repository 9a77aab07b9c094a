"""``wflo.budgets``: set and read budget limits on the configured store."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from .._config import get_store, settings
from ._ledger import DEFAULT_ALERTS, BudgetUsage, Ledger, Limit


def ledger() -> Ledger:
    """The ledger of the configured store."""
    return Ledger(get_store())


def _local_change_allowed() -> None:
    """Budget changes from a local process are refused where authentication is required."""
    if settings().require_auth:
        from ..auth import access

        access().require_local("budgets:write")


class Budgets:
    """Limits on scopes beyond a single run: ``wflo.budgets.set("tenant:acme", usd="20", period="day")``.

    Scopes: ``tenant:NAME``, ``workflow:NAME``, ``agent:NAME``, ``project:NAME``,
    ``user:NAME`` and ``global``. Periods: ``"none"`` (a total), ``"day"``, ``"month"``
    (UTC calendar). Every change is recorded on the system audit chain with who made it.
    """

    def set(
        self,
        scope: str,
        *,
        usd: Any,
        period: str = "none",
        max_reservation_usd: Any = None,
        alerts: Sequence[int] = DEFAULT_ALERTS,
    ) -> Limit:
        """Set (or replace) the limit of ``scope`` (refused, and recorded, under ``require_auth``)."""
        _local_change_allowed()
        return ledger().set_limit(
            scope, usd, period=period, max_reservation_usd=max_reservation_usd, alerts=alerts, by=settings().principal
        )

    def remove(self, scope: str) -> bool:
        """Remove a scope's limit; returns whether it had one."""
        _local_change_allowed()
        return ledger().remove_limit(scope, by=settings().principal)

    def get(self, scope: str) -> Limit | None:
        return ledger().get_limit(scope)

    def list(self) -> builtins.list[Limit]:
        return ledger().limits()

    def usage(self, scope: str | None = None) -> builtins.list[BudgetUsage]:
        """Spent and reserved in the current period of each limited scope (or one)."""
        return ledger().usage(scope)


budgets = Budgets()
