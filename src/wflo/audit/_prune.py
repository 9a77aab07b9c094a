"""``wflo audit prune``: delete the journals of finished runs older than a date, on the record.

Only runs in a final status (succeeded, failed, cancelled, stopped) whose *last* event is
before the cut-off are pruned, and only if their chain verifies (pruning a tampered chain
would launder it). Each batch is one transaction: the events are deleted and an
``audit.pruned`` event on the system chain names every pruned chain with its event count and
head hash, so ``verify`` (and a checkpoint taken earlier) know the chain was removed on
purpose, and with what its journal recorded it spent per model (``spend``: the figures the
spend book's rows of the run are checked against once its events are gone). The ``runs`` rows stay, so run listings and the recorded heads survive.

On PostgreSQL the events table refuses DELETE; the only way is the ``wflo_prune_chain``
function (``SECURITY DEFINER``, owned by the tables' owner, executable only by the auditor
role; see docs/deployment.md), which deletes one finished run's events if its head still
matches. The application role cannot call it. Sign the record with the checkpoint key
(``private_key``): ``verify --public-key`` trusts no other prune record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._errors import AuditError
from ..cost import journal_run_spend
from ..store import FINAL_STATUSES, NewEvent, Store
from . import _tables
from ._book import spend_record
from ._verify import ChainReport, verify_chain

BATCH = 500
"""Chains per transaction (and per ``audit.pruned`` event)."""


@dataclass(frozen=True, slots=True)
class PruneResult:
    before: str
    pruned: list[tuple[str, int, str]] = field(default_factory=list)
    """``(chain, count, head)`` of every pruned chain."""
    skipped: list[ChainReport] = field(default_factory=list)
    """Candidates left alone because their chain does not verify."""

    @property
    def events(self) -> int:
        return sum(n for _, n, _ in self.pruned)


def prune_candidates(store: Store, before: str) -> list[tuple[str, int, str]]:
    """``(run id, last_seq, last_hash)`` of finished runs whose last event is before ``before``."""
    rows = _tables.prune_candidates(store, sorted(FINAL_STATUSES), before)
    return [(str(i), int(n), str(h)) for i, n, h in rows]


def prune(
    store: Store,
    before: str,
    *,
    by: str,
    dry_run: bool = False,
    on_progress: Callable[[int], None] | None = None,
    private_key: Any = None,
    retention_override: str | None = None,
) -> PruneResult:
    """Prune finished runs whose last event is before ``before`` (store time text, UTC).

    With ``private_key`` (the checkpoint key), each ``audit.pruned`` record is signed, so
    ``verify`` given the public key accepts only prunes made by its holder: a chain deleted
    by anyone else, with a forged prune record, is reported as missing.

    A cut-off inside the retention period (``Settings.retention_days``) is refused with
    ``RetentionError`` unless ``retention_override`` gives a reason, which is recorded.
    """
    if not dry_run:  # the retention policy (docs/compliance.md) comes before anything is read
        from ..compliance import enforce_retention

        enforce_retention(store, before, by=by, override=retention_override)
    result = PruneResult(before)
    ready: list[tuple[str, int, str]] = []
    for chain, count, head in prune_candidates(store, before):
        report = verify_chain(store, chain, recorded_head=(count, head))
        if report.ok:
            ready.append((chain, count, head))
        else:
            result.skipped.append(report)
    if dry_run:
        result.pruned.extend(ready)
        return result
    for start in range(0, len(ready), BATCH):
        batch = ready[start : start + BATCH]
        _prune_batch(store, batch, before=before, by=by, private_key=private_key)
        result.pruned.extend(batch)
        if on_progress is not None:
            on_progress(len(batch))
    return result


class _Moved(AuditError):
    """A chain changed between verification and deletion: the batch is rolled back."""

    _fields = ("chain",)
    chain: Any

    def _message(self) -> str:
        return f"run {self.chain} changed while it was being pruned; nothing was deleted, run prune again"


def _chain_record(store: Store, chain: str, count: int, head: str) -> dict[str, Any]:
    """A pruned chain as its ``audit.pruned`` record names it, with its journal's spend."""
    return {"chain": chain, "count": count, "head": head, "spend": spend_record(journal_run_spend(store, chain))}


def _prune_batch(
    store: Store, batch: list[tuple[str, int, str]], *, before: str, by: str, private_key: Any = None
) -> None:
    def op(cur: Any) -> None:
        if store.dialect == "postgresql":
            for chain, count, head in batch:
                try:
                    _tables.prune_chain_postgres(store, cur, chain, count, head)
                except Exception as exc:
                    if getattr(exc, "sqlstate", None) == "WF001":
                        raise _Moved(chain=chain) from None
                    if getattr(exc, "sqlstate", None) == "42501":  # insufficient_privilege
                        raise AuditError(
                            "this database role may not prune: run `wflo audit prune` as the auditor role "
                            "(see `wflo db roles` in docs/deployment.md)"
                        ) from None
                    raise
            return
        for chain, count, head in batch:
            row = _tables.locked_run_head(store, cur, chain)
            if row is None or int(row[0]) != count or row[1] != head:
                raise _Moved(chain=chain)
            if _tables.delete_chain_events(store, cur, chain, count) != count:
                raise _Moved(chain=chain)
            _tables.drop_payloads(store, cur, chain)

    # What each journal recorded it spent, per model: once its events are gone, the spend
    # book's rows of the run are checked against these figures (``verify_book``).
    record: dict[str, Any] = {
        "by": by,
        "before": before,
        "events": sum(n for _, n, _ in batch),
        "chains": [_chain_record(store, c, n, h) for c, n, h in batch],
    }
    if private_key is not None:
        from ._checkpoint import sign_record

        record = sign_record(record, private_key)
    event = NewEvent("audit.pruned", record)
    store.append_system([event], ops=[op])
