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
answer it from memory) runs on the submitting thread at once when nothing of its key is queued,
or only a job whose caller has already been woken (``told``) while its store thread has yet to
let the key go: it then has the place in the key's order, and its caller the place among the
loop's wake-ups, that a store thread running it instantly would have given it.

The threads are named ``wflo-store-…`` (a run's thread propagation leaves ``wflo-`` threads
alone), are started on demand and end after some idle seconds; a fork starts afresh.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

_IDLE_SECONDS = 10.0

_Job = tuple[Hashable | None, Callable[[], Any], "Future[Any]"]


def _nothing() -> None:
    return None


class OrderedExecutor:
    """Up to ``threads`` threads running jobs; jobs of one key run in submission order."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = max(1, threads)
        self._lock = threading.Lock()
        self._ready: deque[_Job] = deque()  # jobs any thread may take
        self._waiting: dict[Hashable, deque[_Job]] = {}  # key -> jobs behind the one running
        self._running: dict[Hashable, Future[Any]] = {}  # key -> its job in flight (or just ended)
        self._told: dict[Hashable, Future[Any]] = {}  # key -> that job, once its caller was woken
        self._wake = threading.Condition(self._lock)
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
        job: _Job = (key, fn, future)
        if here and key is not None and self._run_here(job):
            return future
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's threads are not here
                self._pid, self._alive, self._idle = os.getpid(), 0, 0
                self._ready.clear()
                self._waiting.clear()
                self._running.clear()
                self._told.clear()
            self._closed = False
            if key is not None:
                behind = self._waiting.get(key)
                if behind is not None:  # a job of this key is queued or running: wait for it
                    behind.append(job)
                    return future
                self._waiting[key] = deque()
                self._running[key] = future
            self._ready.append(job)
            if self._idle > 0:
                self._wake.notify()
            elif self._alive < self.threads:
                self._start_thread()
        return future

    def told(self, key: Hashable, future: Future[Any]) -> None:
        """The caller of ``key``'s job ``future`` has been woken (on its loop, by the callback
        its end scheduled there): a job of ``key`` may run ``here`` after it even before the
        store thread that ran it has let the key go."""
        with self._lock:
            if self._running.get(key) is future:
                self._told[key] = future

    def take(self, key: Hashable) -> Future[Any] | None:
        """Take ``key``'s place in the order for work the caller does itself, on its own
        thread (an async run's record written from its event loop), by the rule of ``here``:
        only when nothing of ``key`` is queued or running (or only a job whose caller was
        already woken, ``told``). Returns the token to hand to :meth:`give_back` once the work
        is done (jobs of ``key`` submitted meanwhile wait for it), or ``None``: busy."""
        future: Future[Any] = Future()
        return future if self._claim(key, future) else None

    def give_back(self, key: Hashable, token: Future[Any]) -> None:
        """The work :meth:`take` made room for is done: the next job of ``key``, if any, may run."""
        self._run((key, _nothing, token), here=True)

    def _run_here(self, job: _Job) -> bool:
        key, _, future = job
        if not self._claim(key, future):
            return False
        self._run(job, here=True)
        return True

    def _claim(self, key: Hashable, future: Future[Any]) -> bool:
        """Give ``key``'s place in the order to ``future`` if nothing of ``key`` is queued or
        running (the rule of ``here`` and :meth:`take`); False: busy, or forked (``submit``
        starts afresh)."""
        with self._lock:
            if self._pid != os.getpid():
                return False
            behind = self._waiting.get(key)
            if behind is not None:
                running = self._running.get(key)
                # Busy, unless its job in flight has ended and its caller was woken (a store
                # thread has only to let the key go), with nothing behind it.
                if behind or running is None or self._told.get(key) is not running:
                    return False
            self._waiting[key] = deque()  # ours now: jobs of the key submitted meanwhile wait
            self._running[key] = future
            self._told.pop(key, None)
        return True

    def _run(self, job: _Job, *, here: bool = False) -> None:
        key, fn, future = job
        if future.set_running_or_notify_cancel():
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
        if key is None:
            return
        with self._lock:
            if self._running.get(key) is not future:
                return  # a job run here took the key over once this one's caller was woken
            self._told.pop(key, None)
            behind = self._waiting.get(key)
            if behind:
                following = behind.popleft()
                self._ready.append(following)
                self._running[key] = following[2]
                if here:  # no store thread is about to look at the ready jobs: wake one
                    if self._idle > 0:
                        self._wake.notify()
                    elif self._alive < self.threads:
                        self._start_thread()
            else:
                self._waiting.pop(key, None)
                self._running.pop(key, None)

    def _start_thread(self) -> None:
        self._alive += 1
        n = self._alive
        threading.Thread(target=self._work, name=f"wflo-store-{self.name}-{n}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._ready:
                    if self._closed:
                        self._alive -= 1
                        return
                    self._idle += 1
                    woken = self._wake.wait(_IDLE_SECONDS)
                    self._idle -= 1
                    if not woken and not self._ready:
                        self._alive -= 1
                        return
                job = self._ready.popleft()
            self._run(job)

    def close(self) -> None:
        """Let the idle threads end (a later ``submit`` starts new ones)."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
