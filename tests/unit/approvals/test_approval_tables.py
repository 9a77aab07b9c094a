"""``wflo.approvals._tables``: the approvals tables' migrations and each query on them, on
SQLite and PostgreSQL (decide-once under concurrent deciders included)."""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wflo import _config
from wflo._errors import ApprovalClosedError, ApprovalNotFoundError
from wflo.approvals import Inbox
from wflo.approvals import _tables as tables
from wflo.store import MIGRATIONS, Store, open_store

# The released SQL, byte for byte: moving a migration into its domain must not change it.
RELEASED = {
    "m003_approvals": "7f2636f5b53970b30cb780a45c080ab530df6d9eadab1b08af90c41430116a14",
    "m006_approvals_bind": "a1079fe089d82fb30489d435613be275b3f20aab94964689e729037460291cd7",
}


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    st = open_store(store_url)
    yield st
    st.close()


def _run(store: Store, run_id: str, *, tenant: str | None = None, workflow: str = "refunds") -> None:
    store.create_run(run_id=run_id, workflow=workflow, input={}, tenant=tenant, owner="w1")


def _file(store: Store, approval_id: str, run_id: str, *, call_id: str = "1", tool: str = "refund", **kw: Any) -> None:
    values: dict[str, Any] = dict(
        approval_id=approval_id, run_id=run_id, call_id=call_id, tool=tool, message="ok?", action='{"a":1}',
        action_hash="h" * 64, approvers=["role:finance"], quorum=1, requested_by="user:owner", timeout_at=None,
        on_timeout="reject", escalate_to=[], params=None, supersedes=None, now=store.now(),
    )  # fmt: skip
    values.update(kw)
    store.write(lambda cur: tables.insert(store, cur, **values))


def _status(store: Store, approval_id: str) -> str:
    row = tables.request(store, approval_id)
    assert row is not None
    return str(row[10])


def test_the_migrations_kept_here_are_the_released_ones_in_their_place() -> None:
    assert MIGRATIONS[2] is tables.M003_APPROVALS
    assert MIGRATIONS[5] is tables.M006_APPROVALS_BIND
    for m in (tables.M003_APPROVALS, tables.M006_APPROVALS_BIND):
        assert hashlib.sha256(m.sql.encode()).hexdigest() == RELEASED[m.name], m.name
        assert m.dialect_sql == {}


def test_reads(store: Store) -> None:
    _run(store, "r1", tenant="acme", workflow="refunds")
    _run(store, "r2")
    _file(store, "ap-1", "r1", call_id="1", tool="refund", now="2026-01-01T00:00:01.000000Z")
    _file(store, "ap-2", "r1", call_id="1", tool="refund", now="2026-01-01T00:00:02.000000Z")
    _file(store, "ap-3", "r2", call_id="2", tool="wire", now="2026-01-01T00:00:03.000000Z")
    store.write(lambda cur: tables.settle(store, cur, "ap-2", status="approved", decision_action=None,
                                          decision_hash="h" * 64, reason=None, by="user:fin", via="api",
                                          at=store.now()))  # fmt: skip

    row = tables.request(store, "ap-1")
    assert row is not None and row[:4] == ("ap-1", "r1", "1", "refund")
    assert tables.request(store, "ap-") is None  # exact only
    assert len(tables.requests_by_prefix(store, "ap-")) == 2  # at most two: enough to say "ambiguous"
    assert [r[0] for r in tables.requests_by_prefix(store, "ap-3")] == ["ap-3"]
    # A prefix is text, not a pattern, and case counts (SQLite's LIKE alone would ignore it).
    for pattern in ("%", "ap_", "a%-3", "_p-3", "AP-3"):
        assert tables.requests_by_prefix(store, pattern) == [], pattern
    assert tables.requests_by_prefix(store, "") == []
    assert [r[0] for r in tables.requests_for_call(store, "r1", "1")] == ["ap-1", "ap-2"]
    assert [r[0] for r in tables.requests(store, status=None, run_id=None, limit=10)] == ["ap-3", "ap-2", "ap-1"]
    assert [r[0] for r in tables.requests(store, status="pending", run_id=None, limit=10)] == ["ap-3", "ap-1"]
    assert [r[0] for r in tables.requests(store, status="pending", run_id="r1", limit=10)] == ["ap-1"]
    assert [r[0] for r in tables.requests(store, status=None, run_id=None, limit=1)] == ["ap-3"]

    both = tables.requests_with_runs(store, status=None, tenant=None, limit=10)
    assert [(r[0], r[-2], r[-1]) for r in both] == [("ap-3", None, "refunds"), ("ap-2", "acme", "refunds"),
                                                    ("ap-1", "acme", "refunds")]  # fmt: skip
    assert len(both[0]) == len(tables.COLUMNS.split(",")) + 2
    acme = tables.requests_with_runs(store, status="pending", tenant="acme", limit=10)
    assert [r[0] for r in acme] == ["ap-1"]
    assert tables.requests_with_runs(store, status=None, tenant="other", limit=10) == []

    assert tables.tenant_of_request(store, "ap-1") == "acme"
    assert tables.tenant_of_request(store, "ap-3") is None
    assert tables.tenant_of_request(store, "nope") is None
    assert tables.run_tenant(store, "r1") == "acme" and tables.run_tenant(store, "nope") is None
    assert sorted(tables.summaries(store, ["ap-1", "ap-3", "nope"])) == [
        ("ap-1", "r1", "pending", "refund", "acme"), ("ap-3", "r2", "pending", "wire", None)
    ]  # fmt: skip
    assert tables.summaries(store, []) == []
    assert tables.pending_by_tool(store) == {"refund": 1, "wire": 1}


def test_a_call_has_one_pending_request(store: Store) -> None:
    _run(store, "r1")
    _file(store, "old", "r1")
    _file(store, "other-call", "r1", call_id="2")
    now = store.now()
    assert store.write(lambda cur: tables.supersede_pending(store, cur, "r1", "1", keep="new", now=now)) == 1
    assert _status(store, "old") == "superseded" and _status(store, "other-call") == "pending"
    assert not store.write(lambda cur: tables.reopen(store, cur, "other-call", now=now))  # not superseded
    assert store.write(lambda cur: tables.reopen(store, cur, "old", now=now))
    assert _status(store, "old") == "pending"
    assert store.write(lambda cur: tables.exists(store, cur, "old"))
    assert not store.write(lambda cur: tables.exists(store, cur, "new"))


def test_a_window_of_requests_and_their_votes(store: Store) -> None:
    _run(store, "r1")
    _file(store, "early", "r1", call_id="1", now="2026-01-01T00:00:00.000000Z")
    _file(store, "inside", "r1", call_id="2", now="2026-01-02T00:00:00.000000Z")
    _file(store, "late", "r1", call_id="3", now="2026-01-03T00:00:00.000000Z")
    for aid in ("early", "inside"):
        store.write(lambda cur, aid=aid: tables.insert_vote(store, cur, aid, "user:a", decision="approve", reason="ok",
                                                            action_hash="h" * 64, via="cli", shown=None,
                                                            at="2026-01-02T01:00:00.000000Z"))  # fmt: skip
    since, until = "2026-01-02T00:00:00.000000Z", "2026-01-03T00:00:00.000000Z"  # [since, until)
    rows = tables.requests_created(store, since, until)
    assert [(r[0], r[1], r[2], r[7]) for r in rows] == [("inside", "r1", "refund", since)]
    assert tables.votes_on_requests_created(store, since, until) == [
        ("inside", "user:a", "approve", "ok", "cli", "2026-01-02T01:00:00.000000Z")
    ]
    assert tables.votes_on_requests_created(store, until, "2026-01-04T00:00:00.000000Z") == []


def test_votes_tally_and_one_vote_each(store: Store) -> None:
    _run(store, "r1")
    _file(store, "ap", "r1")

    def vote(principal: str, decision: str, at: str) -> None:
        store.write(lambda cur: tables.insert_vote(store, cur, "ap", principal, decision=decision, reason=None,
                                                   action_hash="h" * 64, via="cli", shown="text", at=at))  # fmt: skip

    vote("user:b", "approve", "2026-01-01T00:00:02.000000Z")
    vote("user:a", "reject", "2026-01-01T00:00:01.000000Z")
    assert [v[0] for v in tables.votes(store, "ap")] == ["user:a", "user:b"]  # by time
    assert tables.votes(store, "ap")[0] == ("user:a", "reject", None, "h" * 64, "cli", "2026-01-01T00:00:01.000000Z")
    _, _, votes, _, _, _ = store.write_batch(lambda cur: tables.lock_for_decision(store, cur, "r1", "ap"))
    assert sorted(votes) == [("user:a", "reject", "h" * 64), ("user:b", "approve", "h" * 64)]
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):  # the key refuses a second vote
        vote("user:a", "approve", "2026-01-01T00:00:03.000000Z")
    assert len(tables.votes(store, "ap")) == 2


def test_locks_read_the_rows_a_decision_needs(store: Store) -> None:
    _run(store, "r1")
    _file(store, "ap", "r1")

    def lock(run_id: str, approval_id: str) -> Any:
        # Pipelined on PostgreSQL (write_batch), as a decision sends it: one round trip.
        return store.write_batch(lambda cur: tables.lock_for_decision(store, cur, run_id, approval_id))

    run, row, votes, now, makers, off = lock("r1", "ap")
    assert run == ("running", False) and row is not None and row[0] == "ap" and votes == [] and makers == []
    assert off is False
    assert now[:2] == "20" and now.endswith("Z")
    run, row, _, _, _, _ = lock("nope", "nope")
    assert run is None and row is None
    store.request_cancel("r1")
    assert lock("r1", "ap")[0] == ("running", True)


def test_token_makers_follow_tokens_made_with_tokens(store: Store) -> None:
    """A service account answers to whoever made its tokens (and to whoever made theirs)."""
    _run(store, "r1")
    _file(store, "ap", "r1")

    def token(principal: str, by: str) -> None:
        store.write(lambda cur: store.execute(
            cur, "INSERT INTO api_tokens (id, name, principal, prefix, digest, role, scope, created_by, created_at) "
            "VALUES (?, ?, ?, 'p', ?, 'approver', '*', ?, '2026-01-01T00:00:00.000000Z')",
            (principal + by, principal, principal, principal + by, by),
        ))  # fmt: skip

    token("service:bot", "service:maker")
    token("service:maker", "user:alice")
    token("service:maker", "user:bob")
    token("service:cycle", "service:cycle")  # made by itself: no endless walk
    bot = [("service:bot", "service:maker"), ("service:bot", "user:alice"), ("service:bot", "user:bob")]
    want = sorted([*bot, ("service:cycle", "service:cycle")])
    assert sorted(tables.token_makers(store, "ap", ["service:bot", "service:cycle", "user:x"])) == want
    assert tables.token_makers(store, "ap", []) == []
    store.write(lambda cur: tables.insert_vote(store, cur, "ap", "service:bot", decision="approve", reason=None,
                                               action_hash="h" * 64, via="api", shown=None, at=store.now()))  # fmt: skip
    assert sorted(tables.token_makers(store, "ap", [])) == bot  # the voters'
    *_, makers, _ = store.write_batch(lambda cur: tables.lock_for_decision(store, cur, "r1", "ap", ["service:cycle"]))
    assert sorted(makers) == want


def test_a_disabled_decider_is_read_under_its_lock(store: Store) -> None:
    """``wflo.auth``'s identities: the decider's row says whether an admin disabled them."""
    _run(store, "r1")
    _file(store, "ap", "r1")

    def person(pid: str, off: int) -> None:
        store.write(lambda cur: store.execute(
            cur, "INSERT INTO identities (id, kind, groups, disabled, created_at) VALUES (?, 'user', '[]', ?, ?)",
            (pid, off, "2026-01-01T00:00:00.000000Z"),
        ))  # fmt: skip

    person("user:gone", 1)
    person("user:here", 0)
    assert tables.disabled(store, "user:gone") and not tables.disabled(store, "user:here")
    assert not tables.disabled(store, "user:never-seen")
    for pid, want in (("user:gone", True), ("user:here", False), ("user:never-seen", False)):
        got = store.write_batch(lambda cur, p=pid: tables.lock_for_decision(store, cur, "r1", "ap", [p]))[-1]
        assert got is want, pid


def test_closing_writes_touch_only_pending_requests(store: Store) -> None:
    _run(store, "r1")
    for i in range(3):
        _file(store, f"ap{i}", "r1", call_id=str(i), timeout_at=store.now(-1 if i else 3600))
    now = store.now()
    # A timeout is judged against the time given (the store's clock): ap0's is an hour away.
    assert not store.write(
        lambda cur: tables.close_due(store, cur, "ap0", status="expired", reason="t", by="p", now=now)
    )
    assert store.write(lambda cur: tables.close_due(store, cur, "ap1", status="expired", reason="t", by="p", now=now))
    assert _status(store, "ap0") == "pending" and _status(store, "ap1") == "expired"
    assert not store.write(lambda cur: tables.close_due(store, cur, "ap1", status="approved", reason="t", by="p",
                                                        now=now))  # fmt: skip
    assert store.write(
        lambda cur: tables.escalate(store, cur, "ap0", approvers=["user:boss"], timeout_at=None, now=now)
    )
    assert not store.write(
        lambda cur: tables.escalate(store, cur, "ap1", approvers=["user:x"], timeout_at=None, now=now)
    )
    row = tables.request(store, "ap0")
    assert row is not None and row[7] == '["user:boss"]' and row[17] is None and row[20] == 1
    # Of three ids one is closed already: the caller learns that only two were cancelled.
    n = store.write(lambda cur: tables.cancel_pending(store, cur, ["ap0", "ap1", "ap2"], reason="run ended",
                                                      by="system", at=now))  # fmt: skip
    assert n == 2
    assert [_status(store, f"ap{i}") for i in range(3)] == ["cancelled", "expired", "cancelled"]


def test_principals_roles(store: Store) -> None:
    assert tables.roles_of(store, "user:a") == set() and tables.principals(store) == []
    store.write(
        lambda cur: tables.set_roles(store, cur, "user:b", ["finance", "dba"], now="2026-01-01T00:00:00.000000Z")
    )
    store.write(lambda cur: tables.set_roles(store, cur, "user:a", ["ops"], now="2026-01-01T00:00:00.000000Z"))
    store.write(lambda cur: tables.set_roles(store, cur, "user:a", [], now="2026-01-02T00:00:00.000000Z"))
    assert tables.roles_of(store, "user:b") == {"finance", "dba"} and tables.roles_of(store, "user:a") == set()
    assert tables.principals(store) == [
        ("user:a", [], "2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z"),
        ("user:b", ["dba", "finance"], "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z"),
    ]


def _race(inbox: Inbox, approval_id: str, principals: list[str]) -> tuple[list[str], list[str]]:
    """Every principal approves at once; returns (statuses returned, refusals)."""
    barrier = threading.Barrier(len(principals))
    done: list[str] = []
    refused: list[str] = []

    def decide(p: str) -> None:
        barrier.wait()
        try:
            done.append(inbox.decide(approval_id, "approve", principal=p).status)
        except ApprovalClosedError as e:
            refused.append(type(e).__name__)

    threads = [threading.Thread(target=decide, args=(p,)) for p in principals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return done, refused


@pytest.mark.parametrize("round_", range(3))
def test_decide_once_under_concurrent_deciders(configured: str, round_: int) -> None:
    store = _config.get_store()
    inbox = Inbox(store)
    _run(store, "r1")
    deciders = ["user:a", "user:b", "user:c"]
    _file(store, "once", "r1", approvers=deciders, quorum=1)
    done, refused = _race(inbox, "once", deciders)
    # One decision; the others find it closed; one vote is recorded, and the decider named is its caster.
    assert done == ["approved"] and refused == ["ApprovalClosedError"] * 2
    votes = inbox.votes("once")
    assert len(votes) == 1 and inbox.get("once").decided_by == votes[0]["principal"]
    decided = [e for e in store.events("system") if e.type == "approval.decided"]
    assert len(decided) == 1


def test_a_quorum_counts_every_concurrent_vote(configured: str) -> None:
    store = _config.get_store()
    inbox = Inbox(store)
    _run(store, "r1")
    _file(store, "two", "r1", approvers=["user:a", "user:b"], quorum=2)
    done, refused = _race(inbox, "two", ["user:a", "user:b"])
    # Both votes count (neither read the other's as missing): the second settles the request.
    assert len(done) == 2 and refused == []
    assert inbox.get("two").status == "approved" and len(inbox.votes("two")) == 2
    kinds = sorted(e.type for e in store.events("system") if e.type.startswith("approval."))
    assert kinds == ["approval.decided", "approval.voted"]


def test_inbox_reads_for_other_packages(configured: str) -> None:
    store = _config.get_store()
    inbox = Inbox(store)
    _run(store, "r1", tenant="acme")
    _file(store, "ap", "r1")
    [(req, tenant, workflow)] = inbox.with_runs(status=None)
    assert (req.id, tenant, workflow) == ("ap", "acme", "refunds")
    assert inbox.with_runs(status="approved") == []
    assert inbox.get("ap").id == "ap"
    with pytest.raises(ApprovalNotFoundError):
        inbox.get("%%%%")  # the only request there is, were the prefix a pattern
    assert inbox.tenant_of("ap") == "acme"
    assert inbox.summaries(["ap"]) == [{"id": "ap", "run_id": "r1", "status": "pending", "tool": "refund",
                                        "tenant": "acme"}]  # fmt: skip
    assert inbox.pending_by_tool() == {"refund": 1}
    store.write(lambda cur: tables.set_roles(store, cur, "user:a", ["finance"], now=store.now()))
    assert inbox.roles_of("user:a") == {"finance"}
    assert [(p, roles) for p, roles, _c, _u in inbox.principals()] == [("user:a", ["finance"])]


def test_every_query_here_is_tried_here() -> None:
    source = Path(__file__).read_text()
    queries = [n for n, f in vars(tables).items() if inspect.isfunction(f) and f.__module__ == tables.__name__]
    assert queries and [n for n in queries if f"tables.{n}(" not in source] == []
