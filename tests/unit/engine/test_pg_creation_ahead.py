"""A run created in-process with a generated id on PostgreSQL: its creation is sent without
waiting for the answer, read at the run's first call or with its end (issue 20; see
``wflo.store._ahead``). An empty workflow costs one round trip; a call never has an effect
before the creation's answer; the creation's errors keep their classes; a given id still finds
the existing run without running the body."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import wflo
from wflo import _config as config
from wflo._config import get_store
from wflo.store._postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:
    config.configure(database=f"{pg_url}&pool_size=2", lease_seconds=5.0, poll_interval=0.05)
    store = get_store()
    assert isinstance(store, PostgresStore)
    yield store
    config.reset()


def _answers_awaited(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each time the client waits for the server's answer (a round trip), by generator name;
    a flush of what was sent (``send``) waits for no answer and is not counted."""
    waited: list[str] = []
    wait = psycopg.Connection.wait

    def counted(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(gen, "__name__", "?")
        if name != "send":
            waited.append(name)
        return wait(self, gen, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "wait", counted)
    return waited


@wflo.workflow
def empty() -> int:
    return 1


@wflo.workflow
async def aempty() -> int:
    return 2


ran: list[str] = []


@wflo.step
def effect(x: int) -> int:
    ran.append(f"step {x}")
    return x


@wflo.workflow
def one_step() -> int:
    ran.append("body")
    return effect(3)


def test_an_empty_workflow_is_one_round_trip(pg: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Cold: the statements are prepared in the same pipeline, on each pooled connection.
    waited = _answers_awaited(monkeypatch)
    assert empty() == 1
    assert len(waited) == 1, waited
    for _ in range(3):
        waited.clear()
        assert asyncio.run(aempty.arun()) == 2
        assert len(waited) == 1, waited
        waited.clear()
        assert empty() == 1
        assert len(waited) == 1, waited
    runs = pg.list_runs(workflow=empty.name)
    assert [r.status for r in runs] == ["succeeded"] * 4
    assert [e.type for e in pg.events(runs[0].id)] == ["run.created", "run.started", "run.completed"]


def test_a_step_never_runs_before_its_run_exists(pg: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    one_step()
    ran.clear()
    # The creation fails on the server (its statement refused: a failing constraint stands in).
    with pg._connection() as conn:
        conn.execute(f"ALTER TABLE runs ADD CONSTRAINT no_runs CHECK (workflow <> {_quote(one_step.name)}) NOT VALID")
    try:
        with pytest.raises(psycopg.errors.CheckViolation):
            one_step()
    finally:
        with pg._connection() as conn:
            conn.execute("ALTER TABLE runs DROP CONSTRAINT no_runs")
    assert ran == ["body"]  # the body's code before its first call ran; the step did not
    assert len(pg.list_runs(workflow=one_step.name)) == 1  # only the first run: nothing written


def test_a_creation_whose_connection_is_killed_is_made_again_before_the_step(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_step()
    ran.clear()
    seen: list[bool] = []
    from wflo.store import _ahead

    answers = _ahead._answers

    def lost(generators: Any, pgconn: Any, n: int) -> Any:
        # The backend holding the answer dies before it is read: libpq reports a lost connection.
        with psycopg.connect(pg.url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pgconn.backend_pid,))
        yield from answers(generators, pgconn, 0)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def step_sees_run(x: int) -> int:
        seen.append(bool(pg.list_runs(workflow=one_step.name, status="running")))
        return x

    made_again: list[str] = []
    create_run = PostgresStore.create_run

    def counted(self: PostgresStore, **kwargs: Any) -> Any:
        made_again.append(kwargs["run_id"])
        return create_run(self, **kwargs)

    monkeypatch.setattr(_ahead, "_answers", lost)
    monkeypatch.setattr(PostgresStore, "create_run", counted)
    monkeypatch.setattr(effect, "fn", step_sees_run)
    assert one_step() == 3
    assert len(made_again) == 1  # the answer was lost with its connection: created again (retried)
    assert seen == [True]  # the step ran only once the run existed
    runs = pg.list_runs(workflow=one_step.name)
    assert [r.status for r in runs] == ["succeeded", "succeeded"]


def test_a_given_id_finds_the_existing_run_without_running_the_body(pg: PostgresStore) -> None:
    assert one_step.options(id="given-1").run() == 3
    ran.clear()
    assert one_step.options(id="given-1").run() == 3
    assert ran == []


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_a_body_busy_before_its_first_call_gives_its_connection_back_at_the_next_heartbeat(
    pg_url: str,
) -> None:
    from wflo.engine._context import current_run

    config.configure(database=f"{pg_url}&pool_size=2", lease_seconds=0.6, poll_interval=0.05)
    try:
        pending: list[bool] = []

        @wflo.workflow
        def busy() -> int:
            ctx = current_run()
            assert ctx is not None
            pending.append(ctx.ahead is not None)
            time.sleep(0.8)  # non-wflo work: the heartbeat (every 0.2 s) reads the answer meanwhile
            pending.append(ctx.ahead is not None)
            return 4

        assert busy() == 4
        assert pending == [True, False]
    finally:
        config.reset()
