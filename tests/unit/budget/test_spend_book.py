"""The spend book (issue 20): what the costs API reports is written with each charge, in the
transaction that makes it, by the store's clock; it agrees with the journal and the ledger."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest

import wflo
from wflo import _config
from wflo.cost import _tables
from wflo.cost._ledger import Booking, CostRequest, Ledger, Reservation
from wflo.cost._spend import GROUPS, journal_spend, spend, top_runs
from wflo.store import MIGRATIONS, Head, NewEvent, Store, open_store
from wflo.testing import LLMServer, Reply
from wflo.tools._manifest import Capabilities

REQ = CostRequest(input_cost=Decimal("0.001"), output_price_per_token=Decimal("0.00001"), output_cap=100)


@wflo.tool(name="sb_paid", capabilities=Capabilities(cost_usd=Decimal("0.25")))
def sb_paid(q: str) -> str:
    return q


def _ask(llm: LLMServer, model: str) -> str:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return r.choices[0].message.content or ""


def _same(store: Store, **window: Any) -> None:
    """The book and the journal report the same spend, for every grouping."""
    for group in GROUPS:
        book, journal = spend(store, group, **window), journal_spend(store, group, **window)
        assert book["rows"] == journal["rows"], group
        assert book["total"] == journal["total"]


def test_the_book_equals_the_journal_for_a_mix_of_calls(configured: str) -> None:
    wflo.budgets.set("tenant:acme", usd="5")  # acme's calls are reserved and settled; globex's are not

    @wflo.workflow(name="sb-research", budget=wflo.Budget(usd="2"))
    def research() -> str:
        return _ask(llm, "gpt-4o-mini") + _ask(llm, "gpt-4o") + sb_paid("x")

    @wflo.workflow(name="sb-triage")
    def triage() -> str:
        with contextlib.suppress(openai.APIStatusError):  # an error status: not billed, counted at $0
            _ask(llm, "gpt-4o-mini")
        return _ask(llm, "claude-3-5-haiku-latest") + sb_paid("y")

    with LLMServer() as llm:
        llm.script(
            Reply("a", input_tokens=1000, output_tokens=200), Reply("b", input_tokens=2000, output_tokens=100),
            Reply("c", input_tokens=10, output_tokens=5), Reply("d", input_tokens=30, output_tokens=7),
            Reply(error=500), Reply("e", input_tokens=500, output_tokens=50),
        )  # fmt: skip
        research.options(id="sb-r1", tenant="acme").run()
        research.options(id="sb-r2", tenant="acme").run()
        triage.options(id="sb-t1", tenant="globex").run()
    store = _config.get_store()
    _same(store)
    _same(store, tenant="acme")
    total = spend(store, "run")["total"]
    assert total["calls"] == 9 and Decimal(total["cost_usd"]) > Decimal("0.75")  # 3 tools at 0.25
    # What the ledger charged acme is what the book holds for acme's runs.
    (acme,) = Ledger(store).usage("tenant:acme")
    assert Decimal(spend(store, "tenant", tenant="acme")["total"]["cost_usd"]) == acme.spent
    top = top_runs(store, limit=1)
    assert top[0]["run_id"] in ("sb-r1", "sb-r2") and top[0]["workflow"] == "sb-research"


def test_a_writer_whose_clock_is_behind_is_counted_in_the_stores_hour(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer 3 h behind the store: its events say 3 h ago; the book says now (store time)."""
    from wflo.cost import _ledger
    from wflo.store import _base

    def behind(offset_seconds: float = 0.0) -> str:
        moment = datetime.now(UTC) - timedelta(hours=3) + timedelta(seconds=offset_seconds)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    monkeypatch.setattr(_base, "now_iso", behind)
    monkeypatch.setattr(_ledger, "now_iso", behind)
    wflo.budgets.set("global", usd="5")

    @wflo.workflow(name="sb-skew")
    def skew() -> str:
        return _ask(llm, "gpt-4o-mini")

    with LLMServer() as llm:
        llm.script(Reply("a", input_tokens=100, output_tokens=10), Reply("b", input_tokens=100, output_tokens=10))
        skew.options(id="sb-s1").run()
        before = _config.get_store().now()
        skew.options(id="sb-s2").run()
        after = _config.get_store().now()
    store = _config.get_store()
    (event,) = [e for e in store.events("sb-s1") if e.type == "call.completed"]
    assert event.at < behind(60)  # the writer's stamp is hours behind
    hours = [r["key"] for r in spend(store, "hour")["rows"]]
    assert hours and set(hours) <= {before[:13] + ":00", after[:13] + ":00"}
    # A window on the store's clock counts it: nothing is left behind a lagging writer.
    recent = spend(store, "model", since=(datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert recent["total"]["calls"] == 2
    assert journal_spend(store, "model", since=recent["since"])["total"]["calls"] == 0  # what the journal sees


def _run(store: Store, run_id: str, tenant: str | None = "acme") -> None:
    store.create_run(run_id=run_id, workflow="sb-crash", input={}, tenant=tenant, owner="w1")


def _commit(store: Store, run_id: str, events: list[NewEvent], op: Any) -> None:
    run = store.get_run(run_id)
    store.append(run_id, Head(run.last_seq, run.last_hash), events, ops=[op] if op else [], owner="w1")


def test_a_crash_between_reserve_and_settle_counts_what_the_ledger_counts(store_url: str) -> None:
    store = open_store(store_url)
    try:
        ledger = Ledger(store)
        ledger.set_limit("tenant:acme", "10")
        _run(store, "crash-1")
        held = ledger.reserve(run_id="crash-1", scopes=["tenant:acme"], cost=REQ, call_id="1", model="m-held")
        expired = ledger.reserve(
            run_id="crash-1", scopes=["tenant:acme"], cost=REQ, call_id="2", model="m-exp", ttl_seconds=-1
        )
        late = ledger.reserve(
            run_id="crash-1", scopes=["tenant:acme"], cost=REQ, call_id="3", model="m-late", ttl_seconds=-1
        )
        assert held and expired and late
        assert ledger.expire() == 2  # both charged at their reservation, as estimates
        book = spend(store, "model")
        assert book["total"]["calls"] == 2 and Decimal(book["total"]["estimated_usd"]) == 2 * expired.amount
        # The late call's real cost arrives: it replaces its estimate (the call still counts once).
        store.write(ledger.settle_op(late, Decimal("0.0005"), lambda: Booking("m-late", input_tokens=7)))
        # The run resumes: the held call is charged now; the expired one was already.
        events, op = ledger.orphans("crash-1")
        assert len(events) == 2
        _commit(store, "crash-1", events, op)
        (acme,) = ledger.usage("tenant:acme")
        assert acme.reserved == 0
        book = spend(store, "model")
        rows = {r["key"]: r for r in book["rows"]}
        assert Decimal(book["total"]["cost_usd"]) == acme.spent == held.amount + expired.amount + Decimal("0.0005")
        assert book["total"]["calls"] == 3
        assert rows["m-late"]["calls"] == 1 and rows["m-late"]["estimated_usd"] == "0"
        assert rows["m-late"]["input_tokens"] == 7
        assert Decimal(rows["m-held"]["estimated_usd"]) == held.amount
        # A settlement racing an expiry it lost: charged once (by the expiry), booked once.
        gone = ledger.reserve(
            run_id="crash-1", scopes=["tenant:acme"], cost=REQ, call_id="4", model="m-gone", ttl_seconds=-1
        )
        assert gone is not None
        ledger.expire()
        store.write(ledger.settle_unknown_op(gone, "timeout", lambda: Booking("m-gone", estimated=True)))
        (acme,) = ledger.usage("tenant:acme")
        assert Decimal(spend(store, "model")["total"]["cost_usd"]) == acme.spent
        assert spend(store, "model")["total"]["calls"] == 4
    finally:
        store.close()


def _settler(url: str, run_id: str, n: int, out: Any) -> None:
    store = open_store(url)
    ledger = Ledger(store)
    for i in range(n):
        res = ledger.reserve(run_id=run_id, scopes=["global"], cost=REQ, model="m")
        assert isinstance(res, Reservation)
        book = Booking("m", input_tokens=1, output_tokens=2)
        if i % 2:
            store.write(ledger.settle_op(res, Decimal("0.0001"), lambda b=book: b))
        else:  # a call no limit applies to: booked without a reservation, after settling this one
            store.write(ledger.settle_op(res, Decimal("0.0001"), lambda b=book: b))
            store.write(ledger.book_op(run_id, Decimal("0.0002"), lambda b=book: b))
    store.close()
    out.put(n)


def test_two_processes_settling_lose_no_row(store_url: str) -> None:
    store = open_store(store_url)
    try:
        Ledger(store).set_limit("global", "1000")
        _run(store, "race-1")
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_settler, args=(store_url, "race-1", 40, out)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        # Every charge of both processes went to the same row (one run, model and hour).
        total = spend(store, "run")["total"]
        assert total["calls"] == 2 * (40 + 20)
        assert Decimal(total["cost_usd"]) == 2 * (40 * Decimal("0.0001") + 20 * Decimal("0.0002"))
        assert total["input_tokens"] == 120 and total["output_tokens"] == 240
        assert Decimal(total["cost_usd"]) - 2 * 20 * Decimal("0.0002") == Ledger(store).usage("global")[0].spent
    finally:
        store.close()


def _old_store(url: str) -> Store:
    """A store as the release before the spend book left it (migrations up to m016)."""
    store = open_store(url, migrate=False, verify=False)
    version = [m.name for m in MIGRATIONS].index("m018_ledger_spend")

    def old(cur: Any) -> None:
        cur.execute("CREATE TABLE IF NOT EXISTS wflo_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for migration in MIGRATIONS[:version]:
            for statement in migration.statements(store.dialect):
                cur.execute(statement)
        store.execute(cur, "INSERT INTO wflo_meta (key, value) VALUES ('schema_version', ?)", (str(version),))

    store.write(old)
    return store


def _calls(store: Store) -> Iterator[tuple[str, str, str, str | None, dict[str, Any]]]:
    """Calls across days, hours, models, workflows and tenants (some failed, some estimated)."""
    start = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    for i in range(60):
        at = (start + timedelta(minutes=37 * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        data: dict[str, Any] = {
            "call": str(i), "kind": "llm", "name": ("gpt-4o", "gpt-4o-mini", "claude")[i % 3],
            "cost_usd": str(Decimal("0.0013") * (i % 7)), "usage": {"input_tokens": i, "output_tokens": 2 * i},
        }  # fmt: skip
        if i % 11 == 0:
            data["cost_estimated"] = True
        if i % 13 == 0:
            data["kind"], data["name"], data["cost_usd"] = "tool", "paid", "0.5"
        yield at, f"old-{i % 5}", ("wf-a", "wf-b")[i % 2], (None, "acme", "globex")[i % 3], data


def test_an_upgraded_store_reports_the_totals_it_reported_before(store_url: str) -> None:
    store = _old_store(store_url)
    try:
        made: set[str] = set()
        for _, run_id, workflow, tenant, _ in _calls(store):
            if run_id not in made:
                made.add(run_id)
                store.create_run(run_id=run_id, workflow=workflow, input={}, tenant=tenant, owner="w1")
        for at, run_id, _, _, data in _calls(store):
            run = store.get_run(run_id)
            ev = NewEvent("call.failed" if int(data["call"]) % 17 == 0 else "call.completed", data, at)
            if int(data["call"]) % 17 == 0:
                ev.data["error"] = {"type": "Timeout"}
            store.append(run_id, Head(run.last_seq, run.last_hash), [ev], owner="w1")
        # A call lost with its process, charged at its reservation and not yet journaled.
        store.write(
            lambda cur: store.execute(
                cur,
                "INSERT INTO budget_unknown (id, run_id, call_id, model, scopes, amount_usd, reason, recorded, "
                "created_at) VALUES ('lost-1', 'old-1', '99', 'gpt-4o', '[]', '0.07', 'expired', 0, "
                "'2026-03-02T05:10:00.000000Z')",
            )
        )
        journal = {g: journal_spend(store, g) for g in GROUPS}
        version = [m.name for m in MIGRATIONS].index("m018_ledger_spend")
        assert store.migrate() == [m.name for m in MIGRATIONS[version:]]
        for group in GROUPS:
            assert spend(store, group) == journal[group], group
        window = {"since": "2026-03-02T01:00:00Z", "until": "2026-03-02T09:00:00Z"}
        assert spend(store, "hour", **window) == journal_spend(store, "hour", **window) | window
        assert spend(store, "day", split="model")["rows"] == journal_spend(store, "day", split="model")["rows"]
        # The estimate remembers the hour it was booked in: a late real cost corrects that row.
        assert store.read("SELECT spend_hour FROM budget_unknown WHERE id = 'lost-1'") == [("2026-03-02T05:00",)]
    finally:
        store.close()


def test_hour_windows_count_every_hour_they_overlap(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    try:
        store.create_run(run_id="w-1", workflow="wf", input={})
        for hour in ("2026-03-01T09:00", "2026-03-01T10:00", "2026-03-01T11:00"):
            store.write(lambda cur, h=hour: _tables.book(store, cur, "w-1", "m", calls=1, usd=Decimal(1),
                                                          estimated=Decimal(0), hour=h))  # fmt: skip

        def calls(**window: str) -> int:
            return int(spend(store, "model", **window)["total"]["calls"])

        assert calls(since="2026-03-01T10:30:00Z") == 2  # 10:00 overlaps
        assert calls(until="2026-03-01T10:00:00Z") == 1  # an hour's very start ends before it
        assert calls(until="2026-03-01T10:00:01Z") == 2
        assert calls(since="2026-03-01T10:00:00Z", until="2026-03-01T11:00:00Z") == 1
        assert calls(since="2026-03-01", until="2026-03-02") == 3
        assert calls(until="2026-03-01T11:59:59.999999+00:00") == 3
    finally:
        store.close()
