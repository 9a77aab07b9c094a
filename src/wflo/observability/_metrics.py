"""Prometheus metrics computed from the store at each scrape.

Every value is read from the store (the runs projection, the journal, the spend book, the
approval inbox), not counted in the process: several workers sharing a store all report the
same totals, and a restarted worker loses nothing. Spend and tokens are the spend book's
(``wflo.cost.spend_rows``: what the ledger charged, the figures ``wflo costs`` reports), so
they never fall when old journals are pruned, as a counter must not.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .._errors import UserError
from ..approvals import Inbox
from ..cost import spend_rows
from ..store import Store

_REFUSALS = ("BudgetExceededError", "UnknownPriceError")


def _scope_kind(scope: Any) -> str:
    text = str(scope or "unknown")
    return text.split(":", 1)[0]


class StoreCollector(Collector):
    """wflo's metrics, queried from ``store`` (default: the configured store) on each scrape."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store

    def store(self) -> Store:
        if self._store is not None:
            return self._store
        from .. import _config

        return _config.get_store()

    def describe(self) -> Iterator[Any]:
        return iter(())  # metrics are only known at scrape time; don't query at registration

    def collect(self) -> Iterator[Any]:
        store = self.store()
        runs = GaugeMetricFamily("wflo_runs", "Runs by workflow and current status.", labels=["workflow", "status"])
        for workflow, status, count in store.read(
            "SELECT workflow, status, COUNT(*) FROM runs GROUP BY workflow, status"
        ):
            runs.add_metric([str(workflow), str(status)], float(count))
        yield runs

        spend: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        tokens: dict[tuple[str, str, str], int] = defaultdict(int)
        for workflow, model, _, usd, _, tokens_in, tokens_out in spend_rows(store, ["workflow", "model"]):
            if str(model).startswith("tool:"):  # a priced tool's charge: not an LLM's
                continue
            spend[(str(workflow), str(model))] += usd
            tokens[(str(workflow), str(model), "input")] += int(tokens_in)
            tokens[(str(workflow), str(model), "output")] += int(tokens_out)
        calls: dict[tuple[str, str, str], int] = defaultdict(int)
        stops: dict[tuple[str, str], int] = defaultdict(int)
        refusals: dict[tuple[str, str, str], int] = defaultdict(int)
        rows = store.read(
            "SELECT r.workflow, e.type, e.data FROM events e JOIN runs r ON r.id = e.chain "
            "WHERE e.type IN ('call.completed', 'call.failed', 'loop.stopped')"
        )
        for workflow, kind, raw in rows:
            data = json.loads(raw) if isinstance(raw, str | bytes) else raw
            if not isinstance(data, dict):
                continue
            wf = str(workflow)
            if kind == "loop.stopped":
                stops[(wf, str(data.get("detector", "unknown")))] += 1
                continue
            if data.get("kind") != "llm":
                continue
            model = str(data.get("name", ""))
            error = data.get("error") if kind == "call.failed" else None
            if isinstance(error, dict) and error.get("type") in _REFUSALS:
                reason = "unknown_price" if error.get("type") == "UnknownPriceError" else "budget_exceeded"
                refusals[(wf, _scope_kind((error.get("fields") or {}).get("scope")), reason)] += 1
                calls[(wf, model, "refused")] += 1
                continue
            calls[(wf, model, "error" if kind == "call.failed" else "ok")] += 1

        family = CounterMetricFamily("wflo_llm_cost_usd", "LLM spend in USD.", labels=["workflow", "model"])
        for (wf, model), usd in sorted(spend.items()):
            family.add_metric([wf, model], float(usd))
        yield family
        family = CounterMetricFamily(
            "wflo_llm_tokens", "LLM tokens reported by providers.", labels=["workflow", "model", "type"]
        )
        for (wf, model, token_type), n in sorted(tokens.items()):
            family.add_metric([wf, model, token_type], float(n))
        yield family
        family = CounterMetricFamily("wflo_llm_calls", "LLM calls by outcome.", labels=["workflow", "model", "outcome"])
        for key, n in sorted(calls.items()):
            family.add_metric(list(key), float(n))
        yield family
        family = CounterMetricFamily(
            "wflo_guard_stops", "Runs stopped by the loop guard.", labels=["workflow", "detector"]
        )
        for (wf, detector), n in sorted(stops.items()):
            family.add_metric([wf, detector], float(n))
        yield family
        family = CounterMetricFamily(
            "wflo_budget_refusals", "LLM calls refused by a budget.", labels=["workflow", "scope", "reason"]
        )
        for key, n in sorted(refusals.items()):
            family.add_metric(list(key), float(n))
        yield family

        waiting = GaugeMetricFamily(
            "wflo_approvals_waiting", "Approval requests waiting for a decision.", labels=["tool"]
        )
        for tool, count in Inbox(store).pending_by_tool().items():
            waiting.add_metric([tool], float(count))
        yield waiting


def registry(store: Store | None = None) -> CollectorRegistry:
    """A registry holding only wflo's collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(store))
    return reg


def serve(port: int, *, addr: str = "0.0.0.0", store: Store | None = None) -> Any:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the HTTP server."""
    try:
        result = start_http_server(port, addr=addr, registry=registry(store))
    except OSError as exc:
        raise UserError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None
    return result[0] if isinstance(result, tuple) else result
