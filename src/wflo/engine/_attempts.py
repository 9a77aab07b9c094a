"""Attempts (retry, fallback, replay) written once, run by a synchronous or an asynchronous driver.

The decisions of a guarded operation's attempts (what to send, whether to retry after a
failure and how long to wait, which model to fall back to, what the journal says was decided
before) are written once, as a generator of :class:`Step` objects. The generator never does
I/O itself: it yields a step (``Step("send", request)``, ``Step("sleep", 1.5)``), the driver
performs it and sends back the result, or throws in the error it raised. :func:`drive` performs
steps with plain calls and ``time.sleep``; :func:`adrive` awaits them and uses
``asyncio.sleep``. The operations other than ``sleep`` are methods of an ``io`` object that each
caller supplies in a sync and an async flavour (``send``, ``read``, ``close``, …).

Used by the call boundary (a step's or tool's retries), the ``httpx`` interception (an LLM
call's retries and model fallbacks, each attempt its own journaled call) and the clients whose
answers are read whole (``requests``, ``urllib3``, ``http.client``, ``aiohttp``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any, NamedTuple, TypeVar

R = TypeVar("R")


class Step(NamedTuple):
    """One effect an attempt generator asks its driver to perform."""

    op: str
    """``"sleep"`` (``arg`` seconds), else the name of a method of the driver's ``io``."""
    arg: Any = None


Attempts = Generator[Step, Any, R]


def drive(steps: Attempts[R], io: Any) -> R:
    """Run an attempt generator synchronously: ``io.<op>(arg)`` for each step."""
    try:
        step = next(steps)
        while True:
            try:
                result = None
                if step.op == "sleep":
                    time.sleep(step.arg)
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
                    await asyncio.sleep(step.arg)
                else:
                    result = await getattr(io, step.op)(step.arg)
            except BaseException as exc:
                step = steps.throw(exc)
            else:
                step = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
