"""Recompute hash chains and report the first broken link."""

from __future__ import annotations

from dataclasses import dataclass

from ..store import GENESIS, Store, link_hash
from ..store._base import SYSTEM_CHAIN


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of verifying one chain."""

    chain: str
    count: int
    ok: bool
    head: str
    seq: int | None = None
    """First broken sequence number (``None`` when intact)."""
    kind: str | None = None
    """``hash`` (content changed), ``link`` (prev_hash mismatch), ``gap`` (missing seq),
    ``head`` (the recorded head is past the last event: truncated tail)."""
    expected: str | None = None
    found: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"{self.chain}: ok ({self.count} events)"
        return f"{self.chain}: BROKEN at seq {self.seq} ({self.kind}): expected {self.expected}, found {self.found}"


def verify_chain(store: Store, chain: str, *, recorded_head: tuple[int, str] | None = None) -> ChainReport:
    """Verify one chain: every link's hash, every prev_hash, no gaps, and its recorded head."""
    prev, expected_seq, count = GENESIS, 1, 0
    for ev in store.events(chain):
        if ev.seq != expected_seq:
            return ChainReport(chain, count, False, prev, expected_seq, "gap", str(expected_seq), str(ev.seq))
        if ev.prev_hash != prev:
            return ChainReport(chain, count, False, prev, ev.seq, "link", prev, ev.prev_hash)
        digest = link_hash(prev, ev.chain, ev.seq, ev.type, ev.at, ev.data_json)
        if digest != ev.hash:
            return ChainReport(chain, count, False, prev, ev.seq, "hash", digest, ev.hash)
        prev, expected_seq, count = ev.hash, expected_seq + 1, count + 1
    if recorded_head is None:
        recorded_head = _recorded_head(store, chain)
    if recorded_head is not None and (recorded_head[0] != count or recorded_head[1] != prev):
        return ChainReport(
            chain,
            count,
            False,
            prev,
            count + 1,
            "head",
            f"{recorded_head[0]}:{recorded_head[1][:16]}",
            f"{count}:{prev[:16]}",
        )
    return ChainReport(chain, count, True, prev)


def _recorded_head(store: Store, chain: str) -> tuple[int, str] | None:
    if chain == SYSTEM_CHAIN or chain.startswith("_"):
        row = store._fetchone("SELECT last_seq, last_hash FROM chain_heads WHERE chain = ?", (chain,))
    else:
        row = store._fetchone("SELECT last_seq, last_hash FROM runs WHERE id = ?", (chain,))
    return (int(row[0]), row[1]) if row else None


def verify_all(store: Store) -> list[ChainReport]:
    """Verify every run's chain and the system chain."""
    chains = [r[0] for r in store._fetchall("SELECT DISTINCT chain FROM events ORDER BY chain")]
    heads = {r[0] for r in store._fetchall("SELECT id FROM runs")}
    missing = sorted(heads - set(chains))
    reports = [verify_chain(store, chain) for chain in chains]
    reports += [verify_chain(store, chain) for chain in missing]  # runs whose events all vanished
    return reports
