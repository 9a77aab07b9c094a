"""Which commits wait for the disk (issue 20; "Commit modes" in ``wflo.store._postgres``).

On PostgreSQL a run's start under its caller and the marker that an execution began commit
with ``synchronous_commit = off``; everything that anything depends on commits synchronously,
claims included. Observed at the commit itself: a deferred constraint trigger, which PostgreSQL
fires just before the commit record is written, logs ``current_setting('synchronous_commit')``
for every row a transaction wrote.

Also here, on both stores: a run whose start the server lost (simulated by deleting it) gives
its caller an error, never a result; and a caller killed (``kill -9``) right after the relaxed
start loses nothing: another worker resumes the run and runs each step once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest

import wflo
from wflo import _config as config
from wflo._errors import LeaseLost
from wflo.approvals import approvals
from wflo.engine import Worker, current_run
from wflo.store import Store
from wflo.testing import LLMServer, Reply

HERE = Path(__file__).parent

_LOG = """
CREATE TABLE commit_modes (id bigserial PRIMARY KEY, tbl text, op text, what text, mode text);
CREATE FUNCTION log_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO commit_modes (tbl, op, what, mode)
    VALUES (TG_TABLE_NAME, TG_OP, coalesce(to_jsonb(NEW)->>'type', to_jsonb(NEW)->>'status', ''),
            current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
"""
_TABLES = ("runs", "events", "reservations", "approvals", "approval_votes")


def _install_log(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_LOG)
        for table in _TABLES:
            conn.execute(
                f"CREATE CONSTRAINT TRIGGER log_mode AFTER INSERT OR UPDATE ON {table} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION log_commit_mode()"
            )


def _modes(store: Store) -> list[tuple[str, str, str, str]]:
    """(table, operation, event type or status, synchronous_commit) of each row committed since the last call."""
    rows = store.read("SELECT id, tbl, op, what, mode FROM commit_modes ORDER BY id")
    store.write(lambda cur: store.execute(cur, "DELETE FROM commit_modes"))
    return [tuple(r[1:]) for r in rows]  # type: ignore[misc]


@pytest.fixture
def pg_store(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent-owner")
    config.configure(database=pg_url, lease_seconds=5.0, poll_interval=0.05)
    store = config.get_store()
    store.ensure_schema()
    _install_log(pg_url)
    try:
        yield store
    finally:
        config.reset()


@wflo.step
def one(i: int) -> int:
    return i + 1


@wflo.workflow(name="tests.commit_modes.steps")
def two_steps(i: int) -> int:
    return one(one(i))


@wflo.tool(approval=wflo.Approval(approvers=["role:finance"], timeout="1h"))
def refund(amount: float) -> str:
    """Refund."""
    return f"refunded {amount}"


@wflo.workflow(name="tests.commit_modes.refunds")
def refunds(amount: float) -> str:
    return refund(amount)


@pytest.mark.postgres
def test_a_run_started_by_its_caller_starts_relaxed_and_ends_synchronously(pg_store: Store) -> None:
    assert two_steps.run(1) == 3
    assert _modes(pg_store) == [
        ("runs", "INSERT", "running", "off"),
        ("events", "INSERT", "run.created", "off"),
        ("events", "INSERT", "run.started", "off"),
        ("runs", "UPDATE", "running", "on"),
        ("events", "INSERT", "call.completed", "on"),
        ("runs", "UPDATE", "running", "on"),
        ("events", "INSERT", "call.completed", "on"),
        ("runs", "UPDATE", "succeeded", "on"),
        ("events", "INSERT", "run.completed", "on"),
    ]
    # The server's own setting is untouched: the next transaction on the pooled connection commits as before.
    assert pg_store.read("SELECT current_setting('synchronous_commit')")[0][0] == "on"


@pytest.mark.postgres
def test_enqueue_and_a_claim_are_synchronous_the_marker_relaxed(pg_store: Store) -> None:
    handle = two_steps.start(1)
    assert _modes(pg_store) == [
        ("runs", "INSERT", "queued", "on"),
        ("events", "INSERT", "run.created", "on"),
    ]
    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=1.0)
    assert handle.result(timeout=5) == 3
    assert _modes(pg_store) == [
        ("runs", "UPDATE", "running", "on"),  # the claim: synchronous (Commit modes)
        ("runs", "UPDATE", "running", "off"),  # run.started, alone
        ("events", "INSERT", "run.started", "off"),
        ("runs", "UPDATE", "running", "on"),
        ("events", "INSERT", "call.completed", "on"),
        ("runs", "UPDATE", "running", "on"),
        ("events", "INSERT", "call.completed", "on"),
        ("runs", "UPDATE", "succeeded", "on"),
        ("events", "INSERT", "run.completed", "on"),
    ]


@pytest.mark.postgres
def test_a_reservation_is_synchronous(pg_store: Store) -> None:
    with LLMServer() as llm:
        llm.responder = lambda r: Reply("fine", output_tokens=2)
        client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)

        @wflo.workflow(name="tests.commit_modes.guarded", budget=wflo.Budget(usd="10"))
        def guarded() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}])

        try:
            guarded()
        finally:
            client.close()
    modes = _modes(pg_store)
    reservations = [m for m in modes if m[0] == "reservations"]
    assert reservations and {m[3] for m in reservations} == {"on"}, modes
    # Only the start is relaxed.
    assert {m for m in modes if m[3] == "off"} == {
        ("runs", "INSERT", "running", "off"),
        ("events", "INSERT", "run.created", "off"),
        ("events", "INSERT", "run.started", "off"),
    }, modes


@pytest.mark.postgres
def test_an_approval_request_and_decision_are_synchronous_the_resume_relaxed(pg_store: Store) -> None:
    approvals.grant("user:fin1", "finance")
    handle = refunds.start(500.0)
    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=1.0)
    assert handle.status() == "waiting"
    requested = _modes(pg_store)
    assert ("approvals", "INSERT", "pending", "on") in requested, requested
    assert ("events", "INSERT", "run.waiting", "on") in requested, requested
    marker = requested.index(("runs", "UPDATE", "running", "off"))  # run.started, alone
    assert requested[marker - 1] == ("runs", "UPDATE", "running", "on"), requested  # the claim: synchronous
    assert [m for m in requested if m[3] != "on"] == [
        ("runs", "UPDATE", "running", "off"),  # run.started, alone
        ("events", "INSERT", "run.started", "off"),
    ], requested

    (req,) = approvals.list(run_id=handle.id)
    approvals.approve(req.id, principal="user:fin1", action_hash=req.action_hash)
    decided = _modes(pg_store)
    assert decided and {m[3] for m in decided} == {"on"}, decided
    assert any(m[0] == "approvals" and m[2] == "approved" for m in decided), decided

    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=1.0)
    assert handle.result(timeout=5) == "refunded 500.0"
    resumed = _modes(pg_store)
    assert resumed[:3] == [
        ("runs", "UPDATE", "running", "on"),  # the claim: synchronous (Commit modes)
        ("runs", "UPDATE", "running", "off"),  # run.resumed, alone
        ("events", "INSERT", "run.resumed", "off"),
    ], resumed
    assert {m[3] for m in resumed[3:]} == {"on"}, resumed


@pytest.mark.postgres
def test_a_store_call_inside_a_callers_transaction_does_not_relax_it(pg_store: Store) -> None:
    def fn(cur: Any) -> None:
        pg_store.execute(cur, "UPDATE runs SET priority = 1 WHERE id = ?", ("outer",))
        pg_store.create_run(run_id="inner", workflow="w", input={}, owner="o")  # on the caller's connection

    pg_store.create_run(run_id="outer", workflow="w", input={})
    _modes(pg_store)
    pg_store.write(fn)
    assert _modes(pg_store) == [
        ("runs", "UPDATE", "queued", "on"),
        ("runs", "INSERT", "running", "on"),
        ("events", "INSERT", "run.created", "on"),
        ("events", "INSERT", "run.started", "on"),
    ]


def _forget_this_run() -> None:
    """What a server crash does to a relaxed start that no synchronous commit followed: the
    run is gone (simulated by deleting it)."""
    store = config.get_store()
    ctx = current_run()
    assert ctx is not None
    run_id = ctx.run_id

    def forget(cur: Any) -> None:
        if store.dialect == "postgresql":  # the tables' owner may delete events so
            store.execute(cur, "SELECT set_config('wflo.prune', 'on', true)")
        store.execute(cur, "DELETE FROM events WHERE chain = ?", (run_id,))
        store.execute(cur, "DELETE FROM runs WHERE id = ?", (run_id,))

    store.write(forget)


@wflo.workflow(name="tests.commit_modes.lost")
def lost_start(i: int) -> int:
    _forget_this_run()
    return one(i)


forget_child = [True]


@wflo.workflow(name="tests.commit_modes.child")
def child(i: int) -> int:
    if forget_child:
        forget_child.clear()
        _forget_this_run()
    return one(i)


@wflo.workflow(name="tests.commit_modes.parent")
def parent(i: int) -> int:
    return child(i) + one(10)


def test_a_lost_start_gives_its_caller_an_error_never_a_result(configured: str) -> None:
    with pytest.raises(LeaseLost):
        lost_start.options(id="lost-1").run(1)
    store = config.get_store()
    assert store.read("SELECT count(*) FROM runs WHERE id = ?", ("lost-1",))[0][0] == 0
    # The caller may simply run it again (same id): a new run, whose steps run.
    assert two_steps.options(id="lost-1").run(1) == 3


def test_a_lost_child_start_fails_the_parents_caller_not_the_parent(configured: str) -> None:
    forget_child[:] = [True]
    with pytest.raises(LeaseLost):
        parent.options(id="parent-1").run(1)
    store = config.get_store()
    run = store.get_run("parent-1")
    # The parent recorded nothing of the child (a lost lease is no result of the call) and is
    # not failed: it is resumed (here by its caller again; else by a worker when its lease lapses).
    assert run.status == "running"
    assert [e.type for e in store.events("parent-1")] == ["run.created", "run.started"]
    assert parent.options(id="parent-1").run(1) == 13
    (kid,) = store.list_runs(parent_id="parent-1")
    assert kid.status == "succeeded" and kid.output == 2


def test_a_caller_killed_right_after_the_start_loses_nothing(store_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.log"
    started = tmp_path / "started"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": store_url, "WFLO_LEASE_SECONDS": "1", "WFLO_POLL_INTERVAL": "0.05",
                "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "commitapp.py"), "killed-1"],
        env={**env, "COMMITAPP_EFFECTS": str(effects), "COMMITAPP_STARTED": str(started)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    # The start was committed (relaxed) and the process died before any other commit: the
    # server has it all the same.
    config.configure(database=store_url, lease_seconds=1.0, poll_interval=0.05)
    store = config.get_store()
    run = store.get_run("killed-1")
    assert run.status == "running" and [e.type for e in store.events("killed-1")] == ["run.created", "run.started"]
    worker = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "worker", "-i", "commitapp", "--idle-exit", "1.5", "-q", "-c", "1"],
        env={**env, "COMMITAPP_EFFECTS": str(effects)}, cwd=HERE, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    run = store.get_run("killed-1")
    assert run.status == "succeeded" and run.output == 3
    assert sorted(effects.read_text().split()) == ["step-0", "step-1", "step-2"]
    assert run.attempts == 2  # the killed caller's, then the worker's
    assert [e.type for e in store.events("killed-1")] == [
        "run.created", "run.started", "call.completed", "call.completed", "call.completed", "run.completed",
    ]  # fmt: skip


@pytest.mark.postgres
def test_a_heartbeat_commits_synchronously(pg_store: Store) -> None:
    """A renewal lost in a server crash would let its worker trust a lease the store has not
    got (the engine starts calls without asking while its lease looks fresh)."""
    pg_store.create_run(run_id="beat", workflow="w", input={}, owner="me", lease_seconds=30)
    _modes(pg_store)
    assert pg_store.heartbeat("me", ["beat"], 30) == {"beat": False}
    assert _modes(pg_store) == [("runs", "UPDATE", "running", "on")]
