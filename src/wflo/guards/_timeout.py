"""Time limits on a call, sync and async, raising the builtin ``TimeoutError``.

Async code is cancelled at the limit (``asyncio.timeout``): the awaited call really stops.

Sync code cannot be stopped safely from outside. ``signal.alarm`` works only in the main
thread and steals the application's ``SIGALRM``; ``PyThreadState_SetAsyncExc`` can fire inside
a ``finally`` or a lock and corrupt state. So a sync call runs in a daemon worker thread (with
the caller's ``contextvars``, so the run context follows it) and the caller stops *waiting* at
the limit: ``TimeoutError`` is raised, but the function keeps running in the background until
it returns, and its result is discarded. Give the code its own deadline too where it has one
(an HTTP client's ``timeout=``) and prefer async code for hard limits.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from ._parse import parse_duration

__all__ = ["Timeout", "timeout"]

T = TypeVar("T")


class Timeout:
    """A time limit: ``timeout("30s").call(fn, ...)``, ``await timeout(5).acall(fn, ...)``,
    ``async with timeout(5): ...`` or ``@timeout("2m")`` on a sync or async function.

    ``None`` means no limit. One object serves any number of ``call``/``acall`` at once, but
    one ``async with`` at a time (like ``asyncio.timeout``, make a new one per block).
    """

    def __init__(self, seconds: float | str | None) -> None:
        self.seconds = None if seconds is None else parse_duration(seconds, "timeout")
        self._active: Any = None

    def __repr__(self) -> str:
        return f"Timeout({self.seconds!r})"

    def _error(self, what: str) -> TimeoutError:
        return TimeoutError(f"{what} timed out after {self.seconds:g}s")

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread; ``TimeoutError`` if it takes too long.

        At the limit the caller gets ``TimeoutError`` while ``fn`` runs on, unobserved (see
        the module docstring). Errors of ``fn`` are raised as they are.
        """
        if self.seconds is None:
            return fn(*args, **kwargs)
        ctx = contextvars.copy_context()
        done = threading.Event()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = ctx.run(fn, *args, **kwargs)
            except BaseException as exc:  # handed to the caller, whatever it is
                box["error"] = exc
            finally:
                done.set()

        name = getattr(fn, "__qualname__", "call")
        threading.Thread(target=target, name=f"wflo-timeout:{name}", daemon=True).start()
        if not done.wait(self.seconds):
            raise self._error(name)
        if "error" in box:
            raise box["error"]
        value: T = box["value"]
        return value

    async def acall(self, fn: Callable[..., Awaitable[T]] | Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` and cancel it at the limit; a sync ``fn`` runs in a thread."""
        name = getattr(fn, "__qualname__", "call")
        if inspect.iscoroutinefunction(fn):
            work: Awaitable[Any] = fn(*args, **kwargs)
        else:
            work = asyncio.to_thread(fn, *args, **kwargs)  # copies contextvars too
        if self.seconds is None:
            return await work  # type: ignore[no-any-return]
        try:
            async with asyncio.timeout(self.seconds):
                return await work  # type: ignore[no-any-return]
        except TimeoutError as exc:
            raise self._error(name) from exc

    async def __aenter__(self) -> Timeout:
        if self._active is not None:
            raise RuntimeError("this Timeout is already in use by an `async with`; make one per block")
        self._active = asyncio.timeout(self.seconds)
        await self._active.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        active, self._active = self._active, None
        try:
            return await active.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]
        except TimeoutError as err:
            raise self._error("block") from err

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a sync or async function with this limit."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper


def timeout(seconds: float | str | None) -> Timeout:
    """A :class:`Timeout` of ``seconds`` (``5``, ``"90s"``, ``"2m"``; ``None``: no limit)."""
    return Timeout(seconds)
