"""The budget guard: the link of the call boundary that keeps promise P1 for LLM calls."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from .._config import settings
from .._errors import UnknownPriceError
from .._scope import current_scope
from ..engine import Call, Guard, Outcome
from ..store import NewEvent
from ._estimate import DEFAULT_OUTPUT_CAP
from ._ledger import Budget, Ledger, Limit, Reservation, usd_str
from ._outcomes import unknown_outcome
from ._prices import prices

log = logging.getLogger("wflo.budget")

_CAP_FIELDS = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
}


class BudgetGuard(Guard):
    """Before an LLM call: price it (an unknown model is refused when any limit applies:
    fail closed), estimate its worst case (input estimate + output cap), reserve that on
    every limited scope atomically, lowering ``max_tokens`` to fit or refusing the call.

    After it: compute the real cost from the provider's reported usage (stream included,
    and a stream abandoned half way), record model, usage, cost and price source in the
    call's event, and settle the reservation in the same transaction as that event.
    """

    def __init__(
        self, ledger: Ledger, *, run_id: str, workflow: str, tenant: str | None, budget: Budget | None
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.workflow = workflow
        self.tenant = tenant
        self.run_limit = (
            Limit(
                f"run:{run_id}",
                Decimal(budget.usd),
                "none",
                None if budget.max_reservation_usd is None else Decimal(budget.max_reservation_usd),
                budget.alerts,
            )
            if budget is not None
            else None
        )

    def __repr__(self) -> str:
        return f"<BudgetGuard run={self.run_id}>"

    def scopes(self) -> list[str]:
        names = [f"workflow:{self.workflow}", "global"]
        sc = current_scope()
        tenant = sc.get("tenant") or self.tenant
        if tenant:
            names.append(f"tenant:{tenant}")
        for key in ("agent", "project", "user"):
            if sc.get(key):
                names.append(f"{key}:{sc[key]}")
        return names

    def before(self, call: Call) -> None:
        if call.kind != "llm":
            return
        from . import _llm

        body: dict[str, Any] = call.meta["body"]
        api, provider, model = call.meta["api"], call.meta["provider"], call.name
        extra = [self.run_limit] if self.run_limit is not None else []
        try:
            price = prices.lookup(model, provider)
        except UnknownPriceError:
            if extra or self._any_limit():
                raise
            call.event["cost_usd"] = None
            call.event["price_source"] = "unknown"
            return
        call.meta["price"] = price
        cap_field, cap = _cap(api, body, provider)
        if cap_field not in body:
            # The bound needs a cap: a request without one gets the default written in.
            body[cap_field] = cap
            call.meta["body_changed"] = True
            call.event["cap_added"] = {"field": cap_field, "value": cap}
        request = _llm.cost_request(price, provider, body, cap)
        res = self.ledger.reserve(
            run_id=self.run_id,
            scopes=self.scopes(),
            extra_limits=extra,
            cost=request,
            ttl_seconds=settings().reservation_ttl,
            call_id=call.call_id,
            model=model,
        )
        if res is None:
            return
        call.meta["reservation"] = res
        call.event["reserved_usd"] = usd_str(res.amount)
        if res.clamped and res.output_cap is not None:
            body[cap_field] = res.output_cap
            call.meta["body_changed"] = True
            call.event["clamped"] = {"field": cap_field, "from": cap, "to": res.output_cap}

    def _any_limit(self) -> bool:
        names = self.scopes()
        rows = self.ledger.store.read(
            f"SELECT COUNT(*) FROM budget_limits WHERE scope IN ({', '.join('?' * len(names))})", names
        )
        return bool(rows and rows[0][0])

    def after(self, call: Call, outcome: Outcome) -> None:
        if call.kind != "llm":
            return
        from . import _llm

        res: Reservation | None = call.meta.get("reservation")
        value = outcome.value if isinstance(outcome.value, dict) else None
        usage = _llm.usage_of(call.meta["api"], value) if value else None
        price = call.meta.get("price")
        call.event["provider"] = call.meta["provider"]
        if usage is not None:
            call.event["usage"] = usage.as_dict()
        lost = unknown_outcome(outcome.error) if usage is None else None
        if lost is not None and res is not None:
            # Sent, then the answer was lost: the provider may have billed the worst case.
            call.event.update(cost_usd=usd_str(res.amount), cost_estimated=True, unknown_outcome=lost)
            call.ops.append(self.ledger.settle_unknown_op(res, lost))
            return
        if price is None:
            if res is not None:
                call.ops.append(self.ledger.settle_op(res, Decimal(0)))
            return
        if usage is not None:
            cost = prices.cost(price.model, usage, price.provider).total
        else:
            # No usage reported (an error status, a stream cut before its usage event):
            # the input bound plus the output seen, never a silent $0 for a billed call.
            cost = _llm.fallback_cost(price, call.meta["provider"], call.meta["body"], value)
            call.event["cost_estimated"] = True
        call.event["cost_usd"] = usd_str(cost)
        call.event["price_source"] = price.source
        call.event["price_version"] = price.source_version
        if res is not None:
            call.ops.append(self.ledger.settle_op(res, cost))

    def recorded(self, call: Call, outcome: Outcome) -> None:
        res: Reservation | None = call.meta.get("reservation")
        if res is None or not res.alerts_crossed:
            return
        events = [NewEvent("budget.threshold", {**alert, "call": call.call_id}) for alert in res.alerts_crossed]
        call.run.append(events)
        from ._alerts import notify_thresholds

        notify_thresholds(res.alerts_crossed, run_id=self.run_id)


def _cap(api: str, body: dict[str, Any], provider: str) -> tuple[str, int]:
    fields = _CAP_FIELDS.get(api, ("max_tokens",))
    for name in fields:
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return name, value
    # OpenAI's own chat API wants max_completion_tokens; compatible servers know max_tokens.
    name = fields[0] if provider == "openai" or api != "chat" else "max_tokens"
    return name, DEFAULT_OUTPUT_CAP
