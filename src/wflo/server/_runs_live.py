"""Live runs: a server-sent events stream of a run's new events, or of every run's status
changes and approvals, fed by one watcher thread per server process.

The watcher asks the store "what changed?" after each :func:`wait_for_change` and hands the
answer to every open stream, so 100 pages watching one run cost one query, not 100. What a
stream receives (``data:`` lines, JSON):

- ``{"kind": "event", "run": ID, "event": {…typed timeline item…}}``, with ``id: SEQ``, so a
  reconnecting browser resumes after the last event it saw (``Last-Event-ID``);
- ``{"kind": "run", "run": {…the list's fields…}}`` when a run's status or head moves;
- ``{"kind": "approval", "approval": {"id", "run_id", "status", "tool"}}`` (feed of all runs);
- ``{"kind": "end"}``: the run has ended and every event was sent; the stream closes.

Why not a NOTIFY on every append (PostgreSQL)? ``NOTIFY`` takes a database-wide lock at
commit, which would serialise every worker's journal writes for the sake of the panel. The
store already notifies ``wflo_runs`` when a run is created, waits, is woken or ends; the
watcher listens to that (so those changes show at once) and reads the runs it watches every
``POLL_SECONDS`` for the rest (one primary-key read per watched run, or one range read of the
``events.at`` index for the feed of all runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..approvals import Inbox
from ..store import FINAL_STATUSES, TYPE_INDEXED, Store, now_iso, open_store
from ._runs_detail import typed
from ._runs_query import LIST_COLUMNS, _item

log = logging.getLogger("wflo.server")

POLL_SECONDS = 0.2
"""How often the watcher looks when nothing told it to (an event shows within about this)."""
FEED_MARGIN_SECONDS = 2.0
"""The feed of all runs reads events stamped this far back, for appends that commit late."""
KEEPALIVE_SECONDS = 15.0
MIN_TICK_SECONDS = 0.05
STREAM_SECONDS = 25.0
"""A stream ends after this long and the browser reconnects (going on after its
``Last-Event-ID``). uvicorn lets open responses finish before it stops, so a server asked to
stop (a deploy, SIGTERM) is never held longer than this by an open page."""
EVENTS_PER_READ = 1000
END: dict[str, Any] = {"kind": "end"}
"""The last message of a run's stream, once the run has ended and every event was sent."""


def wait_for_change(listener: Store | None, timeout: float) -> None:
    """Block until something in the store may have changed, at most ``timeout`` seconds.

    On PostgreSQL ``listener`` is a store of its own (one connection, ``LISTEN wflo_runs``), so
    the server never takes a notification a worker in the same process waits for. SQLite has
    no notification across processes: wait out the timeout.
    """
    if listener is not None:
        listener.wait_for_notification(timeout)
    else:
        time.sleep(timeout)


@dataclass(eq=False)
class Subscriber:
    """One open stream: a run's events after ``after``, or (``run_id`` None) the feed of all runs."""

    loop: asyncio.AbstractEventLoop
    run_id: str | None
    after: int = 0
    tenant: str | None = None
    """Feed only: the runs of this tenant (``None``: every run; the route checked the grant)."""
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    status: str | None = None

    def push(self, message: dict[str, Any]) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
            return True
        except RuntimeError:  # the stream's event loop is gone
            return False


class Watcher:
    """The one thread per server process that looks for changes for every open stream."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._subs: set[Subscriber] = set()
        self._thread: threading.Thread | None = None
        self._listener: Store | None = None
        self._seen: dict[str, tuple[str, int, float]] = {}
        """Feed: each recently changed run's (status, last_seq, when seen)."""
        self._approvals_seen: dict[tuple[str, int], float] = {}

    def subscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.add(sub)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="wflo-runs-watcher", daemon=True)
                self._thread.start()

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _loop(self) -> None:
        idle_since: float | None = None
        last = 0.0
        while True:
            with self._lock:
                subs = list(self._subs)
                if not subs:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 5.0:
                        self._thread = None
                        self._close_listener()
                        return
                else:
                    idle_since = None
            if subs:
                # A burst of notifications (many runs created at once) wakes the watcher often:
                # at most 20 looks a second whatever the rate.
                time.sleep(max(0.0, MIN_TICK_SECONDS - (time.monotonic() - last)))
                last = time.monotonic()
                try:
                    self.tick(subs)
                except Exception:  # a lost connection: the next tick tries again
                    log.warning("the runs watcher could not read the store", exc_info=True)
                    time.sleep(1.0)
            wait_for_change(self._get_listener(), POLL_SECONDS)

    def _get_listener(self) -> Store | None:
        if self.store.dialect != "postgresql":
            return None
        if self._listener is None:
            try:
                self._listener = open_store(self.store.url, verify=False)
            except Exception:
                log.warning("cannot LISTEN on the store; polling", exc_info=True)
                return None
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None

    # ----------------------------------------------------------------- one look
    def tick(self, subs: list[Subscriber]) -> None:
        gone: list[Subscriber] = []
        by_run: dict[str, list[Subscriber]] = {}
        feed: list[Subscriber] = []
        for s in subs:
            (by_run.setdefault(s.run_id, []) if s.run_id else feed).append(s)
        if by_run:
            gone += self._runs(by_run)
        if feed:
            gone += self._feed(feed)
        for s in gone:
            self.unsubscribe(s)

    def _runs(self, by_run: dict[str, list[Subscriber]]) -> list[Subscriber]:
        gone: list[Subscriber] = []
        ids = list(by_run)
        heads: dict[str, tuple[Any, ...]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in self.store.read(
                f"SELECT {LIST_COLUMNS} FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            ):
                heads[row[0]] = row
        for run_id, subs in by_run.items():
            head = heads.get(run_id)
            if head is None:
                continue
            row = head
            last_seq, status = int(row[9]), row[2]
            behind = [s for s in subs if s.after < last_seq]
            if behind:
                items = [typed(e) for e in self.store.events(run_id, min(s.after for s in behind), EVENTS_PER_READ)]
                for s in behind:
                    for item in items:
                        if item["seq"] > s.after and not s.push({"kind": "event", "run": run_id, "event": item}):
                            gone.append(s)
                            break
                    else:
                        s.after = max([s.after] + [i["seq"] for i in items])
            for s in subs:
                if s.status != status or s in behind:
                    s.status = status
                    if not s.push({"kind": "run", "run": _item(row, None)}):
                        gone.append(s)
                if status in FINAL_STATUSES and s.after >= last_seq and s not in gone:
                    s.push(END)  # the run's story is told: the stream ends (a page stops listening)
                    gone.append(s)
        return gone

    def _feed(self, feed: list[Subscriber]) -> list[Subscriber]:
        gone: list[Subscriber] = []
        now = time.monotonic()
        since = now_iso(-FEED_MARGIN_SECONDS)
        rows = self.store.read(FEED_HEADS_SQL, (since,))
        changed = [c for c, seq in rows if c != "system" and (self._seen.get(c) or ("", 0, 0))[1] < int(seq)]
        messages: list[tuple[str | None, dict[str, Any]]] = []
        for start in range(0, len(changed), 500):
            chunk = changed[start : start + 500]
            for row in self.store.read(
                f"SELECT {LIST_COLUMNS} FROM runs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            ):
                seen = self._seen.get(row[0])
                if seen is None or (seen[0], seen[1]) != (row[2], int(row[9])):
                    self._seen[row[0]] = (row[2], int(row[9]), now)
                    messages.append((row[3], {"kind": "run", "run": _item(row, None)}))
        approvals = self.store.read(FEED_APPROVALS_SQL, (since,))
        fresh = [(c, int(q), d) for c, q, d in approvals if (c, int(q)) not in self._approvals_seen]
        ids = []
        for c, q, d in fresh:
            self._approvals_seen[(c, q)] = now
            with contextlib.suppress(ValueError, AttributeError):
                ids.append(str(json.loads(d).get("approval_id")))
        if ids:
            for summary in Inbox(self.store).summaries(ids):
                tenant = summary.pop("tenant")
                messages.append((tenant, {"kind": "approval", "approval": summary}))
        for sub in feed:
            for tenant, msg in messages:
                if (sub.tenant is None or sub.tenant == tenant) and not sub.push(msg):
                    gone.append(sub)
                    break
        # Forget what is older than the window: it cannot be read again.
        for key in [k for k, v in self._seen.items() if now - v[2] > 60]:
            del self._seen[key]
        for akey in [k for k, t in self._approvals_seen.items() if now - t > 60]:
            del self._approvals_seen[akey]
        return gone


FEED_HEADS_SQL = "SELECT chain || '', MAX(seq) FROM events WHERE at >= ? GROUP BY chain || ''"
"""The head of each chain that moved in the last seconds, from ``events_at``. Grouped by the bare
column, SQLite walked the whole key index instead (it gives the chains in order): 540 ms a poll
at 1,000,000 events, against 0.1 ms (docs/benchmarks.md, "eventidx")."""

FEED_APPROVALS_SQL = (
    "SELECT chain, seq, data FROM events WHERE at >= ? AND type IN "
    f"('approval.requested', 'approval.decided', 'approval.expired', 'approval.cancelled') AND {TYPE_INDEXED}"
)
"""The approvals of the last seconds, read through the (type, at) index: four short ranges
however many steps the workers committed meanwhile (SQLite uses that index only when the query
names its condition, ``TYPE_INDEXED``)."""


async def sse(sub: Subscriber, watcher: Watcher, first: list[dict[str, Any]]) -> AsyncIterator[str]:
    """The text of one stream: ``first`` messages, then what the watcher hands over."""
    if first and first[-1] is END:
        yield "retry: 1000\n\n" + "".join(_frame(m) for m in first)
        return
    watcher.subscribe(sub)
    loop = asyncio.get_running_loop()
    until = loop.time() + STREAM_SECONDS
    try:
        yield "retry: 1000\n\n"
        for msg in first:
            yield _frame(msg)
        while True:
            left = until - loop.time()
            if left <= 0:
                return  # the browser reconnects at once, with Last-Event-ID
            try:
                msg = await asyncio.wait_for(sub.queue.get(), timeout=min(KEEPALIVE_SECONDS, left))
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            yield _frame(msg)
            if msg.get("kind") == "end":
                return
    finally:
        watcher.unsubscribe(sub)


def _frame(msg: dict[str, Any]) -> str:
    head = f"id: {msg['event']['seq']}\n" if msg.get("kind") == "event" else ""
    return head + "data: " + json.dumps(msg, separators=(",", ":"), default=str) + "\n\n"
