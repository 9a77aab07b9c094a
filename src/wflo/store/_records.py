"""Plain records the store returns, and the few helpers they need (ids, times)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

RUN_STATUSES = ("queued", "running", "waiting", "blocked", "succeeded", "failed", "cancelled", "stopped")
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "stopped"})
END_EVENTS = {
    "run.completed": "succeeded",
    "run.failed": "failed",
    "run.stopped": "stopped",
    "run.cancelled": "cancelled",
}
"""The event that ends a run, and the final status (``FINAL_STATUSES``) it writes to the run's
row in the same transaction."""

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


_second: tuple[int, str] = (-1, "")
"""The whole second :func:`now_iso` last wrote, and its text up to the seconds."""


def now_iso(offset_seconds: float = 0.0) -> str:
    """UTC now (plus an offset) in the fixed-width form the store compares as text."""
    global _second
    if offset_seconds:
        return iso(datetime.now(UTC), offset_seconds)
    # Every append reads the clock: the date and time of day are formatted once per second, and
    # only the microseconds each time (the clock and rounding of ``datetime.now``: floor).
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, datetime.fromtimestamp(second, UTC).isoformat()[:-6])
    return f"{cached[1]}.{micro:06d}Z"


def iso(moment: datetime, offset_seconds: float = 0.0) -> str:
    """``moment`` (plus an offset) in the store's UTC text form."""
    if offset_seconds:
        moment += timedelta(seconds=offset_seconds)
    # ``isoformat`` with microseconds always written gives ``_TIME_FORMAT``'s text with
    # ``+00:00`` for ``Z``, in about half the time of ``strftime``.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def new_id() -> str:
    """A time-ordered UUID (version 7 layout), so ids sort by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the UUID object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of the ``runs`` projection."""

    id: str
    workflow: str
    status: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    parent_id: str | None
    tenant: str | None
    options: dict[str, Any]
    lease_owner: str | None
    lease_expires_at: str | None
    cancel_requested: bool
    wake_at: str | None
    last_seq: int
    last_hash: str
    attempts: int
    created_at: str
    updated_at: str
    finished_at: str | None
    queue: str | None = None
    """The named queue the run was started on (filled by claims; ``None`` elsewhere)."""

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> RunRecord:
        (id_, workflow, status, input_, output, error, parent_id, tenant, options, lease_owner,
         lease_expires_at, cancel_requested, wake_at, last_seq, last_hash, attempts, created_at,
         updated_at, finished_at) = row[:19]  # fmt: skip
        return cls(
            id=id_,
            workflow=workflow,
            status=status,
            input=_loads(input_),
            output=_loads(output),
            error=_loads(error),
            parent_id=parent_id,
            tenant=tenant,
            options=_loads(options) or {},
            lease_owner=lease_owner,
            lease_expires_at=lease_expires_at,
            cancel_requested=bool(cancel_requested),
            wake_at=wake_at,
            last_seq=int(last_seq),
            last_hash=last_hash,
            attempts=int(attempts),
            created_at=created_at,
            updated_at=updated_at,
            finished_at=finished_at,
            queue=row[19] if len(row) > 19 else None,
        )


RUN_COLUMNS = (
    "id, workflow, status, input, output, error, parent_id, tenant, options, lease_owner, "
    "lease_expires_at, cancel_requested, wake_at, last_seq, last_hash, attempts, created_at, "
    "updated_at, finished_at"
)


@dataclass(frozen=True, slots=True)
class Event:
    """One link of a hash chain (a run's journal, or the system chain)."""

    chain: str
    seq: int
    type: str
    at: str
    data: dict[str, Any]
    prev_hash: str
    hash: str
    data_json: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the store gives it its seq and hashes."""

    type: str
    data: dict[str, Any]
    at: str | None = None
    data_json: str | None = field(default=None, repr=False, compare=False)
    """``canonical_json(data)``, when its maker has it already (a step's record builds it from
    the texts its checks made): the store hashes and stores it as is. ``None``: the store
    encodes ``data``."""


@dataclass(frozen=True, slots=True)
class Head:
    """The last link of a chain: what the next append must extend."""

    seq: int
    hash: str
    cancel_requested: bool = False
