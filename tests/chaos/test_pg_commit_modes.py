"""A real PostgreSQL crash against wflo's relaxed commits (issue 20; "Commit modes" in
``wflo.store._postgres``).

A run started by its caller commits its start with ``synchronous_commit = off``. Here the
server is crashed (``pg_ctl -m immediate stop``) right after such a start, before the run made
any other commit, on a private cluster whose WAL writer flushes only every 10 s: the start is
lost, and the caller, whose body goes on, gets ``LeaseLost`` from its next write, never a
result. What committed synchronously before the crash (an enqueued run, a finished run)
survives it. A worker's claim is synchronous and survives, so no other worker takes the run;
its relaxed ``run.started`` marker is lost, the worker's next write is refused, the run is
claimed again once the lease lapses and its step journaled once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from test_pg_chaos import Cluster, private_cluster

import wflo
from wflo import _config
from wflo._errors import LeaseLost


class _SyncCluster(Cluster):
    """Synchronous commits (``fsync=off`` is enough: an immediate stop keeps what reached the
    kernel, and loses the WAL still in the server's buffers); the WAL writer wakes every 10 s
    and autovacuum is off, so no other commit flushes the relaxed start before the crash."""

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=on -c wal_writer_delay=10000 -c autovacuum=off")  # fmt: skip
        self.ctl("-l", f"{self.datadir}/log", "-o", opts, "start")


@pytest.fixture
def sync_pg() -> Iterator[Cluster]:
    with private_cluster(_SyncCluster, "wflo-commit-pg-") as cluster:
        try:
            yield cluster
        finally:
            _config.reset()


ran: list[int] = []


@wflo.step
def effect(i: int) -> int:
    ran.append(i)
    return i + 1


@wflo.workflow(name="chaos.commit.queued")
def queued() -> int:
    return effect(0)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_server_crash_after_a_relaxed_start_gives_the_caller_an_error_never_a_result(sync_pg: Cluster) -> None:
    _config.configure(database=sync_pg.url, lease_seconds=30.0, poll_interval=0.05)  # no heartbeat before the crash
    store = _config.get_store()
    handle = queued.start()  # synchronous: .start() returns a handle a worker must find
    assert queued.options(id="done").run() == 1  # its end is synchronous

    started, go = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    @wflo.workflow(name="chaos.commit.started")
    def body() -> int:
        started.set()
        assert go.wait(120)
        return effect(1)

    def caller() -> None:
        try:
            outcome["result"] = body.options(id="lost").run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(60)
    sync_pg.restart("immediate")  # a crash: no shutdown checkpoint, the WAL buffers are gone
    go.set()
    thread.join(120)

    assert store.read("SELECT count(*) FROM runs WHERE id = ?", ("lost",))[0][0] == 0, "the start was flushed"
    assert "result" not in outcome and isinstance(outcome.get("error"), LeaseLost), outcome
    assert ran == [0, 1]  # the body's step ran once; its record was refused, as the run was gone
    # What committed synchronously survived the crash.
    assert store.get_run(handle.id).status == "queued"
    done = store.get_run("done")
    assert done.status == "succeeded" and done.output == 1
    # The caller may run it again under the same id.
    ran.clear()
    assert body.options(id="lost").run() == 2 and ran == [1]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_server_crash_after_a_claim_keeps_its_lease_so_no_other_worker_starts_the_run(sync_pg: Cluster) -> None:
    """A claim is synchronous: after the crash the run is still the claimer's, and a second
    worker takes nothing. (When claims were relaxed, the claim was lost, the second worker
    claimed the run and ran its step, and the first, trusting its lease, ran it too.)"""
    from wflo.engine import Worker

    # The first heartbeat (a synchronous commit, which would flush the relaxed marker) comes
    # 3 s after the claim: well after the crash.
    _config.configure(database=sync_pg.url, lease_seconds=9.0, poll_interval=0.05)
    store = _config.get_store()
    started, go = threading.Event(), threading.Event()
    executions: list[int] = []
    ran.clear()

    @wflo.workflow(name="chaos.commit.claimed")
    def claimed() -> int:
        executions.append(len(executions))
        if len(executions) == 1:
            started.set()
            assert go.wait(120)
        return effect(5)

    handle = claimed.start()  # synchronous
    first = Worker(concurrency=1, workflows=None)
    worker = threading.Thread(target=lambda: first.run(max_runs=1, idle_timeout=30))
    worker.start()
    assert started.wait(60)  # claimed (synchronous), then run.started (relaxed): nothing else since
    sync_pg.restart("immediate")

    record = store.get_run(handle.id)
    assert (record.status, record.lease_owner) == ("running", first.owner), "the claim was lost with the server"
    second = Worker(concurrency=1, workflows=None)
    second.run(max_runs=1, idle_timeout=1.5)
    assert second.completed == 0 and executions == [0], "a second worker took the run its first claimer holds"

    go.set()
    worker.join(180)
    assert not worker.is_alive()
    assert handle.result(timeout=10) == 6
    # The first execution's step ran under its lease, but its record was refused (the relaxed
    # marker before it was lost, so the run's head moved back); the lease lapsed, the run was
    # claimed again and its step ran and was recorded once: at least once, journaled once,
    # never on two workers at once.
    assert ran == [5, 5] and executions == [0, 1]
    types = [e.type for e in store.events(handle.id)]
    # The second execution is the run's second attempt (the first claim survived): it resumes.
    assert types == ["run.created", "run.resumed", "call.completed", "run.completed"], types
    assert store.get_run(handle.id).attempts == 2
