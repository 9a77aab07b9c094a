"""Change notifications: wake waiting threads soon after another connection commits.

One background thread per store and process watches the database while anyone waits (a
worker for work, ``handle.result()`` for its run, a script for its approval) and wakes the
waiters a change concerns. PostgreSQL tells it through ``LISTEN wflo_runs`` (the payload is
the run's id, or empty for "look again"); SQLite has no such channel, so the thread reads
``PRAGMA data_version`` (a counter in the shared WAL index that moves when any other
connection commits) every ``SQLITE_WATCH_INTERVAL`` seconds, which costs microseconds.

A waiter is registered before its owner looks at the state it waits on and stays registered
between looks, so a change committed in between is never missed: ``wait`` then returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._base import Store

log = logging.getLogger("wflo.store")

SQLITE_WATCH_INTERVAL = 0.01
"""Seconds between two reads of SQLite's ``data_version`` while someone waits."""

_IDLE_EXIT = 5.0  # the watching thread ends after this long without waiters


class Waiter:
    """Wakes when a change that may concern ``key`` (a run id; ``None``: any) is committed."""

    def __init__(self, feed: ChangeFeed, key: str | None) -> None:
        self.key = key
        self._feed = feed
        self._event = threading.Event()
        self._waking: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` s; True if a change came since the last ``wait``."""
        got = self._event.wait(max(0.0, timeout))
        self._event.clear()
        return got

    async def await_change(self, timeout: float) -> bool:
        """``wait`` for async code: the event loop runs on meanwhile (no thread is held)."""
        if not self._event.is_set():
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waking = (loop, future)
            try:
                if not self._event.is_set():  # set after our first look: _wake may not have seen us
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(future, max(0.0, timeout))
            finally:
                self._waking = None
        got = self._event.is_set()
        self._event.clear()
        return got

    def close(self) -> None:
        self._feed._remove(self)

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _wake(self, payload: str | None) -> None:
        if self.key is None or payload is None or payload == "" or payload == self.key:
            self._event.set()
            waking = self._waking
            if waking is not None:
                loop, future = waking
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ChangeFeed:
    """The watching thread of one store in one process."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiters: set[Waiter] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.pid = os.getpid()

    def waiter(self, key: str | None = None) -> Waiter:
        w = Waiter(self, key)
        with self._lock:
            self._waiters.add(w)
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._run, name="wflo-changes", daemon=True)
                self._thread.start()
        return w

    def _remove(self, w: Waiter) -> None:
        with self._lock:
            self._waiters.discard(w)

    def close(self) -> None:
        """Stop watching (the thread ends within one watch period and closes its connection)."""
        with self._lock:
            self._closed = True

    def _wake(self, payloads: list[str | None]) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for payload in payloads:
            for w in waiters:
                w._wake(payload)

    def _run(self) -> None:
        watch = None
        idle_since = time.monotonic()
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    if self._waiters:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > _IDLE_EXIT:
                        self._thread = None
                        return
                try:
                    if watch is None:
                        watch = self._store._open_watch()
                    payloads = self._store._watch(watch, 0.25)
                except Exception as exc:  # the database went away: everyone looks again, later
                    log.debug("wflo change feed: %s", exc)
                    self._store._close_watch(watch)
                    watch = None
                    self._wake([None])
                    time.sleep(0.2)
                    continue
                if payloads:
                    self._wake(payloads)
        finally:
            with contextlib.suppress(Exception):
                self._store._close_watch(watch)
