"""Claiming the next run: recovery, wake-ups, and queued runs under their queue's limits.

Every query here reads a partial index of *active* runs (``m016_queues_claim``), so its cost
does not grow with the number of finished runs.

Order of a claim: a run whose owner's lease expired (it already holds its queue's slot), then
a waiting run whose wake-up time has come, then a queued run. Queued runs are taken highest
``priority`` first, then oldest first; named queues take turns.

Limits of a named queue hold across every process sharing the store because they are
checked inside the claiming transaction, after the queue's lock: on PostgreSQL a
transaction-scoped advisory lock per queue (claims of one queue wait for each other, other
queues and unnamed runs do not), on SQLite the database's write lock. On SQLite the search is
first made without the write lock; only when it finds a run is the write lock taken and the
search repeated, so idle workers polling a busy store never queue behind its writers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._records import RUN_COLUMNS, RunRecord

if TYPE_CHECKING:
    from ._base import Store


@dataclass(frozen=True, slots=True)
class QueueRule:
    """A named queue's limits, as the claiming transaction enforces them."""

    name: str
    concurrency: int | None = None
    """Runs of this queue executing at once, across all workers (``None``: no limit)."""
    per_partition: int | None = 1
    """Runs with the same partition key executing at once (``None``: no limit)."""
    rate_limit: tuple[int, float] | None = None
    """At most ``N`` runs started in any ``per_seconds`` window: ``(N, per_seconds)``."""

    @property
    def limited(self) -> bool:
        return self.concurrency is not None or self.per_partition is not None or self.rate_limit is not None


_turn = itertools.count()


def claim_next(
    store: Store,
    owner: str,
    lease_seconds: float,
    workflows: Sequence[str] | None = None,
    queues: Sequence[QueueRule] | None = None,
) -> RunRecord | None:
    """See :meth:`Store.claim_next`."""
    wf_sql, wf_params = "", []
    if workflows:
        # ``workflow || ''``: kept off the runs_workflow index, which holds every finished run
        # too (SQLite's planner would walk it for the ORDER BY); the partial indexes are smaller.
        wf_sql = f" AND workflow || '' IN ({', '.join('?' * len(workflows))})"
        wf_params = list(workflows)
    rules = list(queues or ())
    names = [q.name for q in rules]
    # Runs of a queue this worker does not know are not its to take: it cannot hold their limits.
    q_sql = " AND (queue IS NULL" + (f" OR queue IN ({', '.join('?' * len(names))})" if names else "") + ")"
    scope = _Scope(wf_sql, wf_params, wf_sql + q_sql, wf_params + names, {q.name: q for q in rules}, [])
    turn = next(_turn)

    if store.claim_outside_lock:

        def look() -> bool:
            with store._connection() as conn:
                cur = conn.cursor()
                try:
                    return _find(store, cur, scope, store._clock(cur), turn, lock=False) is not None
                finally:
                    cur.close()

        if not store._retrying(look):
            return None

    def body(cur: Any) -> Callable[[], RunRecord | None]:
        # A claim commits synchronously on PostgreSQL ("Commit modes" in ``_postgres``): one
        # lost with the server would let its claimer start a step that another worker, having
        # claimed the run again, starts too. There it is also pipelined (``_claim_tx``) and
        # reads the server's clock inside its statements: a wake-up is two round trips (the
        # searches; the update with the commit).
        clock = None if store.server_clock else store._clock(cur)
        run_id = _find(store, cur, scope, clock, turn, lock=True)
        if run_id is None:
            return lambda: None
        if scope.locked and clock is not None:
            # The clock again: the queue's lock may have been waited for, and started_at is
            # when the run really got its place (a finished run's place, perhaps, freed since).
            clock = store._clock(cur)
        now, now_p = store._time_sql(clock)
        until, until_p = store._time_sql(clock, lease_seconds)
        store.execute(
            cur,
            f"UPDATE runs SET lease_owner = ?, lease_expires_at = {until}, status = 'running', "
            f"attempts = attempts + 1, wake_at = NULL, updated_at = {now}, started_at = COALESCE(started_at, {now}) "
            f"WHERE id = ? RETURNING {RUN_COLUMNS}, queue",
            [owner, *until_p, *now_p, *now_p, run_id],
        )
        return lambda: RunRecord.from_row(cur.fetchone())

    return store._claim_tx(body)


@dataclass(frozen=True, slots=True)
class _Scope:
    wf_sql: str  # the workflows this worker serves
    wf_params: list[Any]
    sql: str  # ... and only runs of no queue or of a queue it knows
    params: list[Any]
    rules: dict[str, QueueRule]
    locked: list[str]  # the queues whose lock this claim took (filled by ``_room``)


def _one(store: Store, cur: Any, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    store.execute(cur, sql, params)
    row: tuple[Any, ...] | None = cur.fetchone()
    return row


def _find(store: Store, cur: Any, scope: _Scope, clock: datetime | None, turn: int, *, lock: bool) -> str | None:
    """The id of the run to claim now, or ``None``. With ``lock``, inside the claiming transaction."""
    now, now_p = store._time_sql(clock)
    skip = store.skip_locked if lock else ""
    expired = f"SELECT id FROM runs WHERE status = 'running' AND (lease_owner IS NULL OR lease_expires_at < {now})"
    woken = (
        "SELECT id, queue, partition_key FROM runs WHERE status = 'waiting' AND lease_owner IS NULL "
        f"AND wake_at IS NOT NULL AND wake_at <= {now}{scope.sql} ORDER BY wake_at LIMIT 20{skip}"
    )
    # Pipelined (PostgreSQL), both searches go out and are answered at once: one round trip,
    # not two. The woken runs it locks when an abandoned one is taken are free at the commit.
    second = cur.connection.cursor() if store.server_clock else None
    with store._batch(cur):
        store.execute(cur, f"{expired}{scope.sql} ORDER BY created_at LIMIT 1{skip}", [*now_p, *scope.params])
        if second is not None:
            store.execute(second, woken, [*now_p, *scope.params])
    try:
        row = cur.fetchone()
        if row is not None:
            return str(row[0])
        if second is None:
            second = store.execute(cur, woken, [*now_p, *scope.params])
        for run_id, queue, partition in second.fetchall():
            rule = scope.rules.get(queue) if queue is not None else None
            if rule is None or _room(store, cur, scope, rule, clock, partition, lock=lock, starting=False):
                return str(run_id)
    finally:
        if second is not None and second is not cur:
            second.close()

    order = [None, *sorted(scope.rules)]
    k = turn % len(order)
    for queue in order[k:] + order[:k]:
        found = _queued(store, cur, scope, queue, clock, skip, lock=lock)
        if found is not None:
            return found
    return None


def _queued(
    store: Store, cur: Any, scope: _Scope, queue: str | None, clock: datetime | None, skip: str, *, lock: bool
) -> str | None:
    wf_sql, wf_params = scope.wf_sql, scope.wf_params
    if queue is None:
        row = _one(
            store,
            cur,
            f"SELECT id FROM runs WHERE status = 'queued' AND queue IS NULL{wf_sql} "
            f"ORDER BY priority DESC, created_at LIMIT 1{skip}",
            wf_params,
        )
        return None if row is None else str(row[0])
    rule = scope.rules[queue]
    if rule.concurrency is None and rule.rate_limit is None:
        # No queue-wide limit: the head of the queue is taken without the queue's lock unless
        # its partition key limits it (many workers then claim side by side, as from no queue).
        row = _one(
            store,
            cur,
            f"SELECT id, partition_key FROM runs WHERE status = 'queued' AND queue = ?{wf_sql} "
            f"ORDER BY priority DESC, created_at LIMIT 1{skip}",
            [queue, *wf_params],
        )
        if row is None:
            return None
        if row[1] is None or rule.per_partition is None:
            return str(row[0])
    if rule.limited and not _room(store, cur, scope, rule, clock, None, lock=lock, starting=True):
        return None
    full_sql, full_params = "", []
    if rule.per_partition is not None:
        # The partitions at their limit, in the same statement (one snapshot, one round trip).
        full_sql = (
            " AND (partition_key IS NULL OR partition_key NOT IN (SELECT partition_key FROM runs "
            "WHERE status = 'running' AND queue = ? AND partition_key IS NOT NULL "
            "GROUP BY partition_key HAVING COUNT(*) >= ?))"
        )
        full_params = [queue, rule.per_partition]
    row = _one(
        store,
        cur,
        f"SELECT id FROM runs WHERE status = 'queued' AND queue = ?{wf_sql}{full_sql} "
        f"ORDER BY priority DESC, created_at LIMIT 1{skip}",
        [queue, *wf_params, *full_params],
    )
    return None if row is None else str(row[0])


def _room(
    store: Store,
    cur: Any,
    scope: _Scope,
    rule: QueueRule,
    clock: datetime | None,
    partition: str | None,
    *,
    lock: bool,
    starting: bool,
) -> bool:
    """Whether ``rule``'s queue may take one more run now (one of ``partition``, if given).

    The counts are one statement after the queue's lock (a statement of its own: the counts'
    snapshot is taken once it is held); pipelined, lock and counts are one round trip.
    """
    if lock:
        store._lock_queue(cur, rule.name)
        scope.locked.append(rule.name)
    counts: list[tuple[str, list[Any], int]] = []
    if rule.concurrency is not None:
        counts.append(
            ("SELECT COUNT(*) FROM runs WHERE status = 'running' AND queue = ?", [rule.name], rule.concurrency)
        )
    if partition is not None and rule.per_partition is not None:
        counts.append((
            "SELECT COUNT(*) FROM runs WHERE status = 'running' AND queue = ? AND partition_key = ?",
            [rule.name, partition], rule.per_partition,
        ))  # fmt: skip
    if starting and rule.rate_limit is not None:
        limit, per = rule.rate_limit
        since, since_p = store._time_sql(clock, -per)
        counts.append(
            (f"SELECT COUNT(*) FROM runs WHERE queue = ? AND started_at > {since}", [rule.name, *since_p], limit)
        )
    if not counts:
        return True
    row = _one(
        store,
        cur,
        "SELECT " + ", ".join(f"({sql})" for sql, _, _ in counts),
        [p for _, params, _ in counts for p in params],
    )
    assert row is not None
    return all(int(n) < limit for n, (_, _, limit) in zip(row, counts, strict=True))
