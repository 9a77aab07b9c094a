"""Leases: a worker that takes back its own lapsed lease does not start a second executor.

Found by the PostgreSQL chaos test: while the database restarted, a worker's heartbeats failed
and its lease lapsed; its own claim loop then claimed the run again under the same owner name
and ran it on a second thread, while the first was still running it. Fencing is on the owner
name, so it could not tell the two apart, and a step ran twice at the same time.
"""

from __future__ import annotations

import threading
import time

import pytest

import wflo
from wflo import _config


def test_a_worker_does_not_run_its_own_run_twice_after_its_lease_lapsed(
    configured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The heartbeats cannot reach the database (as in the chaos test that found this), so none
    # renews the lapsed lease before the claim loop (every 0.05 s) takes it back, or the
    # scenario under test never happens (a long lease alone leaves it to the heartbeat's timing).
    _config.configure(database=configured, lease_seconds=30.0, poll_interval=0.05)

    def unreachable(*args: object, **kwargs: object) -> dict[str, bool]:
        raise ConnectionError("the database is away (test)")

    monkeypatch.setattr(_config.get_store(), "heartbeat", unreachable)
    started: list[int] = []
    release = threading.Event()

    @wflo.step
    def slow(i: int) -> int:
        started.append(i)
        release.wait(10)
        return i

    @wflo.workflow(name="lapsed")
    def lapsed() -> int:
        return slow(1)

    handle = lapsed.options(id="lapsed-1").start()
    worker = wflo.engine.Worker(concurrency=2, workflows=["lapsed"])
    thread = threading.Thread(target=worker.run, kwargs={"idle_timeout": 10})
    thread.start()
    try:
        store = _config.get_store()
        deadline = time.monotonic() + 10
        while not started:
            assert time.monotonic() < deadline, "the worker never started the step"
            time.sleep(0.01)
        # The lease lapses while the step runs (as when heartbeats cannot reach the database).
        store._write("UPDATE runs SET lease_expires_at = ? WHERE id = ?", ("2000-01-01T00:00:00.000000Z", "lapsed-1"))
        deadline = time.monotonic() + 10
        while store.get_run("lapsed-1").lease_expires_at == "2000-01-01T00:00:00.000000Z":
            assert time.monotonic() < deadline, "the lapsed lease was never taken back"
            time.sleep(0.01)
        assert store.get_run("lapsed-1").attempts == 2  # taken back by the claim loop, not a heartbeat
        time.sleep(0.3)  # time for a second executor to reach the step, if one was started
    finally:
        release.set()
        try:
            assert handle.result(timeout=10) == 1
        finally:
            worker.stop()
            thread.join(20)
    assert started == [1], f"the step ran {len(started)} times"


def test_fence_refuses_a_write_after_the_lease_moved(store_url: str) -> None:
    from wflo._errors import LeaseLost
    from wflo.store import open_store

    with open_store(store_url) as store:
        store.create_run(run_id="f1", workflow="w", input={}, owner="a", lease_seconds=30)
        store.write(lambda cur: store.fence(cur, "f1", "a"))
        store._write("UPDATE runs SET lease_owner = ? WHERE id = ?", ("b", "f1"))  # another worker took it
        with pytest.raises(LeaseLost):
            store.write(lambda cur: store.fence(cur, "f1", "a"))
        with pytest.raises(LeaseLost):
            store.write(lambda cur: store.fence(cur, "nope", "a"))


def test_an_append_to_a_run_asked_to_cancel_is_fenced_and_says_so(store_url: str) -> None:
    """The head move's two paths (SQLite: no cancel request, one UPDATE; a cancel request or a
    lost lease, the same fenced UPDATE with RETURNING): each moves the head only under the
    lease and at the expected head, and tells the caller about a cancel request."""
    import pytest

    from wflo._errors import LeaseLost
    from wflo.store import Head, NewEvent, open_store

    with open_store(store_url) as store:
        store.create_run(run_id="c1", workflow="w", input={}, owner="a", lease_seconds=30)
        run = store.get_run("c1")
        head = store.append("c1", Head(run.last_seq, run.last_hash), [NewEvent("step.completed", {})], owner="a")
        assert head.cancel_requested is False
        store.request_cancel("c1")
        stale = Head(run.last_seq, run.last_hash)
        with pytest.raises(LeaseLost):  # asked to cancel and at a stale head: refused
            store.append("c1", stale, [NewEvent("step.failed", {})], owner="a")
        with pytest.raises(LeaseLost):  # asked to cancel and not the owner: refused
            store.append("c1", head, [NewEvent("step.completed", {})], owner="b")
        moved = store.append("c1", head, [NewEvent("step.completed", {})], owner="a")
        assert moved.cancel_requested is True and moved.seq == head.seq + 1
        assert store.get_run("c1").last_seq == moved.seq
        store._write("UPDATE runs SET lease_owner = ? WHERE id = ?", ("b", "c1"))
        with pytest.raises(LeaseLost):
            store.append("c1", moved, [NewEvent("step.completed", {})], owner="a")
        assert [e.seq for e in store.events("c1")][-1] == moved.seq


def test_an_unowned_step_append_is_fenced_on_no_owner_and_the_head(store_url: str) -> None:
    """A step's append with no owner goes through the stores' step path (``_append_step``, as
    an owned one does) and is fenced as ``_move_head`` fences it: only while nobody holds the
    lease and at the expected head; a refusal writes nothing."""
    from wflo._errors import LeaseLost
    from wflo.store import Head, NewEvent, open_store

    with open_store(store_url) as store:
        store.create_run(run_id="u1", workflow="w", input={}, owner="a", lease_seconds=30)
        store._write("UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?", ("u1",))
        run = store.get_run("u1")
        start = Head(run.last_seq, run.last_hash)
        stepped: list[str | None] = []
        real = store._append_step

        def spy(run_id: str, head: Head, new: Head, row: tuple[object, ...], owner: str | None, now: str) -> bool:
            stepped.append(owner)
            return real(run_id, head, new, row, owner, now)

        store._append_step = spy  # type: ignore[method-assign]
        head = store.append("u1", start, [NewEvent("step.completed", {"n": 1})], owner=None)
        assert stepped == [None] and head.seq == start.seq + 1
        with pytest.raises(LeaseLost):  # a stale head (another type: the same one at that head
            # is taken for a retry of the append that committed, and answered with its head)
            store.append("u1", start, [NewEvent("step.failed", {"n": 2})], owner=None)
        store._write("UPDATE runs SET lease_owner = ? WHERE id = ?", ("b", "u1"))
        with pytest.raises(LeaseLost):  # someone holds the lease now
            store.append("u1", head, [NewEvent("step.completed", {"n": 3})], owner=None)
        assert [e.data for e in store.events("u1", after_seq=start.seq)] == [{"n": 1}]
        assert store.get_run("u1").last_seq == head.seq
