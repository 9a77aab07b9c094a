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
import time
from collections.abc import Awaitable, Callable, Generator
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
    store), else the name of a method of the driver's ``io``."""
    arg: Any = None


Attempts = Generator[Step, Any, R]


NAP = 0.1
"""The longest a ``"sleep"`` step goes without calling its ``check``."""


def _nap(seconds: float, check: Callable[[], None]) -> None:
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, NAP))


async def _anap(seconds: float, check: Callable[[], None]) -> None:
    end = time.monotonic() + seconds
    while True:
        check()
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, NAP))


def drive(steps: Attempts[R], io: Any) -> R:
    """Run an attempt generator synchronously: ``io.<op>(arg)`` for each step."""
    try:
        step = next(steps)
        while True:
            try:
                result = None
                if step.op == "sleep":
                    _nap(*step.arg)
                elif step.op == "store":
                    result = step.arg()
                else:
                    result = getattr(io, step.op)(step.arg)
            except BaseException as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


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
