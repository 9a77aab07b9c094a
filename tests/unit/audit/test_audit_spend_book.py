"""`wflo audit verify` checks the spend book (what `wflo costs` reports) against the chained
journals: an edited, deleted or invented book row fails verification, on both stores."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from auditkit import admin
from test_audit_cli import wflo

import wflo as wf
from wflo import _config
from wflo.audit import _prune, prune, verify_all, verify_book
from wflo.cost import spend
from wflo.cost._ledger import Booking, CostRequest, Ledger
from wflo.store import Head, NewEvent, Store
from wflo.testing import LLMServer, Reply

REQ = CostRequest(input_cost=Decimal("0.001"), output_price_per_token=Decimal("0.00001"), output_cap=100)


def _ask(llm: LLMServer, model: str) -> None:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def _two_runs() -> Store:
    """Two runs of real LLM calls (through the scripted server), under a budget."""

    @wf.workflow(name="asb-research", budget=wf.Budget(usd="2"))
    def research() -> None:
        _ask(llm, "gpt-4o-mini")
        _ask(llm, "gpt-4o")

    with LLMServer() as llm:
        llm.script(
            Reply("a", input_tokens=1000, output_tokens=200), Reply("b", input_tokens=2000, output_tokens=100),
            Reply("c", input_tokens=10, output_tokens=5), Reply("d", input_tokens=30, output_tokens=7),
        )  # fmt: skip
        research.options(id="asb-r1").run()
        research.options(id="asb-r2").run()
    return _config.get_store()


def _one(store: Store, **kw: Any) -> Any:
    report = verify_book(store, **kw)
    assert not report.ok
    (finding,) = report.findings
    return finding


def test_a_clean_store_passes(configured: str) -> None:
    store = _two_runs()
    report = verify_book(store)
    assert report.ok and report.runs == 2 and report.rows == 4 and report.findings == ()
    assert verify_book(store, run_id="asb-r1").runs == 1


def test_a_lowered_or_raised_cost_is_found(configured: str) -> None:
    store = _two_runs()
    (real,) = store.read("SELECT cost_usd FROM ledger_spend WHERE run_id = 'asb-r1' AND model = 'gpt-4o'")
    with admin(configured) as db:
        db.run("UPDATE ledger_spend SET cost_usd = '0.0000001' WHERE run_id = 'asb-r1' AND model = 'gpt-4o'")
    f = _one(store)
    assert (f.run_id, f.model, f.kind) == ("asb-r1", "gpt-4o", "mismatch") and len(f.hours) == 1
    assert f.book == {"cost_usd": "0.0000001"} and f.journal == {"cost_usd": real[0]}
    assert "run asb-r1, model gpt-4o, hours " in f.describe() and "cost_usd book 0.0000001, journal" in f.describe()
    with admin(configured) as db:
        db.run("UPDATE ledger_spend SET cost_usd = '7' WHERE run_id = 'asb-r1' AND model = 'gpt-4o'")
    assert _one(store).book == {"cost_usd": "7"}
    assert _one(store, run_id="asb-r1").book == {"cost_usd": "7"}
    assert verify_book(store, run_id="asb-r2").ok


def test_a_deleted_row_is_found(configured: str) -> None:
    store = _two_runs()
    with admin(configured) as db:
        db.run("DELETE FROM ledger_spend WHERE run_id = 'asb-r2' AND model = 'gpt-4o-mini'")
    f = _one(store)
    assert (f.run_id, f.model, f.hours) == ("asb-r2", "gpt-4o-mini", ())
    assert f.book["calls"] == "0" and f.journal["calls"] == "1" and "no book row" in f.describe()


def test_a_forged_row_for_a_real_run_is_found(configured: str) -> None:
    store = _two_runs()
    with admin(configured) as db:
        db.run(
            "INSERT INTO ledger_spend (hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, "
            "input_tokens, output_tokens) VALUES ('2026-01-01T03:00', 'asb-r1', 'gpt-4o', 'asb-research', NULL, "
            "1, '0.5', '0', 10, 10)"
        )
    f = _one(store)
    assert (f.run_id, f.model, f.kind) == ("asb-r1", "gpt-4o", "mismatch") and "2026-01-01T03:00" in f.hours
    assert set(f.book) == {"calls", "cost_usd", "input_tokens", "output_tokens"}


def test_a_forged_row_for_a_run_that_does_not_exist_is_found(configured: str) -> None:
    store = _two_runs()
    with admin(configured) as db:
        for run_id in ("asb-ghost", "zzz-ghost", "0-ghost"):  # inside, after and before the runs' keys
            db.run(
                "INSERT INTO ledger_spend (hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, "
                "input_tokens, output_tokens) VALUES ('2026-01-01T03:00', ?, 'gpt-4o', 'wf', 'acme', 3, '12.5', "
                "'0', 100, 10)",
                (run_id,),
            )
    report = verify_book(store)
    assert [(f.run_id, f.kind) for f in report.findings] == [
        ("0-ghost", "no-run"), ("asb-ghost", "no-run"), ("zzz-ghost", "no-run"),
    ]  # fmt: skip
    assert "(no such run)" in report.findings[0].describe()
    assert _one(store, run_id="zzz-ghost").book["cost_usd"] == "12.5"


def test_edited_token_and_call_counts_are_found(configured: str) -> None:
    store = _two_runs()
    with admin(configured) as db:
        db.run("UPDATE ledger_spend SET calls = calls + 4 WHERE run_id = 'asb-r1' AND model = 'gpt-4o-mini'")
        db.run("UPDATE ledger_spend SET input_tokens = 1, output_tokens = 2 WHERE run_id = 'asb-r2'")
    report = verify_book(store)
    assert [(f.run_id, f.model, sorted(f.book)) for f in report.findings] == [
        ("asb-r1", "gpt-4o-mini", ["calls"]),
        ("asb-r2", "gpt-4o", ["input_tokens", "output_tokens"]),
        ("asb-r2", "gpt-4o-mini", ["input_tokens", "output_tokens"]),
    ]


def _append(store: Store, run_id: str, events: list[NewEvent], op: Any) -> None:
    run = store.get_run(run_id)
    store.append(run_id, Head(run.last_seq, run.last_hash), events, ops=[op] if op else [], owner="w1")


def test_estimated_charges_and_their_corrections_pass(configured: str) -> None:
    """Calls lost with their process (charged at their reservation, then journaled on resume),
    and a real cost arriving after the estimate (it corrects the estimate's row)."""
    store = _config.get_store()
    ledger = Ledger(store)
    ledger.set_limit("global", "10")
    store.create_run(run_id="lost-1", workflow="wf", input={}, owner="w1")
    held = ledger.reserve(run_id="lost-1", scopes=["global"], cost=REQ, call_id="1", model="m-held")
    gone = ledger.reserve(run_id="lost-1", scopes=["global"], cost=REQ, call_id="2", model="m-exp", ttl_seconds=-1)
    late = ledger.reserve(run_id="lost-1", scopes=["global"], cost=REQ, call_id="3", model="m-late", ttl_seconds=-1)
    assert held and gone and late
    assert ledger.expire() == 2  # charged at their reservation, not journaled yet
    report = verify_book(store)
    assert report.ok and report.runs == 1 and Decimal(spend(store, "run")["total"]["estimated_usd"]) > 0
    # The late call's answer arrives with its event: the real cost corrects its estimate.
    done = NewEvent("call.completed", {
        "call": "3", "kind": "llm", "name": "m-late", "cost_usd": "0.0005",
        "usage": {"input_tokens": 7, "output_tokens": 1},
    })  # fmt: skip
    _append(
        store,
        "lost-1",
        [done],
        ledger.settle_op(late, Decimal("0.0005"), lambda: Booking("m-late", input_tokens=7, output_tokens=1)),
    )
    assert verify_book(store).ok
    # The run resumes: the held call and the expired one are journaled as estimated charges.
    events, op = ledger.orphans("lost-1")
    assert len(events) == 2
    _append(store, "lost-1", events, op)
    report = verify_book(store)
    assert report.ok and report.rows == 3, report.findings
    assert all(r.ok for r in verify_all(store))


def test_pruned_runs_are_checked_against_their_prune_record(configured: str) -> None:
    store = _two_runs()
    result = prune(store, "2999-01-01T00:00:00.000000Z", by="user:ops", retention_override="test")
    assert sorted(c for c, _, _ in result.pruned) == ["asb-r1", "asb-r2"]
    assert not store.read("SELECT 1 FROM events WHERE chain = 'asb-r1'")
    report = verify_book(store)
    assert report.ok and report.runs == 2 and report.pruned == 2, report.findings
    with admin(configured) as db:
        db.run("UPDATE ledger_spend SET cost_usd = '0' WHERE run_id = 'asb-r1' AND model = 'gpt-4o'")
        db.run("DELETE FROM ledger_spend WHERE run_id = 'asb-r2' AND model = 'gpt-4o'")
    report = verify_book(store)
    assert [(f.run_id, f.model, f.kind) for f in report.findings] == [
        ("asb-r1", "gpt-4o", "pruned"), ("asb-r2", "gpt-4o", "pruned"),
    ]  # fmt: skip
    assert "prune record" in report.findings[0].describe()


def test_a_run_pruned_before_prunes_kept_spend_is_reported_not_checkable(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _two_runs()
    old = _prune._chain_record

    def as_before(store: Store, chain: str, count: int, head: str) -> dict[str, Any]:
        record = old(store, chain, count, head)
        del record["spend"]
        return record

    monkeypatch.setattr(_prune, "_chain_record", as_before)
    prune(store, "2999-01-01T00:00:00.000000Z", by="user:ops", retention_override="test")
    report = verify_book(store)
    assert report.ok and report.unchecked == ("asb-r1", "asb-r2") and report.runs == 0
    assert "2 pruned not checkable" in report.describe()
    # A row of a run that does not exist is still a finding.
    with admin(configured) as db:
        db.run(
            "INSERT INTO ledger_spend (hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, "
            "input_tokens, output_tokens) VALUES ('2026-01-01T03:00', 'asb-r3', 'gpt-4o', 'wf', NULL, 1, '1', '0', 0, 0)"
        )
    assert _one(store).kind == "no-run"


def test_the_cli_fails_on_a_forged_book(configured: str, tmp_path: Path) -> None:
    _two_runs()
    _config.reset()
    ok = wflo("audit", "verify", db=configured, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "spend book agrees with the journals: 4 rows of 2 runs" in ok.stdout
    with admin(configured) as db:
        db.run("UPDATE ledger_spend SET cost_usd = '0.0000001' WHERE run_id = 'asb-r1' AND model = 'gpt-4o'")
    bad = wflo("audit", "verify", db=configured, cwd=tmp_path)
    assert bad.returncode == 10
    assert "intact: 2 chains" in bad.stdout and "spend book disagrees with the journals (1 mismatch)" in bad.stdout
    assert "BROKEN spend book: run asb-r1, model gpt-4o, hours " in bad.stderr
    assert "cost_usd book 0.0000001, journal " in bad.stderr
    one = wflo("audit", "verify", "asb-r1", db=configured, cwd=tmp_path)
    assert one.returncode == 10 and "run asb-r1, model gpt-4o" in one.stderr
    assert wflo("audit", "verify", "asb-r2", db=configured, cwd=tmp_path).returncode == 0
    assert wflo("audit", "verify", "--no-spend-book", db=configured, cwd=tmp_path).returncode == 0
    import json

    doc = json.loads(wflo("audit", "verify", "--json", db=configured, cwd=tmp_path).stdout)
    assert doc["ok"] is False and doc["spend_book"]["findings"][0]["book"] == {"cost_usd": "0.0000001"}


def test_with_a_pinned_key_only_signed_prune_records_vouch_for_a_pruned_runs_book(configured: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    store = _two_runs()
    key, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    prune(store, "2999-01-01T00:00:00.000000Z", by="user:ops", retention_override="test", private_key=key)
    report = verify_book(store, trusted=key.public_key())
    assert report.ok and report.pruned == 2
    # Under another key the record vouches for nothing: the rows have no journal to agree with.
    report = verify_book(store, trusted=other.public_key())
    assert not report.ok and {f.run_id for f in report.findings} == {"asb-r1", "asb-r2"}


def test_an_unknown_outcome_settled_after_its_expiry_is_counted_once(configured: str) -> None:
    """A call whose answer was lost, settled at its reservation after an expiry already charged
    it: its event records it, so the expiry's estimate is no longer a call waiting for its
    journal (the journal's view counted it twice, and verify reported the book as short)."""
    store = _config.get_store()
    ledger = Ledger(store)
    ledger.set_limit("global", "10")
    store.create_run(run_id="race-1", workflow="wf", input={}, owner="w1")
    res = ledger.reserve(run_id="race-1", scopes=["global"], cost=REQ, call_id="1", model="m", ttl_seconds=-1)
    assert res is not None and ledger.expire() == 1
    failed = NewEvent("call.failed", {
        "call": "1", "kind": "llm", "name": "m", "cost_usd": str(res.amount), "cost_estimated": True,
        "unknown_outcome": "timeout", "error": {"type": "Timeout"},
    })  # fmt: skip
    _append(store, "race-1", [failed], ledger.settle_unknown_op(res, "timeout", lambda: Booking("m", estimated=True)))
    report = verify_book(store)
    assert report.ok, report.findings
    assert spend(store, "run")["total"]["calls"] == 1


def test_a_damaged_event_fails_its_chain_not_the_book_check(configured: str) -> None:
    store = _two_runs()
    with admin(configured) as db:
        db.run("UPDATE events SET data = 'not json' WHERE chain = 'asb-r1' AND type = 'call.completed'")
    report = verify_book(store)  # read event by event; the damaged calls no longer count
    assert {(f.run_id, f.model) for f in report.findings} == {("asb-r1", "gpt-4o"), ("asb-r1", "gpt-4o-mini")}
    assert not all(r.ok for r in verify_all(store))


def _forge(db: Any, hour: str, run_id: str) -> None:
    db.run(
        "INSERT INTO ledger_spend (hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, "
        "input_tokens, output_tokens) VALUES (?, ?, 'gpt-4o', 'asb-research', NULL, 1, '0.5', '0', 10, 10)",
        (hour, run_id),
    )


def test_since_checks_the_recent_runs_and_the_books_recent_rows(configured: str, tmp_path: Path) -> None:
    """``since`` scopes the book's check as it scopes the chains': the runs with events since
    then, and any run (real or not) with a book row of that hour or later; nothing older."""
    store = _two_runs()
    assert verify_book(store, since="2000-01-01T00:00:00.000000Z").runs == 2  # both runs are recent
    late = "2999-01-01T00:00:00.000000Z"
    assert verify_book(store, since=late).runs == 0  # no run has events that late: nothing looked at
    with admin(configured) as db:
        _forge(db, "2026-01-01T03:00", "asb-r1")  # dated long before ``late``
    assert verify_book(store, since=late).ok  # out of scope
    assert not verify_book(store, since="2000-01-01T00:00:00.000000Z").ok  # a recent run: found
    with admin(configured) as db:
        _forge(db, "2999-01-01T05:00", "asb-ghost")  # a row of that window, for no run
    f = _one(store, since=late)
    assert (f.run_id, f.kind) == ("asb-ghost", "no-run")
    # The CLI and the API pass --since on to the book's check.
    out = wflo("audit", "verify", "--since", "2999-01-01", "--json", db=configured, cwd=tmp_path)
    assert out.returncode == 10 and '"asb-ghost"' in out.stdout, out.stdout
