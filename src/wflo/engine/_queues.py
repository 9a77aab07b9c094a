"""Named queues: how many runs of a kind execute at once, in which order, and how often.

A queue is declared once in code that every worker imports, like the workflows it serves::

    emails = wflo.Queue("emails", concurrency=10, worker_concurrency=2, rate_limit=(100, 60))

    @wflo.workflow(queue="emails")
    def send(to: str) -> None: ...

    send.options(priority=5, partition_key="acme").start("a@example.com")

The global limits (``concurrency``, ``per_partition``, ``rate_limit``) are checked in the
database transaction that claims a run (see ``wflo.store._claim``), so they hold across every
worker process on every machine sharing the store. ``worker_concurrency`` is per ``Worker``.
"""

from __future__ import annotations

import threading
from dataclasses import KW_ONLY, dataclass
from typing import Any

from .._errors import ConfigurationError, UserError
from .._scope import check_name
from ..store import QueueRule

_queues: dict[str, Queue] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Queue:
    """A named queue of runs with limits that hold across all workers.

    Runs started on a queue (``@wflo.workflow(queue=...)`` or ``.options(queue=...)``) are
    taken by workers highest ``priority`` first, then oldest first.

    Declaring the same name twice with the same limits is harmless (a module imported twice);
    with different limits it is an error. Every worker serving the queue must declare it with
    the same limits: a worker takes only runs of queues it has declared.
    """

    name: str
    """The queue's name, stored with each run."""
    _: KW_ONLY
    concurrency: int | None = None
    """Runs of this queue executing at once across all workers (``None``: no limit). A run
    waiting for an approval or a timer does not hold a place; it needs one to resume."""
    worker_concurrency: int | None = None
    """Runs of this queue executing at once in one ``Worker`` (``None``: the worker's own
    ``concurrency``)."""
    per_partition: int | None = 1
    """Runs with the same ``partition_key`` executing at once (default 1: one at a time per
    key, in priority then start order); ``None``: partition keys do not limit."""
    rate_limit: tuple[int, float] | None = None
    """``(N, per_seconds)``: at most ``N`` runs of this queue started in any ``per_seconds``
    window (a resumed run is not a new start)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError(f"a queue needs a name, got {self.name!r}")
        check_name(self.name, "a queue's name", colon=True)  # no NUL (PostgreSQL), line break, 10k characters
        for field in ("concurrency", "worker_concurrency", "per_partition"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"Queue {self.name!r}: {field} must be a whole number of at least 1, got {value!r}")
        if self.rate_limit is not None:
            ok = isinstance(self.rate_limit, tuple | list) and len(self.rate_limit) == 2
            n, per = self.rate_limit if ok else (None, None)
            if not (
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 and isinstance(per, int | float) and per > 0
            ):
                raise UserError(
                    f"Queue {self.name!r}: rate_limit must be (N, per_seconds) with N >= 1 and per_seconds > 0, "
                    f"got {self.rate_limit!r}"
                )
            object.__setattr__(self, "rate_limit", (n, float(per)))
        with _lock:
            existing = _queues.get(self.name)
            if existing is not None and existing != self:
                raise ConfigurationError(
                    f"queue {self.name!r} is declared twice with different limits: {existing!r} and {self!r}"
                )
            _queues[self.name] = self

    def rule(self) -> QueueRule:
        """The limits the claiming transaction enforces."""
        return QueueRule(self.name, self.concurrency, self.per_partition, self.rate_limit)


def declared_queues() -> dict[str, Queue]:
    """The queues declared in this process, by name."""
    with _lock:
        return dict(_queues)


def queue_name(queue: object, *, where: str) -> str | None:
    """The name of ``queue`` (a ``Queue`` or the name of a declared one), checked."""
    if queue is None:
        return None
    if isinstance(queue, Queue):
        return queue.name
    if isinstance(queue, str):
        return queue
    raise UserError(f"{where}: queue= takes a wflo.Queue or its name, got {queue!r}")


def check_declared(name: str) -> Queue:
    """The declared queue ``name``, or a clear error: no worker would take its runs."""
    with _lock:
        queue = _queues.get(name)
        known = sorted(_queues)
    if queue is None:
        raise UserError(
            f"queue {name!r} is not declared in this process; declare it with wflo.Queue({name!r}, ...) "
            f"in a module the workers import too (declared: {', '.join(known) or 'none'})"
        )
    return queue


def queue_placement(opts: object, default: str | None, workflow: str) -> dict[str, Any]:
    """``create_run``'s queue arguments for a start with options ``opts`` (a ``RunOptions``)."""
    name = queue_name(getattr(opts, "queue", None), where=f"workflow {workflow!r}") or default
    priority = getattr(opts, "priority", 0)
    partition_key = getattr(opts, "partition_key", None)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -(2**31) <= priority < 2**31:
        # The column is a 32-bit INTEGER: 10**30 was an OverflowError from the driver.
        raise UserError(f"priority must be a whole number from -2147483648 to 2147483647, got {priority!r}")
    if partition_key is not None and not isinstance(partition_key, str):
        raise UserError(f"partition_key must be a string, got {partition_key!r}")
    if partition_key is not None:
        check_name(partition_key, "partition_key", colon=True)
    if name is None:
        if priority or partition_key is not None:
            raise UserError(
                f"priority= and partition_key= need a queue: workflow {workflow!r} has none "
                "(give @wflo.workflow(queue=...) or .options(queue=...))"
            )
        return {}
    check_declared(name)
    return {"queue": name, "priority": priority, "partition_key": partition_key}
