"""A new user's mistakes with the engine's public API: each is a one-line ``wflo`` error that
names the thing and the fix, raised at the decorator or before a run is created, never an
``AttributeError`` from inside or a run that fails later (sweep of the public API)."""

from __future__ import annotations

import asyncio
import datetime
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from test_serialize_limits import _one_line, _runs

import wflo
from wflo import _config
from wflo.engine._workflow import registered_workflows


@pytest.fixture
def sqlite_configured(sqlite_url: str) -> Iterator[str]:
    _config.configure(database=sqlite_url, lease_seconds=5.0, poll_interval=0.05)
    yield sqlite_url
    _config.reset()


# ---------------------------------------------------------------- decorating the wrong thing
def _generator() -> Any:
    yield 1


async def _agenerator() -> Any:
    yield 1


class _Agent:
    def __call__(self) -> int:
        return 1


@pytest.mark.parametrize("decorator", [wflo.workflow, wflo.step, wflo.tool])
@pytest.mark.parametrize(
    ("target", "says"),
    [
        (_generator, "cannot decorate the generator function '_generator'"),
        (_agenerator, "cannot decorate the generator function '_agenerator'"),
        (_Agent, r"decorates a function, not a class \(_Agent\)"),
        (5, r"decorates a function, got 5 \(int\)"),
        ("research", r"got the text 'research'; to name it: @wflo\.\w+\(name='research'\)"),
    ],
)
def test_what_cannot_be_a_workflow_step_or_tool_is_refused_at_the_decorator(
    decorator: Any, target: Any, says: str
) -> None:
    # A generator's (or class's) result used to fail each run later, as a SerializationError
    # of its result after the run was created; 5 or "name" raised AttributeError.
    with pytest.raises(wflo.UserError, match=says) as info:
        decorator(target)
    _one_line(info.value)


def test_a_lambda_workflow_needs_its_own_name(sqlite_configured: str) -> None:
    # Two lambdas had the same default name (module.<lambda>): the second silently replaced
    # the first in the registry, and a worker resumed the first's runs with the second.
    before = dict(registered_workflows())
    with pytest.raises(wflo.UserError, match=r"lambda workflow needs a name of its own"):
        wflo.workflow(lambda x: x * 2)
    assert registered_workflows() == before
    double = wflo.workflow(name="misuse.double")(lambda x: x * 2)
    triple = wflo.workflow(name="misuse.triple")(lambda x: x * 3)
    assert double.run(2) == 4 and triple.run(2) == 6


# ---------------------------------------------------------------------- start options
@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"id": "a\x00b"}, r"run id must be printable text.*'\\x00'"),
        ({"id": "x" * 10_000}, r"run id must be at most 255 characters, got 10000"),
        ({"id": ""}, r"run id must be a non-empty name"),
        ({"id": 42}, r"run id must be a non-empty name, got 42"),
        ({"id": "a\nb"}, r"run id must be printable text"),
        ({"tenant": "acme\u202egnp.exe"}, r"tenant must be printable text.*'\\u202e'"),
        ({"tenant": "a\x00b"}, r"tenant must be printable text"),
        ({"tenant": ""}, r"tenant must be a non-empty name"),
        ({"tenant": 5}, r"tenant must be a non-empty name, got 5"),
        ({"tenant": "a:b"}, r"tenant must be a name without ':'"),
        ({"tenant": " acme"}, r"tenant must not begin or end with spaces"),
        ({"tenant": "acme/x"}, r"tenant must be a name without '/'"),  # it would read as below tenant acme
    ],
)
def test_bad_run_ids_and_tenants_are_refused_before_a_run_exists(
    sqlite_configured: str, options: dict[str, Any], says: str
) -> None:
    @wflo.workflow(name="misuse.options")
    def flow(x: int) -> int:
        return x

    with pytest.raises(wflo.UserError, match=says) as info:
        flow.options(**options).run(1)
    _one_line(info.value)
    assert _runs() == 0


def test_odd_but_printable_unicode_names_are_kept(sqlite_configured: str) -> None:
    @wflo.workflow(name="misuse.unicode")
    def flow() -> str:
        return "ok"

    run_id, tenant = "Bestellung-\u00c4-\uff14\uff12", "\uff21\uff23\uff2d\uff25-e\u0301"  # fullwidth, combining
    handle = flow.options(id=run_id, tenant=tenant).start()
    assert handle.id == run_id
    assert _config.get_store().get_run(handle.id).tenant == tenant
    # A LangGraph thread id becomes the run id: "user-1/conv-2" is kept as it was.
    assert flow.options(id="user-1/conv-2").run() == "ok"


def test_an_unknown_start_option_names_the_close_match(sqlite_configured: str) -> None:
    @wflo.workflow(name="misuse.unknown_option")
    def flow() -> int:
        return 1

    # It was a TypeError from the dataclass: RunOptions.__init__() got an unexpected keyword.
    with pytest.raises(
        wflo.errors.OptionError,
        match=r"misuse\.unknown_option\.options\(\) got an unknown option 'idd'; did you mean 'id'\?",
    ):
        flow.options(idd="x")


def test_scope_refuses_names_postgres_cannot_store_or_the_panel_would_disguise() -> None:
    with pytest.raises(wflo.UserError, match=r"scope tenant must be printable text"), wflo.scope(tenant="a\x00b"):
        pass
    with pytest.raises(wflo.UserError, match=r"scope agent must be at most 255"), wflo.scope(agent="x" * 300):
        pass
    with pytest.raises(wflo.UserError, match=r"scope tenant must be a name without '/'"), wflo.scope(tenant="a/b"):
        pass


# ------------------------------------------------------------------- values in the journal
_UNSERIALIZABLE = pytest.mark.parametrize(
    ("value", "kind"),
    [({1, 2}, "set"), (b"ab", "bytes"), (datetime.datetime(2026, 1, 1), "datetime"), (float("nan"), "Out of range")],
)


@_UNSERIALIZABLE
def test_an_unserializable_workflow_input_names_the_argument(sqlite_configured: str, value: Any, kind: str) -> None:
    @wflo.workflow(name="misuse.inputs")
    def flow(order: str, extra: Any) -> str:
        return order

    with pytest.raises(wflo.errors.SerializationError, match=rf"input of step 'misuse\.inputs': args\[1\]: .*{kind}"):
        flow.run("A-1", value)
    assert _runs() == 0


@_UNSERIALIZABLE
def test_an_unserializable_step_input_names_the_argument(sqlite_configured: str, value: Any, kind: str) -> None:
    @wflo.step
    def record(order: str, *, when: Any = None) -> str:
        return order

    @wflo.workflow(name="misuse.step_inputs")
    def flow() -> str:
        return record("A-1", when=value)

    with pytest.raises(wflo.errors.SerializationError, match=rf"input of step '.*record': kwargs\['when'\]: .*{kind}"):
        flow.run()


def test_an_unserializable_output_names_where_it_is(sqlite_configured: str) -> None:
    with socket.socket() as sock:

        @wflo.step
        def connect() -> dict[str, Any]:
            return {"ok": True, "items": [1, 2, sock]}

        @wflo.workflow(name="misuse.outputs")
        def flow() -> Any:
            return connect()

        with pytest.raises(
            wflo.errors.SerializationError, match=r"output of step '.*connect': \['items'\]\[2\]: .*socket"
        ):
            flow.run()


def test_an_async_step_called_from_a_sync_workflow_says_await(sqlite_configured: str) -> None:
    @wflo.step
    async def fetch(x: int) -> int:
        return x

    @wflo.workflow(name="misuse.sync_calls_async")
    def flow(x: int) -> Any:
        return fetch(x)

    # It was "Object of type coroutine is not JSON serializable", and a RuntimeWarning at exit.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            wflo.errors.SerializationError, match=r"it is a coroutine .*called without await\); await it"
        ):
            flow.run(1)

    @wflo.workflow(name="misuse.async_awaits")
    async def fine(x: int) -> int:
        return await fetch(x)

    assert asyncio.run(fine.arun(2)) == 2


# ------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("options", "says"),
    [
        # The lease's expiry date overflowed at the first run: OverflowError from datetime.
        (
            {"lease_seconds": 1e12},
            r"lease_seconds=1000000000000\.0 is not a valid .* at most 3,153,600,000 \(a century\)",
        ),
        ({"reservation_ttl": 1e12}, r"reservation_ttl=.* at most 3,153,600,000"),
        ({"session_hours": 1e9}, r"session_hours=.* at most 876,000"),
        ({"principal": "user:a\x00"}, r"principal='user:a\\x00' is not a valid principal setting; accepted: printable"),
    ],
)
def test_settings_that_break_a_run_later_are_refused_by_configure(
    sqlite_url: str, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(wflo.errors.ConfigurationError, match=says):
        wflo.configure(database=sqlite_url, **options)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlte:///wflo.db", r"unsupported database URL 'sqlte:///wflo\.db'"),
        ("postgress://localhost/wflo", r"unsupported database URL"),
        ("sqlite://wflo.db", r"did you mean sqlite:///wflo\.db"),
        ("sqlite:///a%00b.db", r"contains a NUL character"),
    ],
)
def test_a_mistyped_database_url_is_refused_by_configure(url: str, says: str, tmp_path: Any) -> None:
    # It was accepted, and refused only at the first run (a NUL: ValueError from sqlite3).
    with pytest.raises(wflo.errors.ConfigurationError, match=says):
        wflo.configure(database=url)
    assert _config.opened_store() is None


# ------------------------------------------------------------------------ replay and nesting
def test_a_step_gives_the_same_types_live_as_on_replay(sqlite_configured: str) -> None:
    # A step's result reached the workflow as returned the first time (a tuple, int keys) but
    # as JSON read it back on replay (a list, text keys): code like ``prices[1]`` worked, then
    # raised KeyError after a crash, and a branch on the type took the other way.
    seen: list[Any] = []
    crash = {"now": True}

    @wflo.step
    def quote() -> Any:
        return (1, 2), {1: "a"}

    @wflo.step
    def later() -> None:
        if crash["now"]:
            raise KeyboardInterrupt  # stands in for the process dying here

    @wflo.workflow(name="misuse.replay_types")
    def flow() -> str:
        pair, prices = quote()
        seen.append((type(pair).__name__, list(prices)))
        later()
        return "done"

    with pytest.raises(KeyboardInterrupt):
        flow.options(id="replay-types").run()
    crash["now"] = False
    assert wflo.resume("replay-types") == "done"
    assert seen == [("list", ["1"]), ("list", ["1"])]


def test_a_workflow_calling_itself_without_end_is_stopped_with_a_user_error(sqlite_configured: str) -> None:
    # It broke at Python's recursion limit with a RecursionError from inside wflo.
    @wflo.workflow(name="misuse.forever")
    def forever(n: int) -> int:
        return forever(n + 1)  # type: ignore[no-any-return]

    with pytest.raises(wflo.UserError, match=r"would run 51 child workflows deep \(at most 50\): does it call itself"):
        forever.run(0)

    @wflo.workflow(name="misuse.aforever")
    async def aforever(n: int) -> int:
        return await aforever.arun(n + 1)  # type: ignore[no-any-return]

    with pytest.raises(wflo.UserError, match=r"would run 51 child workflows deep"):
        asyncio.run(aforever.arun(0))

    @wflo.workflow(name="misuse.countdown")
    def countdown(n: int) -> int:
        return 0 if n == 0 else countdown(n - 1) + 1  # type: ignore[no-any-return]

    assert countdown.run(10) == 10
    assert countdown.run(10) == 10  # the depth was given back


# ------------------------------------------------------------------ waiting, resuming, init
@pytest.mark.parametrize("timeout", [float("nan"), -1, float("inf"), "5s", True])
def test_a_nonsense_result_timeout_is_refused(sqlite_configured: str, timeout: Any) -> None:
    @wflo.workflow(name="misuse.queued")
    def flow() -> int:
        return 1

    handle = flow.start()  # queued: nothing runs it
    # NaN never compares past the clock: result(timeout=nan) waited for ever.
    with pytest.raises(wflo.UserError, match=r"timeout must be a finite number of seconds >= 0"):
        handle.result(timeout=timeout)
    with pytest.raises(wflo.UserError, match=r"timeout must be a finite number of seconds >= 0"):
        asyncio.run(handle.aresult(timeout=timeout))


@pytest.mark.parametrize("run_id", [None, 5])
def test_resume_takes_a_run_id(sqlite_configured: str, run_id: Any) -> None:
    # It was TypeError: object of type 'NoneType' has no len().
    with pytest.raises(wflo.UserError, match=r"wflo\.resume\(\) takes a run id \(text\)"):
        wflo.resume(run_id)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"tenant": "a:b"}, r"wflo\.init\(tenant=\.\.\.\) must be a name without ':'"),
        ({"tenant": "a\x00b"}, r"wflo\.init\(tenant=\.\.\.\) must be printable text"),
        ({"tenant": "acme/x"}, r"wflo\.init\(tenant=\.\.\.\) must be a name without '/'"),
        ({"name": 5}, r"wflo\.init\(name=\.\.\.\) must be a non-empty name, got 5"),
        ({"name": ""}, r"wflo\.init\(name=\.\.\.\) must be a non-empty name"),
    ],
)
def test_init_checks_its_names_before_creating_its_run(
    sqlite_configured: str, options: dict[str, Any], says: str
) -> None:
    # They were stored as given: name=5 as the run's workflow, a tenant with ':' or a NUL.
    with pytest.raises(wflo.UserError, match=says):
        wflo.init(**options)
    assert _runs() == 0


# ----------------------------------------------------------------------- names and queues
@pytest.mark.parametrize("name", ["a\x00b", "a\nb", "x" * 300])
def test_explicit_names_are_checked_at_the_decorator(name: str) -> None:
    # They were kept: a NUL failed the first run on PostgreSQL, a line break split the CLI's lines.
    with pytest.raises(wflo.UserError, match=r"a workflow's name must be"):
        wflo.workflow(name=name)(lambda: 1)
    with pytest.raises(wflo.UserError, match=r"a step's name must be"):
        wflo.step(name=name)(lambda: 1)
    with pytest.raises(wflo.UserError, match=r"a tool's name must be"):
        wflo.tool(name=name)(lambda: 1)
    with pytest.raises(wflo.UserError, match=r"a queue's name must be"):
        wflo.Queue(name)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"priority": 10**30}, r"priority must be a whole number from -2147483648 to 2147483647"),  # OverflowError
        ({"priority": 2**31}, r"priority must be a whole number from"),  # out of PostgreSQL's INTEGER
        ({"partition_key": "a\x00"}, r"partition_key must be printable text"),
        ({"partition_key": "k" * 100_000}, r"partition_key must be at most 255 characters"),
    ],
)
def test_queue_start_options_are_checked_before_a_run_exists(
    sqlite_configured: str, options: dict[str, Any], says: str
) -> None:
    queue = wflo.Queue("misuse.queue")

    @wflo.workflow(name="misuse.queued_flow", queue=queue)
    def flow() -> int:
        return 1

    with pytest.raises(wflo.UserError, match=says):
        flow.options(**options).start()
    assert _runs() == 0


def test_a_worker_given_one_name_as_a_string_serves_that_workflow(configured: str) -> None:
    # Worker(workflows="misuse.one") took each character for a workflow's name: it served
    # nothing and waited; queues="q" the same (each character an undeclared queue).
    from wflo.engine import Worker

    @wflo.workflow(name="misuse.one")
    def one() -> int:
        return 1

    handle = one.start()
    worker = Worker(concurrency=1, workflows="misuse.one")
    assert worker.workflows == ["misuse.one"]
    assert worker.run(max_runs=1, idle_timeout=5) == 1 and handle.result(timeout=5) == 1
    queue = wflo.Queue("misuse-q")
    assert Worker(queues="misuse-q").queues == Worker(queues=queue).queues == ["misuse-q"]
