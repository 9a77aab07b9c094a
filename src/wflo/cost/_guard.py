"""The budget guard: the link of the call boundary that keeps promise P1 for LLM calls."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

from .._config import settings
from .._errors import UnboundedRequestError, UnknownPriceError, WfloInterrupt
from .._scope import current_scope
from ..engine import Call, Guard, Outcome
from ..store import NewEvent
from . import _spend, _tables
from ._formats import LLMRequest
from ._ledger import Booking, BookingFn, Budget, CostRequest, Ledger, Limit, Reservation, usd_str
from ._outcomes import unknown_outcome
from ._prices import PriceBook
from ._prices import prices as default_prices

log = logging.getLogger("wflo.budget")


class BudgetGuard(Guard):
    """Before an LLM call: price it (an unknown model is refused when any limit applies:
    fail closed), estimate its worst case (input estimate + output cap), reserve that on
    every limited scope atomically, lowering ``max_tokens`` to fit or refusing the call.

    After it: compute the real cost from the provider's reported usage (stream included,
    and a stream abandoned half way), record model, usage, cost and price source in the
    call's event, and settle the reservation in the same transaction as that event.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        run_id: str,
        workflow: str,
        tenant: str | None,
        budget: Budget | None,
        prices: PriceBook | None = None,
    ) -> None:
        self.ledger = ledger
        self.prices = prices if prices is not None else default_prices
        """The price book calls are charged by: the run's runtime's (``rt.prices``)."""
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
        self._responses: dict[str, int] = {}
        """Responses API ids this run received → input + output tokens (``previous_response_id``)."""

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

    def local(self, call: Call) -> bool:
        # Only LLM calls and priced tool calls reserve (in the store); replaying is in memory.
        return call.kind != "llm" and not (call.kind == "tool" and isinstance(call.meta.get("cost_usd"), Decimal))

    def before(self, call: Call) -> None:
        """Price the request, bound it (refusing shapes it cannot bound), reserve the worst
        case on every limited scope, writing a default output cap in or lowering it to fit.
        A priced tool call (``cost_usd`` in its manifest) reserves its price the same way."""
        if call.kind == "tool":
            self._reserve_tool(call)
            return
        if call.kind != "llm":
            return
        from . import _llm

        req: LLMRequest = call.meta["request"]
        extra = [self.run_limit] if self.run_limit is not None else []
        try:
            price = self.prices.lookup(req.model, req.provider)
            req.fmt.check(req)
            self._server_state(req)
        except (UnknownPriceError, UnboundedRequestError) as exc:
            if extra or self._any_limit():
                raise
            call.event["cost_usd"] = None
            call.event["price_source"] = "unknown" if isinstance(exc, UnknownPriceError) else "unbounded"
            return
        call.meta["price"] = price
        cap = req.output_cap
        if cap is None and req.fmt.default_cap is not None:
            # The bound needs a cap: a request without one gets the default written in.
            field = req.fmt.cap_field(req.body, req.provider)
            req.set_output_cap(req.fmt.default_cap)
            cap = req.fmt.default_cap
            call.event["cap_added"] = {"field": field, "value": cap}
        try:
            request = _llm.cost_request(price, req, book=self.prices)
        except UnboundedRequestError:
            if extra or self._any_limit():
                raise
            call.event["price_source"] = "unbounded"
            return
        res = self.ledger.reserve(
            run_id=self.run_id,
            scopes=self.scopes(),
            extra_limits=extra,
            cost=request,
            ttl_seconds=settings().reservation_ttl,
            call_id=call.call_id,
            model=req.model,
        )
        if res is None:
            return
        call.meta["reservation"] = res
        call.event["reserved_usd"] = usd_str(res.amount)
        call.event["bound"] = req.notes.get("bound")
        if res.clamped and res.output_cap is not None and cap is not None:
            field = req.fmt.cap_field(req.body, req.provider)
            req.set_output_cap(res.output_cap)
            call.event["clamped"] = {"field": field, "from": cap, "to": res.output_cap}

    def _reserve_tool(self, call: Call) -> None:
        price = call.meta.get("cost_usd")
        if not isinstance(price, Decimal) or call.meta.get("grant_refused") is not None:
            return
        res = self.ledger.reserve(
            run_id=self.run_id,
            scopes=self.scopes(),
            extra_limits=[self.run_limit] if self.run_limit is not None else [],
            cost=CostRequest(input_cost=price, output_price_per_token=Decimal(0), output_cap=None),
            ttl_seconds=settings().reservation_ttl,
            call_id=call.call_id,
            model=f"tool:{call.name}",
        )  # a price past a limit raises BudgetExceededError here: the tool does not run
        call.meta["tool_price"] = price
        if res is not None:
            call.meta["reservation"] = res
            call.event["reserved_usd"] = usd_str(res.amount)

    def _server_state(self, req: LLMRequest) -> None:
        """``previous_response_id``: the provider bills the earlier conversation as input; its
        size is known only from this run's record of that response."""
        prev = req.body.get("previous_response_id") if req.api == "responses" else None
        if prev is None:
            return
        tokens = self._responses.get(str(prev))
        if tokens is None:
            raise req.fmt.unbounded(
                req,
                f"previous_response_id {prev!r} is not a response this run received, so the server-side "
                "conversation it continues (billed as input) has no known size; send the conversation "
                "as input instead",
            )
        req.state_tokens = tokens
        req.notes["state_tokens"] = tokens

    def _any_limit(self) -> bool:
        names = self.scopes()
        return _tables.count_limits(self.ledger.store, names) > 0

    def after(self, call: Call, outcome: Outcome) -> None:
        """Settle on the usage the provider reported; an answer without usage (a stream cut
        short: an unknown outcome) at its reservation; an error status at $0. A priced tool
        call is charged its price when it succeeds; a failed or refused one is released at $0.

        Every charged call also goes in the spend book (``wflo.cost._tables``), in the
        transaction of its event and of its settlement."""
        if outcome.error is not None and _interrupted(outcome.error):
            self._interrupted(call, outcome.error)
            return
        book = _booking(call, outcome)
        if call.kind == "tool":
            price = call.meta.get("tool_price")
            if isinstance(price, Decimal):
                charged = price if outcome.error is None else Decimal(0)
                call.event["cost_usd"] = usd_str(charged)
                tres: Reservation | None = call.meta.get("reservation")
                if tres is not None:
                    call.ops.append(self.ledger.settle_op(tres, charged, book))
                else:
                    call.ops.append(self.ledger.book_op(self.run_id, charged, book))
            return
        if call.kind != "llm":
            return
        from . import _llm

        req: LLMRequest = call.meta["request"]
        res: Reservation | None = call.meta.get("reservation")
        value = outcome.value if isinstance(outcome.value, dict) else None
        usage = _llm.usage_of(req.fmt, value) if value else None
        price = call.meta.get("price")
        call.event["provider"] = req.provider
        call.event["api"] = req.api
        if usage is not None:
            call.event["usage"] = usage.as_dict()
        rid = _llm.response_id(req.fmt, value) if value else None
        if rid is not None:
            call.event["response_id"] = rid
            if usage is not None:
                self._responses[rid] = usage.input_tokens + usage.output_tokens
        lost = unknown_outcome(outcome.error) if usage is None else None
        if lost is not None and res is not None:
            # Sent, then the answer was lost: the provider may have billed the worst case.
            call.event.update(cost_usd=usd_str(res.amount), cost_estimated=True, unknown_outcome=lost)
            call.ops.append(self.ledger.settle_unknown_op(res, lost, book))
            return
        if price is None:
            if res is not None:
                call.ops.append(self.ledger.settle_op(res, Decimal(0), book))
            else:
                call.ops.append(self.ledger.book_op(self.run_id, Decimal(0), book))
            return
        cost = _priced(self.prices, price, usage)
        unknown: str | None = None
        if cost is None and usage is not None:
            call.event["usage_invalid"] = True  # more cached than input tokens, say
        if cost is not None:
            pass
        elif value is not None and int(value.get("status", 200)) < 400 and res is not None:
            # An answer without (valid) usage: a stream cut before its usage event, a server
            # that does not report it. What the provider billed is unknown, so the call is
            # charged at its reservation, the most it can have cost; never released as free.
            cost = res.amount
            unknown = "no_usage"
            call.event.update(cost_estimated="reservation", unknown_outcome=unknown)
        else:
            # No reservation to charge (no limit applies) or an error status (not billed):
            # the input bound plus the output seen, never past the cap.
            cost = _llm.fallback_cost(price, req, value, book=self.prices)
            call.event["cost_estimated"] = True
        if res is not None and cost > res.amount:
            # A provider's report above the bound would be a bug in a format module; the
            # ledger still records what was billed.
            log.warning("wflo: call %s cost %s above its reservation %s", call.call_id, cost, res.amount)
        call.event["cost_usd"] = usd_str(cost)
        call.event["price_source"] = price.source
        call.event["price_version"] = price.source_version
        if res is not None:
            # An estimate is kept as one (budget_unknown) so real usage can replace it later.
            call.ops.append(
                self.ledger.settle_unknown_op(res, unknown, book) if unknown else self.ledger.settle_op(res, cost, book)
            )
        else:
            call.ops.append(self.ledger.book_op(self.run_id, cost, book))

    def _interrupted(self, call: Call, error: BaseException) -> None:
        """A call cut off by a cancellation (``asyncio.wait_for``'s timeout, ``task.cancel()``)
        or a ``KeyboardInterrupt`` is not a result: no event records it, so a replay makes it
        again. Its request may have reached the provider, so its reservation is charged now
        (an unknown outcome, as for a call lost with its process), recorded by a
        ``budget.unknown_outcome`` event, rather than held until it expires."""
        res: Reservation | None = call.meta.get("reservation")
        if res is None:
            return
        reason = "cancelled" if isinstance(error, asyncio.CancelledError) else "interrupted"
        event = NewEvent("budget.unknown_outcome", {
            "call": call.call_id, "name": call.name, "kind": call.kind, "cost_usd": usd_str(res.amount),
            "cost_estimated": True, "unknown_outcome": reason, "reservation": res.id,
        })  # fmt: skip
        call.run.append([event], ops=[self.ledger.settle_unknown_op(res, reason, None)])

    def replayed(self, call: Call, entry: Any) -> None:
        rid = entry.data.get("response_id") if call.kind == "llm" else None
        usage = entry.data.get("usage")
        if isinstance(rid, str) and isinstance(usage, dict):
            self._responses[rid] = int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)

    def recorded(self, call: Call, outcome: Outcome) -> None:
        res: Reservation | None = call.meta.get("reservation")
        if res is None or not res.alerts_crossed:
            return
        events = [NewEvent("budget.threshold", {**alert, "call": call.call_id}) for alert in res.alerts_crossed]
        call.run.append(events)
        from ._alerts import notify_thresholds

        notify_thresholds(res.alerts_crossed, run_id=self.run_id)


def _booking(call: Call, outcome: Outcome) -> BookingFn:
    """How the call goes in the spend book, decided when its event is written (a later guard
    may still turn its outcome into an error): the rules ``wflo.cost._spend`` reads the
    journal by. A failed call counts only when it was charged; a tool only when it cost
    something."""

    def make() -> Booking | None:
        cost = call.event.get("cost_usd")
        if call.kind not in ("llm", "tool") or (outcome.error is not None and not cost):
            return None
        usd = _spend.usd_of(cost)
        if call.kind == "tool" and not usd:
            return None
        usage = call.event.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return Booking(
            model=str(call.name or "?") if call.kind == "llm" else f"tool:{call.name}",
            estimated=_spend.truthy(call.event.get("cost_estimated")),
            input_tokens=_spend.int_of(usage.get("input_tokens")),
            output_tokens=_spend.int_of(usage.get("output_tokens")),
            usd=usd,
        )

    return make


def _interrupted(error: BaseException) -> bool:
    """A call's end that is no result of it (see ``wflo.engine``: not recorded), other than
    wflo's own signals (a lost lease, a suspension, a stop), after which the run's next
    execution settles what was in flight."""
    return not isinstance(error, Exception | WfloInterrupt)


def _priced(book: PriceBook, price: Any, usage: Any) -> Decimal | None:
    if usage is None:
        return None
    try:
        return book.cost(price.model, usage, price.provider).total
    except ValueError:  # genai-prices refuses inconsistent usage
        return None
