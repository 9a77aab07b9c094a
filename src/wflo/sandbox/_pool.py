"""The warm pool: sandboxes started ahead of time, each used for one program.

Filler threads (as many as there are CPUs, at most ``size``) start sandboxes in the background
and hand over only those whose launcher has said it is ready, so a caller never gets one that
died while starting (a dead warm sandbox was the burst's ``BrokenPipeError``). A caller takes a
ready one, or waits for the next one being started when that is sooner than a cold start, or
starts one cold; it never does the refilling itself. A sandbox that failed to start is retried
by its filler with a growing pause; callers meanwhile start cold, and the cold path reports the
cause (``SandboxUnavailableError``) if it persists.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping

from . import _egress, _launcher
from ._base import Limits, SandboxResult
from ._bwrap import BwrapBackend
from ._supervise import Started

log = logging.getLogger("wflo")
READY_TIMEOUT = 10.0


class BwrapPool:
    """``size`` warm sandboxes with fixed limits, files and network; each is used once and
    replaced in the background."""

    def __init__(
        self,
        backend: BwrapBackend,
        size: int,
        *,
        limits: Limits,
        files: Mapping[str, bytes],
        egress: _egress.Egress | None,
    ) -> None:
        self.backend, self.size, self.limits, self.files, self.egress = backend, size, limits, dict(files), egress
        self._ready: queue.Queue[Started | None] = queue.Queue()  # None: a start failed, go cold
        self._free = threading.Semaphore(size)  # places in the pool no sandbox fills yet
        self._starting = 0
        self._waiting = 0
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._fill, name=f"wflo-sandbox-pool-{i}", daemon=True)
            for i in range(max(1, min(size, os.cpu_count() or 1)))
        ]
        for thread in self._threads:
            thread.start()
        atexit.register(self.close)

    def _fill(self) -> None:
        failures = 0
        while True:
            self._free.acquire()
            if self._closed:
                return
            with self._lock:
                self._starting += 1
            started: Started | None = None
            try:
                started = self.backend.start(limits=self.limits, files=self.files, egress=self.egress)
                ok = started.wait_ready(READY_TIMEOUT)
            except Exception:
                log.debug("wflo sandbox pool: start failed", exc_info=True)
                ok = False
            if ok and started is not None and not self._closed:
                with self._lock:  # counted as starting until it is in the queue
                    self._ready.put(started)
                    self._starting -= 1
                failures = 0
                if self._closed:
                    self._drain()
                continue
            if started is not None:
                started.close(later=True)
            with self._lock:
                self._starting -= 1
                if self._waiting:  # a caller waits for the start that failed: let it go cold
                    self._ready.put(None)
            self._free.release()
            if self._closed:
                return
            failures += 1
            time.sleep(min(2.0, 0.01 * 2**failures))

    def take(self) -> Started | None:
        """A warm sandbox, or ``None`` when a cold start is the quicker way."""
        while True:
            try:
                started = self._ready.get_nowait()
            except queue.Empty:
                with self._lock:
                    # Wait only for a sandbox no other waiting caller will take first.
                    wait = self._starting > self._waiting and not self._closed
                    self._waiting += wait
                if not wait:
                    return None
                try:  # one is on its way: sooner than starting another from nothing
                    started = self._ready.get(timeout=READY_TIMEOUT)
                except queue.Empty:
                    return None
                finally:
                    with self._lock:
                        self._waiting -= 1
            if started is None:
                return None
            self._free.release()
            if started.alive():
                return started
            started.close(later=True)

    def run(self, argv: list[str], python: str | None, stdin: bytes | None) -> SandboxResult:
        started = self.take()
        if started is not None:
            result = started.finish(_launcher.header(argv, python) + (stdin or b""))
            if result.killed_by != "unavailable":
                return result
            log.debug("wflo sandbox pool: a warm sandbox was gone: %s", result.stderr.strip()[-200:])
        return self.backend.run_program(
            argv, python, limits=self.limits, files=self.files, egress=self.egress, stdin=stdin
        )

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._free.release()
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                started = self._ready.get_nowait()
            except queue.Empty:
                break
            if started is not None:
                started.close()
