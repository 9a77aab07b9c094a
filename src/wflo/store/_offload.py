"""The store's own threads, on which async code awaits blocking store operations.

The store's drivers block (``sqlite3``, psycopg's sync connections). An async workflow must
not run them on its event loop: a slow commit, a lock held by another connection or a pool
wait would stall every coroutine of that loop. ``Store.off_loop`` hands such an operation to
these threads and awaits it.

Order: operations given the same ``key`` (a run id) run one after another, in the order they
were submitted, as ``aiosqlite`` keeps one connection's statements in order on its one thread.
A run's writes are therefore committed in the order its code reached them, even when the run's
tasks submit concurrently (``asyncio.gather`` of steps): call ids are numbered in that order,
so a replay whose tasks reach their calls in the same order numbers them the same (one whose
tasks reach them in another order is matched by request: ``wflo.engine``'s run context).
Operations of different runs, or with no key, may run side by side on different threads (up to
``threads``).

A job that needs no store (``here``: an async call's start when the journal and the guards
answer it from memory) runs on the submitting thread at once when nothing of its key is queued
or running: it then has the place in the key's order, and its caller the place among the loop's
wake-ups, that a store thread running it instantly would have given it. A job posted with
``wake_locked`` (``Store.off_loop``'s) lets its key go and wakes its caller in one step, under
the executor's lock: by the time a job of the key can run ``here``, the caller of the one
before it is already queued on its loop to be woken first.

The hand-off is kept lean, because an async step pays it on every record (issue 20): the
threads wait on a ``queue.SimpleQueue`` (its wait and wake-up are C, not a Python
``Condition``), a job's end is a plain callback (no ``concurrent.futures.Future`` unless
:meth:`OrderedExecutor.submit` asks for one), and the thread lets the key go and queues the
caller's wake-up in one step under the lock, then makes the wake-up's system call once the lock
is let go, its last work for the job. The system call lets the GIL go, and
the woken loop often takes it then: had the thread still held the lock (as it did, issue 20),
the loop's next step would find it taken at its start and wait for the thread (measured: three
steps in four, ~24 µs each).

The threads are named ``wflo-store-…`` (a run's thread propagation leaves ``wflo-`` threads
alone), are started on demand and end after some idle seconds; a fork starts afresh.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

_IDLE_SECONDS = 10.0

Done = Callable[[Any, "BaseException | None", bool], "Callable[[], Any] | None"]
"""A job's end: ``done(value, error, here)``, ``here`` when it ran on the submitting thread. It
may return a last step, run once the executor's lock is let go (a ``wake_locked`` job's
wake-up queued under the lock, the system call that wakes its loop after it)."""


class _Job:
    __slots__ = ("done", "fn", "key", "wake_locked")

    def __init__(self, key: Hashable | None, fn: Callable[[], Any], done: Done, wake_locked: bool) -> None:
        self.key, self.fn, self.done, self.wake_locked = key, fn, done, wake_locked


def _nothing() -> None:
    return None


def _ignore(value: Any, error: BaseException | None, here: bool) -> None:
    return None


_SKIPPED: Any = object()  # a job whose future was cancelled before it ran


class OrderedExecutor:
    """Up to ``threads`` threads running jobs; jobs of one key run in submission order."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = max(1, threads)
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # jobs any thread may take
        self._waiting: dict[Hashable, deque[_Job]] = {}  # key -> jobs behind the one running
        self._running: dict[Hashable, _Job] = {}  # key -> its job in flight
        self._alive = 0
        self._idle = 0
        self._pid = os.getpid()
        self._closed = False

    def submit(self, key: Hashable | None, fn: Callable[[], Any], *, here: bool = False) -> Future[Any]:
        """Run ``fn()`` on a store thread (after the earlier jobs of ``key``); its future.

        ``here``: ``fn`` does not block (it needs no store). When no job of ``key`` is queued or
        running, it runs on the calling thread at once, and the future returned is done: the
        job has the place in the key's order that it would have had on a store thread, without
        the hand-off there and back. Otherwise it is queued as usual.
        """
        future: Future[Any] = Future()
        self.post(key, functools.partial(_unless_cancelled, future, fn), functools.partial(_settle, future), here=here)
        return future

    def post(self, key: Hashable | None, fn: Callable[[], Any], done: Done, *, here: bool = False,
             wake_locked: bool = False) -> bool:  # fmt: skip
        """:meth:`submit` without a future: ``done(value, error, here)`` is called once ``fn``
        ended (on the thread that ran it), after the key was let go or passed to its next job.
        ``wake_locked``: ``done`` is called under the executor's lock, in the same step as the
        key is let go (it must only queue a wake-up, and never call back into the executor);
        what it returns (the system call that wakes the loop) runs once the lock is let go:
        code the wake-up lets run on another thread then finds the lock free.
        Returns whether ``fn`` ran here (``done`` has been called)."""
        job = _Job(key, fn, done, wake_locked)
        if here and key is not None and self._claim(key, job):
            self._run(job, here=True)
            return True
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's threads are not here
                self._pid, self._alive, self._idle = os.getpid(), 0, 0
                self._ready = queue.SimpleQueue()
                self._waiting.clear()
                self._running.clear()
            self._closed = False
            if key is not None:
                behind = self._waiting.get(key)
                if behind is not None:  # a job of this key is queued or running: wait for it
                    behind.append(job)
                    return False
                self._waiting[key] = deque()
                self._running[key] = job
            self._dispatch(job)
        return False

    def take(self, key: Hashable) -> object | None:
        """Take ``key``'s place in the order for work the caller does itself, on its own
        thread (an async run's record written from its event loop), by the rule of ``here``:
        only when nothing of ``key`` is queued or running. Returns the token to hand to
        :meth:`give_back` once the work is done (jobs of ``key`` submitted meanwhile wait for
        it), or ``None``: busy."""
        token = _Job(key, _nothing, _ignore, False)
        return token if self._claim(key, token) else None

    def give_back(self, key: Hashable, token: Any) -> None:
        """The work :meth:`take` made room for is done: the next job of ``key``, if any, may run."""
        with self._lock:
            self._let_go(key, token, here=True)

    def _claim(self, key: Hashable, job: _Job) -> bool:
        """Give ``key``'s place in the order to ``job`` if nothing of ``key`` is queued or
        running (the rule of ``here`` and :meth:`take`); False: busy, or forked (``post``
        starts afresh)."""
        with self._lock:
            if self._pid != os.getpid() or key in self._waiting:
                return False
            self._waiting[key] = deque()  # ours now: jobs of the key submitted meanwhile wait
            self._running[key] = job
        return True

    def _run(self, job: _Job, *, here: bool = False) -> None:
        """Run ``job``, let its key go, end it (``done``). A ``wake_locked`` job's ``done`` runs
        under the lock, in the same step as the key is let go, and what it returns (the system
        call that wakes the loop) once the lock is let go, as the thread's last work before it
        goes back to wait."""
        error: BaseException | None = None
        try:
            value = job.fn()
        except BaseException as exc:
            value, error = None, exc
        key = job.key
        last: Callable[[], Any] | None = None
        if key is not None:
            with self._lock:
                self._let_go(key, job, here=here)
                if job.wake_locked:
                    last = job.done(value, error, here)
        if key is None or not job.wake_locked:
            last = job.done(value, error, here)
        if last is not None:
            last()

    def _let_go(self, key: Hashable, job: _Job, *, here: bool) -> None:
        """(Under the lock.) ``job`` of ``key`` is over: its next job runs, or the key is free."""
        if self._running.get(key) is not job:
            return
        behind = self._waiting.get(key)
        if behind:
            following = behind.popleft()
            self._running[key] = following
            # On a store thread, this thread takes it (or an idle one); from elsewhere, a
            # store thread must be woken or started for it.
            self._dispatch(following, start=here)
        else:
            self._waiting.pop(key, None)
            self._running.pop(key, None)

    def _dispatch(self, job: _Job, *, start: bool = True) -> None:
        """(Under the lock.) Queue ``job`` for the store threads; start one if none is idle."""
        self._ready.put(job)
        if start and self._idle == 0 and self._alive < self.threads:
            self._start_thread()

    def _start_thread(self) -> None:
        """(Under the lock.) One more store thread."""
        self._alive += 1
        threading.Thread(target=self._work, name=f"wflo-store-{self.name}-{self._alive}", daemon=True).start()

    def _work(self) -> None:
        ready = self._ready
        while True:
            with self._lock:
                if self._closed and ready.empty():
                    self._alive -= 1
                    return
                # Counted idle here, once it can wait: counted in ``_run``'s locked step instead
                # (before the wake-up's system call), the next job was left to this thread while
                # it waited for the GIL the woken loop held, not to another (measured under CPU
                # contention: async steps 1.45 to 1.7 times slower).
                self._idle += 1
            try:
                job = ready.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                job = None
            with self._lock:
                self._idle -= 1
                if job is None and ready.empty():  # idle too long, or closed
                    self._alive -= 1
                    return
                if job is not None and self._idle == 0 and not ready.empty() and self._alive < self.threads:
                    # A job queued while this thread, still counted idle, had already taken its
                    # own: its dispatch saw an idle thread and started none, and it waited for
                    # this one's job, however long (a run's store work stalled behind another
                    # run's lock wait; test_ordered_executor stalled in 4% of runs).
                    self._start_thread()
            if job is not None:
                self._run(job)

    def close(self) -> None:
        """Let the idle threads end (a later ``submit`` starts new ones)."""
        with self._lock:
            self._closed = True
            for _ in range(self._idle):
                self._ready.put(None)


def _unless_cancelled(future: Future[Any], fn: Callable[[], Any]) -> Any:
    if not future.set_running_or_notify_cancel():
        return _SKIPPED
    return fn()


def _settle(future: Future[Any], value: Any, error: BaseException | None, here: bool) -> None:
    if value is _SKIPPED:
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class LoopWaiter:
    """What a task awaits on its loop for the end of work done elsewhere (``Store.off_loop``'s
    job on a store thread, a statement's answer on the loop's reader): an ``asyncio.Future``
    for the task (the protocol ``asyncio.Task`` drives any future-like object by), but one that
    resumes the task in the turn of the loop its outcome is delivered in (:meth:`deliver`, called
    from a callback the loop runs), not one turn later as a future's done callbacks are: one
    turn (an ``epoll_wait`` and the loop's bookkeeping) less on each hand-off of an async step.

    Only :meth:`deliver` (on the loop's thread, from a callback of the loop, never inside a
    task) ends it with an outcome; ``cancel`` ends it cancelled, its task woken as a future's
    is (scheduled). Loop thread only, as an ``asyncio.Future``."""

    __slots__ = (
        "_asyncio_future_blocking", "_callback", "_context", "_error", "_loop", "_message", "_others", "_state",
        "_value",
    )  # fmt: skip

    _PENDING, _DONE, _CANCELLED = 0, 1, 2

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._state = LoopWaiter._PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._message: Any = None
        self._callback: Callable[..., Any] | None = None
        self._context: contextvars.Context | None = None
        self._others: list[tuple[Callable[..., Any], contextvars.Context | None]] | None = None
        self._asyncio_future_blocking = False

    def deliver(self, value: Any, error: BaseException | None) -> None:
        """The outcome (unless cancelled meanwhile): the awaiting task resumes now, in the
        loop's callback that calls this (the task's context entered for it)."""
        if self._state != LoopWaiter._PENDING:
            return
        self._state, self._value, self._error = LoopWaiter._DONE, value, error
        self._schedule_others()
        callback, self._callback = self._callback, None
        if callback is not None:
            context = self._context
            self._context = None
            if context is None:
                callback(self)
            else:
                context.run(callback, self)

    def _schedule_others(self) -> None:
        others, self._others = self._others, None
        for fn, context in others or ():
            self._loop.call_soon(fn, self, context=context)

    # ------------------------------------------------------------ the future protocol
    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._state != LoopWaiter._PENDING

    def cancelled(self) -> bool:
        return self._state == LoopWaiter._CANCELLED

    def result(self) -> Any:
        if self._state == LoopWaiter._CANCELLED:
            raise asyncio.CancelledError(*(() if self._message is None else (self._message,)))
        if self._state == LoopWaiter._PENDING:
            raise asyncio.InvalidStateError("Result is not ready.")
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        if self._state == LoopWaiter._CANCELLED:
            raise asyncio.CancelledError(*(() if self._message is None else (self._message,)))
        if self._state == LoopWaiter._PENDING:
            raise asyncio.InvalidStateError("Exception is not set.")
        return self._error

    def add_done_callback(self, fn: Callable[..., Any], *, context: contextvars.Context | None = None) -> None:
        if self._state != LoopWaiter._PENDING:
            self._loop.call_soon(fn, self, context=context)
        elif self._callback is None:
            self._callback, self._context = fn, context  # the awaiting task's: called at once
        else:  # anyone else's: scheduled, as a future schedules its callbacks
            if self._others is None:
                self._others = []
            self._others.append((fn, context))

    def remove_done_callback(self, fn: Callable[..., Any]) -> int:
        removed = 0
        if self._callback is not None and self._callback == fn:
            self._callback = self._context = None
            removed = 1
        if self._others:
            kept = [(f, c) for f, c in self._others if f != fn]
            removed += len(self._others) - len(kept)
            self._others = kept
        return removed

    def cancel(self, msg: Any = None) -> bool:
        if self._state != LoopWaiter._PENDING:
            return False
        self._state, self._message = LoopWaiter._CANCELLED, msg
        self._schedule_others()
        callback, self._callback = self._callback, None
        if callback is not None:
            context, self._context = self._context, None
            self._loop.call_soon(callback, self, context=context)
        return True

    def __await__(self) -> Any:
        if self._state == LoopWaiter._PENDING:
            self._asyncio_future_blocking = True
            yield self
        return self.result()

    __iter__ = __await__
