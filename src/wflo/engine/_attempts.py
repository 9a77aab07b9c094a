"""Attempts (retry, fallback, replay) written once, run by a synchronous or an asynchronous driver.

The decisions of a guarded operation's attempts (what to send, whether to retry after a
failure and how long to wait, which model to fall back to, what the journal says was decided
before) are written once, as a generator of :class:`Step` objects. The generator never does
I/O itself: it yields a step (``Step("send", request)``, ``Step("sleep", 1.5)``), the driver
performs it and sends back the result, or throws in the error it raised. :func:`drive` performs
steps with plain calls and ``time.sleep``; :func:`adrive` awaits them and uses
``asyncio.sleep``. ``Step("store", fn)`` asks for ``fn()``, a blocking operation on the run's
store (begin or record a call): :func:`drive` calls it, :func:`adrive` awaits it on the store's
own threads (:func:`off_loop`), so an async run never blocks its event loop on the store. The
other operations are methods of an ``io`` object that each caller supplies in a sync and an
async flavour (``send``, ``read``, ``close``, …).

Used by the call boundary (a step's or tool's retries), the ``httpx`` interception (an LLM
call's retries and model fallbacks, each attempt its own journaled call) and the clients whose
answers are read whole (``requests``, ``urllib3``, ``http.client``, ``aiohttp``).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ._context import _lane, current_run

if TYPE_CHECKING:
    from ..store import Store

R = TypeVar("R")


class Step(NamedTuple):
    """One effect an attempt generator asks its driver to perform."""

    op: str
    """``"sleep"`` (``arg``: ``(seconds, check)``, where ``check()`` raises to end the wait early
    and is called at least every :data:`NAP` s), ``"store"`` (call ``arg()``, which touches the
    store), ``"begin"`` (the same for a call's start, whose guards may wait: an async driver
    makes that wait on its loop, see :func:`on_store`), else the name of a method of the
    driver's ``io``."""
    arg: Any = None


Attempts = Generator[Step, Any, R]


NAP = 0.1
"""The longest a ``"sleep"`` step goes without calling its ``check``."""


def _naps(seconds: float, check: Callable[[], None]) -> Iterator[float]:
    """The slices of a ``seconds`` wait, ``check()`` called before each (and at the end)."""
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        yield min(left, NAP)


def _nap(seconds: float, check: Callable[[], None]) -> None:
    for nap in _naps(seconds, check):
        time.sleep(nap)


async def _anap(seconds: float, check: Callable[[], None]) -> None:
    for nap in _naps(seconds, check):
        await asyncio.sleep(nap)


def drive(steps: Attempts[R], io: Any) -> R:
    """Run an attempt generator synchronously: ``io.<op>(arg)`` for each step."""
    try:
        step = next(steps)
        while True:
            try:
                result = None
                if step.op == "sleep":
                    _nap(*step.arg)
                elif step.op in ("store", "begin"):
                    result = step.arg()
                else:
                    result = getattr(io, step.op)(step.arg)
            except BaseException as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class LoopWait(NamedTuple):
    """What a store operation gives back instead of its result when a guard's ``before`` must
    wait (a rate limit's turn) for an async call: the wait is made on the event loop, not on a
    store thread (:func:`on_store`), then ``resume()`` does the rest of the operation."""

    seconds: float
    check: Callable[[], None]
    """Raises to cut the wait short (the run was cancelled or handed back)."""
    resume: Callable[[], Any]
    """The rest of the operation, on the store's threads, after the wait (may wait again)."""
    refuse: Callable[[BaseException], Any]
    """The operation's end when the wait was cut short by ``error`` (raises it)."""


class _Pause(BaseException):
    """Raised by :func:`pause` in an operation :func:`on_store` runs: caught where the
    operation can give a :class:`LoopWait` instead (``_boundary.start_call``)."""

    def __init__(self, seconds: float, check: Callable[[], None]) -> None:
        super().__init__(seconds)
        self.seconds, self.check = seconds, check


_waits_on_loop: contextvars.ContextVar[object] = contextvars.ContextVar("wflo_waits_on_loop", default=None)
"""In an operation :func:`on_store` runs: ``_ANY`` until a call's start claims it (that call,
and no other started inside its guards, may then wait on the loop)."""
_ANY = object()


def claim_loop_waits(call: object) -> None:
    """``call``'s start may wait on the event loop (:func:`pause`) if it is the first call
    started in an operation :func:`on_store` runs; a call started inside its guards may not
    (its caller expects a result, not a ``LoopWait``)."""
    if _waits_on_loop.get() is _ANY:
        _waits_on_loop.set(call)


def pause(call: Any, seconds: float) -> None:
    """A guard's wait before ``call`` (a rate limit's turn): ``seconds`` here, ended early when
    the run is cancelled or handed back (``check_cancelled``, called at least every :data:`NAP`
    s), for a sync call; for an async call begun on the store's threads (:func:`on_store`), on
    the call's event loop instead.

    A store thread is shared by every async run of the process (two on SQLite): a turn waited
    for there held up the store work of all of them. The wait raises ``_Pause`` to the call's
    start, which hands it to the loop and calls the waiting guard's ``before`` again after it:
    the guard keeps what it did so far in ``call.meta``."""
    check = call.run.check_cancelled
    if _waits_on_loop.get() is call:
        raise _Pause(seconds, check)
    _nap(seconds, check)


def _waiting_on_loop(fn: Callable[..., R], *args: Any) -> R:
    token = _waits_on_loop.set(_ANY)
    try:
        return fn(*args)
    finally:
        _waits_on_loop.reset(token)


async def on_store(fn: Callable[..., Any], *args: Any, run: Any = None) -> Any:
    """:func:`off_loop` for an operation whose guards may wait (:func:`pause`): each wait is
    made here, on the event loop, between hand-offs to the store's threads."""
    result = await off_loop(_waiting_on_loop, fn, *args, run=run)
    while isinstance(result, LoopWait):
        try:
            await _anap(result.seconds, result.check)
        except BaseException as exc:
            await off_loop(result.refuse, exc, run=run)
            raise
        result = await off_loop(_waiting_on_loop, result.resume, run=run)
    return result


async def adrive(steps: Attempts[R], io: Any) -> R:
    """Run an attempt generator asynchronously: ``await io.<op>(arg)`` for each step."""
    try:
        step = next(steps)
        while True:
            try:
                result = None
                if step.op == "sleep":
                    await _anap(*step.arg)
                elif step.op == "store":
                    result = await off_loop(step.arg, run=getattr(io, "run", None))
                elif step.op == "begin":  # a call's start, whose guards may wait on this loop
                    result = await on_store(step.arg, run=getattr(io, "run", None))
                else:
                    result = await getattr(io, step.op)(step.arg)
            except BaseException as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def off_loop(fn: Callable[..., R], *args: Any, run: Any = None, here: bool = False) -> R:
    """Await ``fn(*args)``, blocking work on a run's store, on the store's threads.

    ``run``: the run (default: the current one). In the caller's context, after the run's
    earlier store operations (they are keyed by its id, so its writes keep the order its code
    reached them). Outside any run, ``fn`` runs here. ``here``: ``fn`` needs no store; it runs
    on this thread when nothing of the run waits for the store (``Store.off_loop``).
    """
    run = run if run is not None else current_run()
    store: Store | None = None if run is None else run.store
    if run is None or store is None:
        return fn(*args)
    lane = getattr(_lane, "value", None)
    if lane is not None:  # a run's thread knows its lane by a thread-local: carry it over too
        return await store.off_loop(_in_lane, lane, fn, *args, key=run.run_id, here=here)
    return await store.off_loop(fn, *args, key=run.run_id, here=here)


def to_store(run: Any, fn: Callable[..., R], *args: Any) -> Awaitable[R]:
    """:func:`off_loop` for a run known to the caller (``run``, with its store), as the store's
    awaitable itself: no coroutine of its own between the caller and the store's (an async
    step's record awaits it on every step)."""
    lane = getattr(_lane, "value", None)
    if lane is not None:
        return run.store.off_loop(_in_lane, lane, fn, *args, key=run.run_id)  # type: ignore[no-any-return]
    return run.store.off_loop(fn, *args, key=run.run_id)  # type: ignore[no-any-return]


def _in_lane(lane: Any, fn: Callable[..., R], *args: Any) -> R:
    outer = getattr(_lane, "value", None)
    _lane.value = lane
    try:
        return fn(*args)
    finally:
        _lane.value = outer
