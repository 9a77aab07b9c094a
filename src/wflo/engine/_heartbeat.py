"""One thread per process keeps the leases of the runs it executes alive."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..store import Store
    from ._context import RunContext

log = logging.getLogger("wflo.heartbeat")


class Heartbeats:
    """Renews every tracked run's lease each ``lease_seconds / 3`` (of the run's runtime).

    A run whose lease was taken over (we were too slow, or paused) is marked lost, so its
    next journal write stops it; a cancel request seen here stops it at the next step.
    """

    def __init__(self) -> None:
        self._runs: dict[int, RunContext] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._period = float("inf")  # the current wait between beats
        self._handing_back: set[str] = set()  # owners (stopping workers) whose runs stop at their next call

    def track(self, store: Store, owner: str, ctx: RunContext) -> None:
        period = ctx.runtime.settings.lease_seconds / 3
        with self._lock:
            self._runs[id(ctx)] = ctx
            if owner in self._handing_back:
                ctx.release_requested = True
            if period < self._period:
                self._wake.set()  # a run of a shorter lease: the loop shortens its wait now
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="wflo-heartbeat", daemon=True)
                self._thread.start()

    def untrack(self, ctx: RunContext) -> None:
        with self._lock:
            self._runs.pop(id(ctx), None)

    def hand_back(self, owner: str, *, on: bool = True) -> None:
        """Ask every run ``owner`` executes, now or from now on, to stop at its next call and
        release its lease (``RunReleased``): its worker is stopping. So are the child runs they
        are inside now (a child runs in its parent's thread, under this process's owner): the
        child is released first, then its parent, whose replay on another worker takes the
        child up where it stopped. ``on=False``: forget ``owner`` (the worker has stopped)."""
        with self._lock:
            if not on:
                self._handing_back.discard(owner)
                return
            self._handing_back.add(owner)
            released = {ctx.run_id for ctx in self._runs.values() if ctx.owner == owner}
            grew = True
            while grew:  # children, then their children
                grew = False
                for ctx in self._runs.values():
                    if ctx.run_id not in released and ctx.record.parent_id in released:
                        released.add(ctx.run_id)
                        grew = True
            for ctx in self._runs.values():
                if ctx.run_id in released:
                    ctx.release_requested = True

    def _loop(self) -> None:
        while True:
            # Each run's lease is its runtime's; the beat comes as often as the shortest needs.
            # No run: nothing to renew, so the thread waits for the next ``track`` (which wakes
            # it: the period is set under the same lock as the runs are read, so a run tracked
            # meanwhile sees it) and reads no settings: the process's may be unreadable now (an
            # environment changed since), which must not end this thread.
            with self._lock:
                leases = [ctx.runtime.settings.lease_seconds for ctx in self._runs.values()]
                self._period = min(leases) / 3 if leases else float("inf")
            if self._wake.wait(self._period if leases else None):
                self._wake.clear()
                continue  # woken to wait less: the leases just taken have all their time
            with self._lock:
                runs = list(self._runs.values())
            groups: dict[tuple[int, str, float], list[RunContext]] = {}
            for ctx in runs:
                groups.setdefault((id(ctx.store), ctx.owner, ctx.runtime.settings.lease_seconds), []).append(ctx)
            for (_, _, lease), contexts in groups.items():
                first = contexts[0]
                sent_at = time.monotonic()
                try:
                    held = first.store.heartbeat(first.owner, [c.run_id for c in contexts], lease)
                except Exception as exc:  # the next beat retries; the lease has slack for it
                    log.warning("wflo heartbeat failed: %s", exc)
                    continue
                for ctx in contexts:
                    if ctx.run_id not in held:
                        ctx.lease_lost = True
                        continue
                    ctx.lease_renewed(sent_at, lease)
                    if held[ctx.run_id]:
                        ctx.cancel_requested = True


heartbeats = Heartbeats()
