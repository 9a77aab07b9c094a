"""The engine's SQL: the read of a run's journal, and its own table, the worker registry.

The registry says which worker processes are up, busy or idle.

A worker's leases say what it runs, but a worker holding none (idle, waiting for work) left no
trace, so an operator could not tell "no worker is up" from "every worker is idle". Each
``Worker`` now keeps a row here: written when it starts, renewed as it polls (every third of
its lease), deleted when it stops. A worker killed without a goodbye keeps its row until the
row's ``expires_at`` passes; readers show only rows that have not expired, on the store's clock
(the one leases are judged on), and the next worker to start deletes rows expired for a day.

Nothing in the engine reads this table: claims, recovery and fencing go by the runs' leases
alone, so a stale or forged row misleads a reader of the Workers page, never the engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..store import Migration, iso, parse_iso

if TYPE_CHECKING:
    from ..store import Store


def journal_read(run_id: str) -> tuple[str, tuple[str]]:
    """The read of a run's journal (what ``RunContext.load`` needs), as ``(sql, params)``:
    a woken run sends it with its claim (``Store.read_ahead``)."""
    return "SELECT seq, type, data FROM events WHERE chain = ? ORDER BY seq", (run_id,)


# The worker registry: a worker holding no lease (idle) used to be invisible to
# the Workers page and API. Read by those only, never by the engine's claims or fencing. (IF NOT
# EXISTS: a test that sets a store's version back applies it again.)
M023_WORKERS = Migration(
    "m023_workers",
    """
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    workflows TEXT NOT NULL,
    queues TEXT,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_expires ON workers (expires_at)
""",
)

# Rows of workers that stopped without a goodbye are deleted this long after they expired.
_KEEP_EXPIRED_SECONDS = 86_400.0


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as the registry shows it."""

    id: str
    host: str
    pid: int
    concurrency: int
    workflows: tuple[str, ...]
    queues: tuple[str, ...] | None  # None: every queue the worker's modules declare
    started_at: str = ""
    seen_at: str = ""
    expires_at: str = ""

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> WorkerInfo:
        id_, host, pid, concurrency, workflows, queues, started, seen, expires = row
        return cls(
            id=str(id_),
            host=str(host),
            pid=int(pid),
            concurrency=int(concurrency),
            workflows=tuple(json.loads(workflows)),
            queues=None if queues is None else tuple(json.loads(queues)),
            started_at=str(started),
            seen_at=str(seen),
            expires_at=str(expires),
        )


def worker_seen(store: Store, worker: WorkerInfo, ttl_seconds: float, *, first: bool = False) -> None:
    """Record that ``worker`` is up, until ``ttl_seconds`` from now (the store's clock).

    ``first``: the worker is starting; its start time is set, and rows of workers that expired
    more than a day ago are deleted."""
    queues = None if worker.queues is None else json.dumps(list(worker.queues))
    workflows = json.dumps(list(worker.workflows))

    def body(cur: Any) -> None:
        now = store.now(cur=cur)  # the store's clock, as leases are judged
        moment = parse_iso(now)
        until = iso(moment, ttl_seconds)
        if first:
            store.execute(cur, "DELETE FROM workers WHERE expires_at < ?", (iso(moment, -_KEEP_EXPIRED_SECONDS),))
        store.execute(
            cur,
            "INSERT INTO workers (id, host, pid, concurrency, workflows, queues, started_at, seen_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, "
            "expires_at = excluded.expires_at, workflows = excluded.workflows, queues = excluded.queues",
            (worker.id, worker.host, worker.pid, worker.concurrency, workflows, queues, now, now, until),
        )

    store.write(body)


def worker_gone(store: Store, worker_id: str) -> None:
    """Delete ``worker_id``'s row: it stopped."""
    store.write(lambda cur: store.execute(cur, "DELETE FROM workers WHERE id = ?", (worker_id,)))


def registered_workers(store: Store) -> list[WorkerInfo]:
    """The workers that are up: rows not expired by the store's clock, by id."""
    rows = store.read(
        "SELECT id, host, pid, concurrency, workflows, queues, started_at, seen_at, expires_at FROM workers "
        "WHERE expires_at >= ? ORDER BY id",
        (store.now(),),
    )
    return [WorkerInfo.from_row(r) for r in rows]
