"""on_loop="pause": a loop detected before a call makes the run wait for a person, durably."""

from __future__ import annotations

import pytest

import wflo
from wflo import UserError, _config

searched: list[str] = []


@wflo.tool
def search(query: str) -> str:
    searched.append(query)
    return f"results for {query}"


@wflo.workflow(name="pausing-agent", guards=wflo.LoopGuard(max_repeats=2), on_loop="pause")
def stubborn(turns: int) -> int:
    for _ in range(turns):
        search("otters")
    return len(searched)


def _serve() -> None:
    wflo.engine.Worker(concurrency=1).run(max_runs=1, idle_timeout=2)


def _request(run_id: str) -> wflo.approvals.ApprovalRequest:  # type: ignore[name-defined]
    pending = [r for r in wflo.approvals.list(run_id=run_id) if r.status == "pending"]
    assert len(pending) == 1, pending
    return pending[0]


def test_allowed_the_run_goes_on_and_counts_afresh(store_url: str) -> None:
    wflo.configure(database=store_url)
    searched.clear()
    handle = stubborn.start(5)
    _serve()
    assert handle.status() == "waiting" and len(searched) == 2  # the third identical call waits
    request = _request(handle.id)
    assert "max_repeats" in request.message
    wflo.approvals.approve(request.id, principal="user:reviewer", action_hash=request.action_hash, via="test")
    _serve()
    # Allowed at the third call: it runs, and counting restarts there, so the fifth waits again.
    assert handle.status() == "waiting" and len(searched) == 4
    second = _request(handle.id)
    wflo.approvals.approve(second.id, principal="user:reviewer", action_hash=second.action_hash, via="test")
    _serve()
    assert handle.result(timeout=10) == 5
    events = list(_config.get_store().events(handle.id))
    paused = [e.data["loop_pause"]["detector"] for e in events if e.type == "call.completed" and "loop_pause" in e.data]
    assert paused == ["max_repeats", "max_repeats"]
    assert not [e for e in events if e.type == "loop.stopped"]


def test_refused_the_run_stops_with_the_evidence(store_url: str) -> None:
    wflo.configure(database=store_url)
    searched.clear()
    handle = stubborn.start(5)
    _serve()
    request = _request(handle.id)
    wflo.approvals.reject(request.id, principal="user:reviewer", reason="it is looping", via="test")
    _serve()
    assert handle.status() == "stopped" and len(searched) == 2
    stops = [e.data for e in _config.get_store().events(handle.id) if e.type == "loop.stopped"]
    assert stops and stops[0]["detector"] == "max_repeats"


def test_on_loop_must_be_stop_or_pause() -> None:
    with pytest.raises(UserError, match="on_loop must be 'stop' or 'pause'"):
        wflo.workflow(name="bad-on-loop", on_loop="ignore")(lambda: None)
