"""Workers: claim queued and recoverable runs from the store and execute them."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from .._errors import LeaseLost, RunReleased, WfloInterrupt
from .._runtime import runtime as current_runtime
from ..store import QueueRule, RunRecord, Store, parse_iso
from ._executor import execute
from ._heartbeat import heartbeats
from ._queues import Queue, check_declared, declared_queues, queue_name
from ._tables import WorkerInfo, worker_gone, worker_seen
from ._workflow import get_workflow, registered_workflows

log = logging.getLogger("wflo.worker")


class Worker:
    """Runs workflows from the store: queued runs, woken runs, and runs whose owner died.

    Several workers (processes, machines) can share one store: a run is claimed under a
    lease, renewed by heartbeats; a dead worker's runs become claimable when its lease
    expires. On PostgreSQL claiming uses ``FOR UPDATE SKIP LOCKED`` and idle workers wake on
    ``LISTEN/NOTIFY``; on SQLite on a commit seen by the store's change feed (``_feed``),
    within about 10 ms. Either way they look again every ``poll_interval`` seconds (expired
    leases) and when the next timer is due.

    Args:
        concurrency: runs executed at once (threads).
        workflows: names to serve (default: every workflow imported in this process).
        store: the store (default: the configured one).
        on_event: called with ``(kind, run)`` for ``claimed``/``finished``/``failed``/``released``
            (progress output).
        queues: the named queues (``wflo.Queue`` or names) whose runs to take, besides runs
            of no queue (default: every queue declared in this process).
    """

    def __init__(
        self,
        *,
        concurrency: int = 4,
        workflows: Sequence[str] | None = None,
        store: Store | None = None,
        on_event: Callable[[str, RunRecord], None] | None = None,
        queues: Sequence[str | Queue] | None = None,
    ) -> None:
        self.concurrency = max(1, concurrency)
        if isinstance(workflows, str):  # one name (its characters were taken for names)
            workflows = [workflows]
        if isinstance(queues, str | Queue):
            queues = [queues]
        self.workflows = list(workflows) if workflows else None
        self.runtime = current_runtime()
        """The runtime the worker was built in: the runs it executes use it, whichever thread
        serves them."""
        self.store = store or self.runtime.store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:worker-{uuid.uuid4().hex[:6]}"
        self.on_event = on_event
        self._stop = threading.Event()
        self._active: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self.completed = 0
        self.released = 0
        """Runs handed back by ``stop(hand_back=True)``, for another worker to resume."""
        self.queues = None if queues is None else [queue_name(q, where="Worker") or "" for q in queues]
        for name in self.queues or ():
            check_declared(name)
        self._queue_of: dict[str, str | None] = {}  # active run id -> its queue

    def _rules(self) -> list[QueueRule]:
        """The queues to claim from now: those served, less those at their worker_concurrency."""
        declared = declared_queues()
        names = self.queues if self.queues is not None else sorted(declared)
        with self._lock:
            busy = Counter(self._queue_of.values())
        rules = []
        for name in names:
            queue = declared[name]
            if queue.worker_concurrency is None or busy[name] < queue.worker_concurrency:
                rules.append(queue.rule())
        return rules

    def stop(self, *, hand_back: bool = False) -> None:
        """Ask the loop to stop claiming; runs in progress finish first, and then ``run`` returns.

        ``hand_back=True`` (at once, or in a later call, e.g. when a grace period ends): runs in
        progress do not finish here; each stops at its next call boundary (the call in progress
        is recorded first) and releases its lease with a ``run.released`` event, so any worker
        resumes it at once from its journal, without waiting for the lease to lapse.
        """
        self._stop.set()
        if hand_back:
            heartbeats.hand_back(self.owner)

    def _names(self) -> list[str]:
        # Not the runs only their own process can continue (a wrapped graph's): executed here
        # without their call, they would fail for good.
        ours = registered_workflows()
        names = self.workflows or sorted(ours)
        return [n for n in names if n not in ours or not ours[n].resumes_only_in_process]

    def run(self, *, max_runs: int | None = None, idle_timeout: float | None = None) -> int:
        """Serve until stopped (or ``max_runs`` finished, or idle for ``idle_timeout`` s).

        Returns the number of runs this worker executed to an end.
        """
        with self.runtime.activate():
            return self._serve(max_runs, idle_timeout)

    def _serve(self, max_runs: int | None, idle_timeout: float | None) -> int:
        from ..compliance import run_schedule  # scheduled evidence packs (docs/compliance.md)

        cfg = self.runtime.settings
        idle_since = time.monotonic()
        self._seen(first=True)
        next_seen = time.monotonic() + cfg.lease_seconds / 3
        # Held across the loop: a change committed between a claim that found nothing and the
        # wait below is not missed (the wait returns at once).
        changes = self.store.changes()
        with changes, ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="wflo-run") as pool:
            while not self._stop.is_set():
                run_schedule(self.store, background=True)  # no-op unless compliance_schedule is set
                if time.monotonic() >= next_seen:
                    self._seen()
                    next_seen = time.monotonic() + cfg.lease_seconds / 3
                if max_runs is not None and self.completed >= max_runs:
                    break
                with self._lock:
                    free = self.concurrency - len(self._active)
                claimed = None
                sent_at = time.monotonic()  # the claim's lease is counted from here (RunContext.lease_renewed)
                if free > 0 and (max_runs is None or self.completed + len(self._active) < max_runs):
                    names = self._names()
                    if names:
                        try:
                            claimed = self.store.claim_next(self.owner, cfg.lease_seconds, names, self._rules())
                        except Exception as exc:
                            log.warning("wflo worker: claiming failed: %s", exc)
                if claimed is not None:
                    idle_since = time.monotonic()
                    with self._lock:
                        ours = claimed.id in self._active
                    # Our own lease lapsed (heartbeats failed while the database was away) and
                    # we took the run back under the same owner name: the thread running it
                    # carries on. Fencing cannot tell two threads of one owner apart, so a
                    # second thread would run its steps twice, at the same time.
                    if not ours:
                        if self._stop.is_set():
                            # Asked to stop while this claim was on its way: let the run go at
                            # once (nothing of it ran here), for another worker, not start it.
                            self._let_go(claimed)
                            break
                        self._submit(pool, claimed, sent_at)
                    continue
                with self._lock:
                    busy = bool(self._active)
                if busy:  # idle means nothing to do: counted from the end of the last run, not its claim
                    idle_since = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                    break
                if busy and free <= 0:
                    time.sleep(0.01)
                else:
                    changes.wait(self._idle_wait(cfg.poll_interval))
            with self._lock:
                pending = list(self._active.values())
            try:
                for fut in pending:
                    fut.result()
            finally:
                heartbeats.hand_back(self.owner, on=False)
                self._gone()
        return self.completed

    def _let_go(self, record: RunRecord) -> None:
        try:
            self.store.release(record.id, self.owner)
        except Exception as exc:  # its lease then lapses, as a dead worker's would
            log.warning("wflo worker: could not release run %s: %s", record.id, exc)

    def _info(self) -> WorkerInfo:
        return WorkerInfo(id=self.owner, host=socket.gethostname(), pid=os.getpid(), concurrency=self.concurrency,
                          workflows=tuple(self._names()), queues=None if self.queues is None else tuple(self.queues))  # fmt: skip

    def _seen(self, *, first: bool = False) -> None:
        """Keep this worker's row in the registry (the Workers page shows idle workers too).
        Only what a person reads depends on it: a store that is away costs a log line."""
        try:
            worker_seen(self.store, self._info(), self.runtime.settings.lease_seconds, first=first)
        except Exception as exc:
            log.debug("wflo worker: the registry was not updated: %s", exc)

    def _gone(self) -> None:
        try:
            worker_gone(self.store, self.owner)
        except Exception as exc:
            log.debug("wflo worker: the registry row was not removed: %s", exc)

    def _idle_wait(self, poll: float) -> float:
        """How long to wait for a change: ``poll`` at most, less if a timer is due sooner."""
        try:
            wake = self.store.next_wake()
        except Exception:
            return poll
        if wake is None:
            return poll
        return max(0.0, min(poll, (parse_iso(wake) - datetime.now(UTC)).total_seconds() + 0.001))

    def _submit(self, pool: ThreadPoolExecutor, record: RunRecord, leased_at: float | None = None) -> None:
        if self.on_event:
            self.on_event("claimed", record)
        # Submit and register under the lock: the run's own clean-up (which takes the lock)
        # cannot run before it is registered, even if it finishes at once.
        with self._lock:
            self._queue_of[record.id] = record.queue
            self._active[record.id] = pool.submit(self._execute, record, leased_at)

    def _notify(self, kind: str, run_id: str) -> None:
        """Progress output; a store that is away just now (a restart) costs a line, not the run."""
        if self.on_event is None:
            return
        try:
            self.on_event(kind, self.store.get_run(run_id))
        except Exception as exc:
            log.warning("wflo worker: run %s %s; its status could not be read: %s", run_id, kind, exc)

    def _count(self, kind: str) -> None:
        with self._lock:
            if kind == "released":
                self.released += 1
            else:
                self.completed += 1

    def _execute(self, record: RunRecord, leased_at: float | None = None) -> None:
        try:
            kind = self._run_one(record, leased_at)
            if kind:
                self._count(kind)
                self._notify(kind, record.id)
        finally:
            with self._lock:
                self._active.pop(record.id, None)
                self._queue_of.pop(record.id, None)

    def _run_one(self, record: RunRecord, leased_at: float | None = None) -> str:
        """Execute one run; ``finished``, ``failed``, ``released`` (handed back: ``stop``), or
        ``""`` when another worker has it now."""
        try:
            execute(
                self.store, get_workflow(record.workflow), record, self.owner, runtime=self.runtime, leased_at=leased_at
            )
        except LeaseLost:
            log.info("wflo worker: lost the lease of run %s; another worker has it", record.id)
            return ""
        except RunReleased:
            log.info("wflo worker: handed run %s back (stopping); any worker resumes it", record.id)
            return "released"
        except WfloInterrupt as exc:
            # Suspended (waiting) or cancelled: recorded by the executor already.
            log.debug("wflo worker: run %s: %s", record.id, exc)
        except Exception:
            return "failed"
        return "finished"
