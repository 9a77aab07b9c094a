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
        self._ready: queue.Queue[Started] = queue.Queue()
        self._free = threading.Semaphore(size)  # places in the pool no sandbox fills yet
        self._starting = 0
        self._lock = threading.Lock()
        self._closed = False
        self._start_ms = 50.0  # a running estimate of how long a start takes
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
            t0 = time.perf_counter()
            try:
                started = self.backend.start(limits=self.limits, files=self.files, egress=self.egress)
                ok = started.wait_ready(READY_TIMEOUT)
            except Exception:
                log.debug("wflo sandbox pool: start failed", exc_info=True)
                ok = False
            finally:
                with self._lock:
                    self._starting -= 1
            if ok and started is not None and not self._closed:
                self._start_ms = 0.8 * self._start_ms + 0.2 * (time.perf_counter() - t0) * 1000
                self._ready.put(started)
                failures = 0
                if self._closed:
                    self._drain()
                continue
            if started is not None:
                started.close(later=True)
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
                    starting = self._starting
                if not starting or self._closed:
                    return None
                try:  # one is on its way: sooner than starting another from nothing
                    started = self._ready.get(timeout=self._start_ms * 2 / 1000)
                except queue.Empty:
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
                self._ready.get_nowait().close()
            except queue.Empty:
                break
