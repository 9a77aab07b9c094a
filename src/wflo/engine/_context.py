"""The run context: which run this code belongs to, its journal, and where the next call goes.

Call ids are hierarchical: the workflow's own calls are ``1, 2, 3…``; calls made inside call
``3`` (a step calling a step, an LLM call inside a step) are ``3.1, 3.2…``. When a finished
step is replayed its children are skipped with it, so numbering stays aligned.

Threads and executor tasks started inside a run carry the run with them (see
:func:`install_propagation`). Each one is a *lane* numbered at its spawning point: the k-th
thread or task started from position ``P`` is lane ``P.tk`` (``tk`` at the top), and its calls
are ``P.tk.1, P.tk.2…``. Spawning order is the order of ``start()``/``submit()`` calls in the
spawning code, so a lane's number does not depend on how the threads were scheduled. In a
lane, a call is replayed only from an entry of the *same request* (name, kind and argument
digest): first the entry at its own position, else any unused entry of a sibling lane (same
spawning point), so work that threads pull from a shared queue is matched by content. A lane
call with no such entry runs live, at a position no journal entry holds.

Asyncio tasks (``asyncio.gather``, ``create_task``, a ``TaskGroup``) are not lanes: they share
the numbering of the path they were created at, calls numbered in the order they start. That
order can change on resume when a task's call follows something whose time varies (a live step,
an LLM call, a timer), so a position may hold another task's call. Replay therefore checks the
request where that can happen (:meth:`RunContext.position`): while a task created at the call's
path (other than the calling one) still runs, or when the call's position holds nothing or was
taken by another call, a call is replayed from the earliest unused entry of its parent for the
same request (name, kind, argument digest), and takes that entry's id (its nested calls hang
under it). Without one, the position's entry is replayed (name and kind checked, as in
sequential code, where a prompt may legitimately differ) only if no other task of that path
runs; otherwise the call runs live at an id no entry holds (``P.rk``). Tasks are seen through
``loop.create_task``, which also marks each task's context (``_task_mark``) so that a call
knows its own task (see :func:`install_propagation`). Numbering is unchanged, so journals
written before replay as they did.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import LeaseLost, RunCancelled, RunEndedError, RunReleased
from .._runtime import runtime as current_runtime
from ..store import Head, NewEvent, RunRecord, Store, StoreOp
from ._tables import journal_read

if TYPE_CHECKING:
    from .._runtime import Runtime
    from ._boundary import Guard

Held = tuple[Sequence[NewEvent], Sequence[StoreOp], dict[str, Any]]
"""An append held back by :meth:`RunContext.hold_appends`: its events, ops and projection."""

log = logging.getLogger("wflo")

_current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("wflo_run", default=None)
_call_path: contextvars.ContextVar[str] = contextvars.ContextVar("wflo_call_path", default="")
_task_mark: contextvars.ContextVar[object] = contextvars.ContextVar("wflo_task", default=None)
"""In a task created inside a run, a token of that task (``None`` in the run's own task)."""

CALL_EVENT_TYPES = frozenset({"call.started", "call.completed", "call.failed"})
_STATUS = {"call.started": "started", "call.completed": "completed", "call.failed": "failed"}

LEASE_MARGIN = 1 / 3
"""The share of a lease a run does not count on: a lease renewed by a request that left at
monotonic time ``t`` is trusted until ``t + lease_seconds * (1 - LEASE_MARGIN)``.

Why a third: the heartbeat thread renews every ``lease_seconds / 3``, so in normal operation
the last renewal is at most a third of a lease (and a round trip) old and a run never pays a
round trip of its own before a call; it renews by itself only after a beat was missed. The
third left over is the slack between the check and the call's first effect (the thread being
descheduled, a GC pause, a slow ``before`` of the last guard) and for the store's clock
running a little fast against ours (lease expiry is judged on the store's clock). Counting from
when the request *left* (not when it was answered) errs early: the store stamped the lease
later than that."""

monotonic = time.monotonic
"""The clock lease validity is judged on here (a module name, so a test can step it)."""


class JournalEntry:
    """What the journal holds for one call id.

    Only what matching needs is kept as fields; the event's data (the call's output or
    error, its usage…) stays as the stored JSON text and is parsed when read, so a resumed
    run with a long journal holds a few hundred bytes per finished call, not a parsed tree.
    """

    __slots__ = ("_json", "call", "digest", "kind", "name", "seq", "status")

    def __init__(
        self,
        call: str,
        name: str,
        kind: str,
        status: str,  # "started" | "completed" | "failed"
        data: dict[str, Any] | str,
        seq: int,
        digest: str | None = None,
    ) -> None:
        self.call = call
        self.name = name
        self.kind = kind
        self.status = status
        self.seq = seq
        self._json = data if isinstance(data, str) else json.dumps(data)
        self.digest = digest if digest is not None or not isinstance(data, dict) else data.get("digest")

    @property
    def data(self) -> dict[str, Any]:
        """The event's data (parsed on each read; callers read it once per replay)."""
        value: dict[str, Any] = json.loads(self._json)
        return value

    def __repr__(self) -> str:
        return f"JournalEntry(call={self.call!r}, name={self.name!r}, kind={self.kind!r}, status={self.status!r}, seq={self.seq})"


class RunContext:
    """Everything a running workflow needs; one per run execution, shared by its threads/tasks."""

    def __init__(
        self,
        store: Store,
        record: RunRecord,
        owner: str,
        journal: dict[str, JournalEntry],
        guards: Sequence[Guard] | Callable[[], Sequence[Guard]] = (),
        runtime: Runtime | None = None,
    ) -> None:
        self.store = store
        self.runtime: Runtime = runtime if runtime is not None else current_runtime()
        """The runtime that started or resumed this execution: its prices, policies, settings."""
        self.run_id = record.id
        self.workflow = record.workflow
        self.record = record
        self.owner = owner
        self.journal = journal
        self.head = Head(record.last_seq, record.last_hash, record.cancel_requested)
        # The guard chain, or what builds it on first use (``guards``): a run that makes no
        # guarded call never builds one (issue 20: an empty workflow's cost).
        self._guards: list[Guard] | None = None if callable(guards) else list(guards)
        self._chain: Callable[[], Sequence[Guard]] | None = guards if callable(guards) else None
        self.hooks: Any = None
        """What each guard of the chain does (``_boundary._hooks``), read once per chain."""
        self.state: dict[str, Any] = {}  # per-run state of guards (loop counters, …)
        self._counters: dict[str, int] = {}
        self._lock = threading.RLock()
        # Appends queue on their own lock: one waiting for the store (a slow commit, a lock held
        # by another connection) must not hold up numbering a call or spawning a lane, which the
        # event loop of an async run does (``loop.getaddrinfo`` submits to an executor).
        self._write_lock = threading.RLock()
        self.cancel_requested = record.cancel_requested
        self.lease_lost = False
        self.release_requested = False
        """Its worker is stopping and hands it back: it stops at its next call (``RunReleased``)."""
        self._lease_seconds = self.runtime.settings.lease_seconds
        # Until a claim or renewal says otherwise the lease is not counted on (the first call
        # renews): only the paths that know when their claim left pass ``leased_at``.
        self._lease_valid_until = float("-inf")
        self.closed = False
        """True once this execution of the run ended (finished, failed, suspended or lost): a
        thread it started that calls afterwards is refused (``RunEndedError``)."""
        self.last_event_type = ""
        self.fresh = False
        """True when this execution is the run's first, begun by the caller that created it: no
        earlier execution can have left anything behind (kept payloads) for its end to clear."""
        self._used: set[str] = set()  # journal entries a lane call has taken (by content)
        self._siblings: dict[str, list[JournalEntry]] | None = None  # spawning point -> lane entries
        self._by_parent: dict[tuple[str, str, str], deque[JournalEntry]] | None = None  # see _requests
        self._tasks: dict[str, dict[asyncio.Task[Any], object]] = {}  # call path -> live tasks there: marks
        self._held: tuple[int, list[Held]] | None = None  # (thread, appends held back; see hold_appends)
        self._in_flight: Any = None  # an append from the loop not answered yet (append_on_loop)
        self._open: dict[int, Callable[[], None]] = {}  # calls still being read (see keep_open)
        install_propagation()

    @property
    def guards(self) -> list[Guard]:
        """The run's guard chain, in order; built at the first look when the context was given
        its builder (the first guarded call, replay or record of the execution), once."""
        guards = self._guards
        if guards is None:
            with self._lock:
                guards = self._guards
                if guards is None:
                    assert self._chain is not None
                    guards = self._guards = list(self._chain())
                    self._chain = None
        return guards

    @guards.setter
    def guards(self, guards: Sequence[Guard]) -> None:
        with self._lock:
            self._guards, self._chain = list(guards), None

    # ------------------------------------------------------------------ lease
    def lease_renewed(self, sent_at: float, lease_seconds: float | None = None) -> None:
        """A claim or heartbeat of this run, sent at monotonic ``sent_at``, gave us the lease."""
        lease = self._lease_seconds if lease_seconds is None else lease_seconds
        until = sent_at + lease * (1 - LEASE_MARGIN)
        with self._lock:
            if until > self._lease_valid_until:
                self._lease_valid_until = until

    def ensure_lease(self) -> None:
        """Before a call starts: raise ``LeaseLost`` unless the lease is surely still ours.

        The journal's fence only stops *writes*; a call starts without one. A worker whose lease
        lapsed while its heartbeats failed (the store restarting) or while it was paused would
        otherwise start the next call while another worker, having claimed the expired run,
        starts the same one. Fresh lease (the usual case): no round trip. Otherwise renew now;
        a renewal that is refused (the run is someone else's) or fails (we cannot tell) gives
        the run up: the journal is intact and the run is claimable again.
        """
        if self.lease_lost:
            raise LeaseLost(run_id=self.run_id, owner=self.owner)
        if monotonic() < self._lease_valid_until:
            return
        sent_at = monotonic()
        try:
            held = self.store.heartbeat(self.owner, [self.run_id], self._lease_seconds)
        except Exception as exc:
            self.lease_lost = True
            raise LeaseLost(run_id=self.run_id, owner=self.owner) from exc
        if self.run_id not in held:
            self.lease_lost = True
            raise LeaseLost(run_id=self.run_id, owner=self.owner)
        if held[self.run_id]:
            self.cancel_requested = True
        self.lease_renewed(sent_at)

    def lease_fresh(self) -> bool:
        """True when :meth:`ensure_lease` would return at once (no round trip, no error)."""
        return not self.lease_lost and monotonic() < self._lease_valid_until

    @classmethod
    def load(
        cls,
        store: Store,
        record: RunRecord,
        owner: str,
        guards: Sequence[Guard] | Callable[[], Sequence[Guard]] = (),
        *,
        fresh: bool = False,
        runtime: Runtime | None = None,
    ) -> RunContext:
        """The context of ``record``, its journal read from the store.

        ``fresh``: the run was just created under ``owner`` (its events are ``run.created``
        and ``run.started``, no calls), so nothing needs to be read.
        """
        journal: dict[str, JournalEntry] = {}
        last_type = "run.started" if fresh else ""
        names: dict[str, str] = {}  # one string per distinct name, however many calls use it
        if not fresh:
            for seq, type_, data_json in store.read(*journal_read(record.id)):
                last_type = type_
                if type_ not in CALL_EVENT_TYPES:
                    continue
                d = json.loads(data_json)
                status = _STATUS[type_]
                prev = journal.get(d["call"])
                if prev is not None and prev.status != "started" and status == "started":
                    continue
                name = names.setdefault(d["name"], d["name"])
                kind = names.setdefault(d.get("kind", "step"), d.get("kind", "step"))
                journal[d["call"]] = JournalEntry(d["call"], name, kind, status, data_json, int(seq), d.get("digest"))
        ctx = cls(store, record, owner, journal, guards, runtime)
        ctx.last_event_type = last_type
        ctx.fresh = fresh
        return ctx

    # ------------------------------------------------------------------ numbering
    def _parent(self) -> str:
        parent = _call_path.get()
        lane = getattr(_lane, "value", None)
        if lane is not None and lane[0] is self and parent == lane[2]:
            # The task runs in a context its executor copied before our lane was set (LangChain's
            # ContextThreadPoolExecutor.map does): the thread still knows its lane.
            return str(lane[1])
        return parent

    def spawn(self) -> str:
        """The lane of a thread or task started now from the current position."""
        parent = self._parent()
        key = parent + "|spawn"
        with self._lock:
            n = self._counters.get(key, 0) + 1
            self._counters[key] = n
        return f"{parent}.t{n}" if parent else f"t{n}"

    def position(self, name: str, kind: str, digest: Callable[[], str]) -> tuple[str, JournalEntry | None]:
        """The id of the next call and the journal entry to replay it from (``None``: run it).

        On the main path this is the entry at the call's position, unless the journal says
        otherwise (see the module docstring: tasks): then the entry of the same request, or none.
        In a lane (see the module docstring) the entry must be of the same request, found by
        content among the lanes of the same spawning point; a call with none gets a position
        that no entry holds.
        """
        if self.closed:
            raise RunEndedError(run_id=self.run_id, name=name)
        parent = self._parent()
        with self._lock:  # numbered here, in this frame: every call passes here
            n = self._counters.get(parent, 0) + 1
            self._counters[parent] = n
        call_id = f"{parent}.{n}" if parent else str(n)
        if not self.journal:
            return call_id, None  # a run's first execution: nothing to replay
        parent = call_id.rpartition(".")[0]
        spawn_point, _, lane = parent.rpartition(".")
        if not (lane.startswith("t") and lane[1:].isdigit()):
            entry = self.journal.get(call_id)
            if entry is not None and call_id not in self._used and not self._racing(parent):
                self._used.add(call_id)
                return call_id, entry
            return self._by_request(call_id, parent, entry, name, kind, digest)
        want = digest()
        with self._lock:
            entry = self.journal.get(call_id)
            if entry is not None and entry.status == "started" and (entry.name, entry.kind) == (name, kind):
                return call_id, entry  # an at-most-once call in flight when the run died
            if entry is not None and call_id not in self._used and _same(entry, name, kind, want):
                self._used.add(call_id)
                return call_id, entry
            for other in self._lane_entries(spawn_point):
                if other.call not in self._used and _same(other, name, kind, want):
                    self._used.add(other.call)
                    return other.call, other
            # Runs live: skip positions that hold another request's entry.
            while call_id in self.journal:
                n = self._counters.get(parent, 0) + 1
                self._counters[parent] = n
                call_id = f"{parent}.{n}"
            self._used.add(call_id)
            return call_id, None

    def _by_request(
        self, call_id: str, parent: str, entry: JournalEntry | None, name: str, kind: str, digest: Callable[[], str]
    ) -> tuple[str, JournalEntry | None]:
        """A main-path call whose position may hold another task's call (see the module
        docstring): the earliest unused entry of its parent for the same request (not the one at
        its own position first: of a task's identical calls, a poll, that may be a later one);
        else its position's entry if no other task can have made it; else none, at an id that
        no entry holds."""
        with self._lock:
            want: str | None = None
            same = self._requests().get((parent, name, kind))
            if same:
                while same and same[0].call in self._used:
                    same.popleft()
                for other in same:
                    if other.call not in self._used:
                        if want is None:
                            want = digest()
                        if other.digest == want:
                            self._used.add(other.call)
                            return other.call, other
            if entry is None:
                return call_id, None
            if call_id not in self._used and (entry.digest is None or not self._racing(parent)):
                # No other task can have made this call (or the journal predates digests): the
                # position decides, as in sequential code (a prompt may differ on replay).
                self._used.add(call_id)
                return call_id, entry
            # Another task's call holds this position: run live where no entry is.
            key = parent + "|r"
            while True:
                n = self._counters.get(key, 0) + 1
                self._counters[key] = n
                moved = f"{parent}.r{n}" if parent else f"r{n}"
                if moved not in self.journal:
                    return moved, None

    def _requests(self) -> dict[tuple[str, str, str], deque[JournalEntry]]:
        """The journal's entries by ``(parent, name, kind)``, in journal order (built once)."""
        if self._by_parent is None:
            index: dict[tuple[str, str, str], list[JournalEntry]] = {}
            for entry in self.journal.values():
                index.setdefault((entry.call.rpartition(".")[0], entry.name, entry.kind), []).append(entry)
            self._by_parent = {k: deque(sorted(v, key=lambda e: e.seq)) for k, v in index.items()}
        return self._by_parent

    def _racing(self, parent: str) -> bool:
        """Whether a task started at ``parent`` (whose calls share its numbering), other than the
        calling one, still runs."""
        tasks = self._tasks.get(parent)
        if not tasks:
            return False
        mine = _task_mark.get()
        with self._lock:
            return any(mark is not mine and not task.done() for task, mark in tasks.items())

    def one_task(self) -> bool:
        """Whether no task created inside this run still runs (seen through ``create_task``,
        see :func:`install_propagation`): the run's calls are then made by its own task alone."""
        with self._lock:  # another thread of the run may be starting a task of its own
            return not self._tasks

    def live_tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks created inside this run that have not ended."""
        with self._lock:
            return [task for tasks in self._tasks.values() for task in tasks if not task.done()]

    def task_started(self, task: asyncio.Task[Any], path: str, mark: object) -> None:
        """``task`` (known by ``mark`` in its context) was created inside this run at call path
        ``path`` (see ``install_propagation``)."""
        if task.done():
            return
        with self._lock:
            self._tasks.setdefault(path, {})[task] = mark
        task.add_done_callback(functools.partial(self._task_ended, path))

    def _task_ended(self, path: str, task: asyncio.Task[Any]) -> None:
        with self._lock:
            tasks = self._tasks.get(path)
            if tasks is not None:
                tasks.pop(task, None)
                if not tasks:  # none left there: the path goes (``one_task`` looks at the paths)
                    del self._tasks[path]

    def _lane_entries(self, spawn_point: str) -> list[JournalEntry]:
        if self._siblings is None:
            index: dict[str, list[JournalEntry]] = {}
            for entry in self.journal.values():
                parent = entry.call.rpartition(".")[0]
                head, _, lane = parent.rpartition(".")
                if lane.startswith("t") and lane[1:].isdigit() and entry.status != "started":
                    index.setdefault(head, []).append(entry)
            for entries in index.values():
                entries.sort(key=lambda e: e.seq)
            self._siblings = index
        return self._siblings.get(spawn_point, [])

    def close(self) -> None:
        """This execution ended: its threads' later calls are refused."""
        self.closed = True

    def keep_open(self, key: int, end: Callable[[], None]) -> None:
        """A call of this run returned to its code still open (a stream it reads): ``end()``
        records it as far as it went, if the code has not by the time the run ends
        (:meth:`end_open`). The call lets go of it (:meth:`let_go`) when it ends by itself."""
        with self._lock:
            self._open[key] = end

    def let_go(self, key: int) -> None:
        """The call kept open under ``key`` ended by itself."""
        with self._lock:
            self._open.pop(key, None)

    def has_open(self) -> bool:
        return bool(self._open)

    async def aend_open(self) -> None:
        """:meth:`end_open` in an async run, on its event loop: a call kept open with an
        ``aend`` coroutine function (an async stream: its connection is closed on its loop)
        is ended with it; the others on the store's threads."""
        with self._lock:
            ends = [(key, getattr(end, "aend", None)) for key, end in self._open.items()]
        for key, aend in ends:
            if aend is not None:
                with self._lock:
                    if self._open.pop(key, None) is None:
                        continue
                try:
                    await aend()
                except LeaseLost:
                    return
                except Exception:
                    log.exception("wflo: could not record a call of run %s left open by its code", self.run_id)
        if self._open:
            await self.store.off_loop(self.end_open, key=self.run_id)

    def end_open(self) -> None:
        """End the calls still open as the run ends (a stream its code stopped reading, by
        ``break`` or an error, and never closed): each is recorded, and its money settled, as
        far as it went, before the run's own end. Left open, its reservation would be held
        past the run's end and its record written after it (or never)."""
        while True:
            with self._lock:
                if not self._open:
                    return
                _, end = self._open.popitem()
            try:
                end()
            except LeaseLost:
                return  # another worker owns the run now: it settles what was in flight
            except Exception:
                log.exception("wflo: could not record a call of run %s left open by its code", self.run_id)

    # ------------------------------------------------------------------ journal writes
    def hold_appends(self) -> _Holding:
        """Inside the block, this thread's :meth:`append` calls are held in the yielded list
        instead of written (each returns the current head); :meth:`write_held` writes them later.

        For code that runs on an async run's event loop and must not wait for the store there
        (a call begun on the loop, see ``_boundary``): a guard that records an event as it
        refuses the call has it written, in order, on the store's threads. Other threads of the
        run append as usual meanwhile. (A class, not ``@contextmanager``: an async step enters
        it once to three times, and a generator's context manager costs four times as much.)
        """
        return _Holding(self)

    def write_held(self, held: Sequence[Held]) -> None:
        """Write appends held by :meth:`hold_appends`, in the order they were made."""
        for events, ops, projection in held:
            self.append(events, ops=ops, **projection)

    def append(self, events: Sequence[NewEvent], *, ops: Sequence[StoreOp] = (), **projection: Any) -> Head:
        """Append to this run's chain under our lease (raises ``LeaseLost`` if it was taken)."""
        held = self._held
        if held is not None and held[0] == threading.get_ident():
            if self.lease_lost:
                raise LeaseLost(run_id=self.run_id, owner=self.owner)
            held[1].append((events, ops, projection))
            return self.head
        with self._write_lock:
            if self._in_flight is not None:  # this thread's, on the loop (the lock is re-entrant)
                self._land()
            if self.lease_lost:
                raise LeaseLost(run_id=self.run_id, owner=self.owner)
            try:
                self.head = self.store.append(self.run_id, self.head, events, owner=self.owner, ops=ops, **projection)
            except LeaseLost:
                self.lease_lost = True
                raise
            if self.head.cancel_requested:
                self.cancel_requested = True
            return self.head

    async def append_on_loop(
        self, writer: Any, events: Sequence[NewEvent], *, end: dict[str, Any] | None = None
    ) -> Head | None:
        """:meth:`append` from the run's event loop through ``writer`` (``Store.loop_writer``):
        the statement is awaited, the loop never blocked. ``None`` (nothing written) when
        another thread of the run is appending now: the caller writes through ``off_loop``. The write lock is held while the
        append is in flight, so the run's other threads append after it, on the head it
        leaves; code on the loop's own thread that appends meanwhile (a sync call of another
        task) first ends this append where it stands (:meth:`_land`), then appends after it.
        ``end``: the run's final append, its ``status`` and ``output`` (``writer.append_end``)."""
        if self._in_flight is not None:
            return None
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            if self.lease_lost:
                raise LeaseLost(run_id=self.run_id, owner=self.owner)
            if end is None:
                pending = writer.append(self.run_id, self.head, events, owner=self.owner)
            else:
                pending = writer.append_end(self.run_id, self.head, events, owner=self.owner, **end)
            self._in_flight = pending
            try:
                head: Head = await pending
            except LeaseLost:
                self.lease_lost = True
                raise
            finally:
                landed = self._in_flight is not pending  # by a sync append meanwhile: applied there
                self._in_flight = None
            if not landed:
                self.head = head
                if head.cancel_requested:
                    self.cancel_requested = True
            return head
        finally:
            self._write_lock.release()

    def _land(self) -> None:
        """End the append in flight from the loop (:meth:`append_on_loop`) on this thread, the
        loop's, before a sync append made there (the write lock is re-entrant: it would
        otherwise be written on the head before the one in flight, and refused as a lost
        lease). Its answer is waited for here, blocking, as the sync append's own will be; the
        task awaiting it takes the same outcome. Its ``LeaseLost`` is the run's; another error
        is its own task's (the head stays where it was, as if it had failed on a store thread)."""
        pending, self._in_flight = self._in_flight, None
        try:
            head: Head = pending.finish()
        except LeaseLost:
            self.lease_lost = True
            return
        except Exception:
            return
        self.head = head
        if head.cancel_requested:
            self.cancel_requested = True

    def check_cancelled(self) -> None:
        """Raise ``RunCancelled`` if someone asked this run to stop (a step boundary), or
        ``RunReleased`` if its worker is stopping and hands it back."""
        if self.cancel_requested:
            raise RunCancelled(run_id=self.run_id)
        if self.lease_lost:
            raise LeaseLost(run_id=self.run_id, owner=self.owner)
        if self.release_requested:
            raise RunReleased(run_id=self.run_id, owner=self.owner)


class _Holding:
    """:meth:`RunContext.hold_appends`'s block."""

    __slots__ = ("ctx", "held", "outer")

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.held: list[Held] = []
        self.outer: tuple[int, list[Held]] | None = None

    def __enter__(self) -> list[Held]:
        ctx = self.ctx
        self.outer, ctx._held = ctx._held, (threading.get_ident(), self.held)
        return self.held

    def __exit__(self, *exc: object) -> None:
        self.ctx._held = self.outer


def current_run() -> RunContext | None:
    """The run the calling code belongs to, or ``None`` outside any workflow."""
    ctx = _current_run.get()
    if ctx is None:
        lane = getattr(_lane, "value", None)
        if lane is not None:
            return lane[0]  # type: ignore[no-any-return]
    return ctx


def _same(entry: JournalEntry, name: str, kind: str, digest: str) -> bool:
    return entry.name == name and entry.kind == kind and entry.digest == digest


# ---------------------------------------------------------------------- propagation
_installed = False
_install_lock = threading.Lock()
_lane = threading.local()
"""``(run, lane, spawning path)`` while a thread runs a task started inside a run."""


def in_lane(ctx: RunContext, lane: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` to run in another thread as lane ``lane`` of ``ctx`` (in a copy of the caller's
    context, or, for ``functools.partial(context.run, f, …)`` as ``asyncio.to_thread`` and
    LangChain's executors submit, inside that context, where the work really runs)."""

    base = ctx._parent()

    def entered(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            run_token = _current_run.set(ctx)
            path_token = _call_path.set(lane)
            outer = getattr(_lane, "value", None)
            _lane.value = (ctx, lane, base)
            try:
                return f(*args, **kwargs)
            finally:
                _lane.value = outer
                _call_path.reset(path_token)
                _current_run.reset(run_token)

        return run

    if isinstance(fn, functools.partial) and fn.args:
        inner = getattr(fn.func, "__self__", None)
        if isinstance(inner, contextvars.Context) and getattr(fn.func, "__name__", "") == "run":
            return functools.partial(inner.run, entered(fn.args[0]), *fn.args[1:], **fn.keywords)
    return functools.partial(contextvars.copy_context().run, entered(fn))


def install_propagation() -> None:
    """Make threads and thread-pool tasks started inside a run carry the run (idempotent).

    Wraps ``threading.Thread.start`` and ``concurrent.futures.ThreadPoolExecutor.submit``
    (which ``asyncio.to_thread``, ``loop.run_in_executor`` and LangChain's, LangGraph's and
    CrewAI's executors use), and ``asyncio.BaseEventLoop.create_task`` (which ``create_task``,
    ``gather``, ``TaskGroup`` and anyio use) to tell the run which of its tasks still run (the
    task itself is left alone). Outside a run they behave exactly as before. Installed by the
    first run of a process (or ``wflo.init()``), not at import. A pool's own worker threads
    and wflo's threads (``wflo-*``) are not bound to the run that happened to start them:
    each task carries its own submitter's run.
    """
    global _installed
    if _installed:
        return
    with _install_lock:
        if _installed:
            return
        import concurrent.futures.thread as cft

        pool_worker = cft._worker
        thread_start = threading.Thread.start
        pool_submit = cft.ThreadPoolExecutor.submit
        loop_create_task = asyncio.BaseEventLoop.create_task

        def start(self: threading.Thread) -> None:
            ctx = _current_run.get()
            if (
                ctx is not None
                and getattr(self, "_target", None) is not pool_worker
                and not self.name.startswith("wflo-")
            ):
                self.run = in_lane(ctx, ctx.spawn(), self.run)  # type: ignore[method-assign]
            thread_start(self)

        def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            ctx = _current_run.get()
            if ctx is not None:
                fn = in_lane(ctx, ctx.spawn(), fn)
            return pool_submit(self, fn, *args, **kwargs)

        def create_task(self: asyncio.BaseEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            context = kwargs.get("context")
            ctx = _current_run.get() if context is None else context.get(_current_run)
            if ctx is None:
                return loop_create_task(self, coro, **kwargs)
            mark = object()
            if context is not None or self.get_task_factory() is not None:
                # A factory may predate ``context=``: the task is not marked, and so not told
                # from the task that created it (its calls count it as racing them).
                path = _call_path.get() if context is None else context.get(_call_path, "")
            else:  # the copy the task would make, with its mark
                context = kwargs["context"] = contextvars.copy_context()
                context.run(_task_mark.set, mark)
                path = context.get(_call_path, "")
            task = loop_create_task(self, coro, **kwargs)
            ctx.task_started(task, path, mark)
            return task

        start.__wflo_wrapped__ = thread_start  # type: ignore[attr-defined]
        submit.__wflo_wrapped__ = pool_submit  # type: ignore[attr-defined]
        create_task.__wflo_wrapped__ = loop_create_task  # type: ignore[attr-defined]
        threading.Thread.start = start  # type: ignore[method-assign]
        cft.ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]
        asyncio.BaseEventLoop.create_task = create_task  # type: ignore[method-assign]
        _installed = True
