"""The run context: which run this code belongs to, its journal, and where the next call goes.

Call ids are hierarchical: the workflow's own calls are ``1, 2, 3…``; calls made inside call
``3`` (a step calling a step, an LLM call inside a step) are ``3.1, 3.2…``. When a finished
step is replayed its children are skipped with it, so numbering stays aligned.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import LeaseLost, RunCancelled
from ..store import Head, NewEvent, RunRecord, Store, StoreOp

if TYPE_CHECKING:
    from ._boundary import Guard

_current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("wflo_run", default=None)
_call_path: contextvars.ContextVar[str] = contextvars.ContextVar("wflo_call_path", default="")

CALL_EVENT_TYPES = frozenset({"call.started", "call.completed", "call.failed"})


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """What the journal holds for one call id."""

    call: str
    name: str
    kind: str
    status: str  # "started" | "completed" | "failed"
    data: dict[str, Any]
    seq: int


class RunContext:
    """Everything a running workflow needs; one per run execution, shared by its threads/tasks."""

    def __init__(
        self,
        store: Store,
        record: RunRecord,
        owner: str,
        journal: dict[str, JournalEntry],
        guards: Sequence[Guard] = (),
    ) -> None:
        self.store = store
        self.run_id = record.id
        self.workflow = record.workflow
        self.record = record
        self.owner = owner
        self.journal = journal
        self.head = Head(record.last_seq, record.last_hash, record.cancel_requested)
        self.guards: list[Guard] = list(guards)
        self.state: dict[str, Any] = {}  # per-run state of guards (loop counters, …)
        self._counters: dict[str, int] = {}
        self._lock = threading.RLock()
        self.cancel_requested = record.cancel_requested
        self.lease_lost = False
        self.last_event_type = ""

    @classmethod
    def load(cls, store: Store, record: RunRecord, owner: str, guards: Sequence[Guard] = ()) -> RunContext:
        journal: dict[str, JournalEntry] = {}
        last_type = ""
        for ev in store.events(record.id):
            last_type = ev.type
            if ev.type in CALL_EVENT_TYPES:
                d = ev.data
                status = ev.type.split(".", 1)[1]
                prev = journal.get(d["call"])
                if prev is not None and prev.status != "started" and status == "started":
                    continue
                journal[d["call"]] = JournalEntry(d["call"], d["name"], d.get("kind", "step"), status, d, ev.seq)
        ctx = cls(store, record, owner, journal, guards)
        ctx.last_event_type = last_type
        return ctx

    # ------------------------------------------------------------------ numbering
    def next_call_id(self) -> str:
        parent = _call_path.get()
        with self._lock:
            n = self._counters.get(parent, 0) + 1
            self._counters[parent] = n
        return f"{parent}.{n}" if parent else str(n)

    # ------------------------------------------------------------------ journal writes
    def append(self, events: Sequence[NewEvent], *, ops: Sequence[StoreOp] = (), **projection: Any) -> Head:
        """Append to this run's chain under our lease (raises ``LeaseLost`` if it was taken)."""
        with self._lock:
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

    def check_cancelled(self) -> None:
        """Raise ``RunCancelled`` if someone asked this run to stop (a step boundary)."""
        if self.cancel_requested:
            raise RunCancelled(run_id=self.run_id)
        if self.lease_lost:
            raise LeaseLost(run_id=self.run_id, owner=self.owner)


def current_run() -> RunContext | None:
    """The run the calling code belongs to, or ``None`` outside any workflow."""
    return _current_run.get()
