"""Recompute hash chains and report the first broken link.

A chain whose events were deleted on purpose by ``wflo audit prune`` is not broken: the prune
is itself an ``audit.pruned`` event on the (verified) system chain that names each pruned chain
with its event count and head hash, and the run's recorded head must still match that record.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from .._errors import StoreUnavailableError
from ..store import END_EVENTS, FINAL_STATUSES, GENESIS, SYSTEM_CHAIN, Store, canonical_json
from . import _tables

PAGE = 1000
"""Events fetched per batch while verifying one chain (keeps memory flat on long chains)."""


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
    ``head`` (the recorded head is past the last event: truncated tail; or no head is recorded
    at all), ``projection`` (the run's row in ``runs`` says another status, output, workflow,
    tenant or parent than its chain); against a checkpoint:
    ``truncated`` (fewer events than signed), ``rewritten`` (another hash at the signed head),
    ``missing`` (the chain is gone and no prune recorded it); ``unsigned-prune`` (the chain is
    gone and only a prune record *not* signed by the pinned key names it)."""
    expected: str | None = None
    found: str | None = None
    pruned: bool = False
    """The chain's events were removed by a recorded ``wflo audit prune``."""

    def describe(self) -> str:
        if self.ok:
            if self.pruned:
                return f"{self.chain}: pruned ({self.count} events, head {self.head[:16]})"
            return f"{self.chain}: ok ({self.count} events)"
        return f"{self.chain}: BROKEN at seq {self.seq} ({self.kind}): expected {self.expected}, found {self.found}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "count": self.count,
            "ok": self.ok,
            "head": self.head,
            "seq": self.seq,
            "kind": self.kind,
            "expected": self.expected,
            "found": self.found,
            "pruned": self.pruned,
        }


def iter_links(store: Store, chain: str) -> Any:
    """``(seq, type, at, data_json, prev_hash, hash)`` rows of a chain in order, streamed.

    Raw rows (data stays text) so that a damaged JSON document is reported as a broken hash,
    not raised as a parse error.
    """
    last: Any = None
    try:
        with _tables.chain_links(store, chain, PAGE) as rows:
            for row in rows:
                yield row
                last = row[0]
    except Exception as exc:
        if not _tables.undecodable(store, exc):
            raise
        # A row that is not UTF-8 text: the rest of the chain read as bytes (and reported).
        for row in _tables.raw_links(store, chain=chain, after=None if last is None else (chain, last)):
            yield row[1:]


def chain_hasher(chain: str) -> Callable[[str, int, str, str, str], str]:
    """``link_hash`` specialised to one chain: the same bytes, built as one string with the
    chain's and each event type's JSON encoded once (verification spends its time here)."""
    chain_json = json.dumps(chain, ensure_ascii=False)
    types: dict[str, str] = {}
    sha256 = hashlib.sha256

    def digest(prev_hash: str, seq: int, type_: str, at: str, data_json: str) -> str:
        type_json = types.get(type_)
        if type_json is None:
            type_json = types[type_] = json.dumps(type_, ensure_ascii=False)
        text = f'{prev_hash}{{"at":{_ascii_json(at)},"chain":{chain_json},"data":{data_json},"seq":{int(seq)},"type":{type_json}}}'
        return sha256(text.encode()).hexdigest()

    return digest


_ascii_json = encode_basestring_ascii
"""``json.dumps(text)`` for a str, without the generic machinery (the C encoder)."""


class _ChainCheck:
    """Verifies one chain link by link as its rows arrive (memory stays flat on long chains)."""

    __slots__ = ("broken", "chain", "count", "expected_seq", "first", "last", "link", "prev")

    def __init__(self, chain: str, prev: str = GENESIS, expected_seq: int = 1, count: int = 0) -> None:
        self.chain = chain
        self.prev, self.expected_seq, self.count = prev, expected_seq, count
        self.link: Callable[[str, int, str, str, str], str] | None = None  # made on the first fed row
        self.broken: ChainReport | None = None
        # (type, data JSON) of the chain's first and last events, for the run's projection.
        self.first: tuple[Any, Any] | None = None
        self.last: tuple[Any, Any] | None = None

    def feed(self, seq: Any, type_: str, at: str, data_json: str, prev_hash: str, hash_: str) -> None:
        if self.broken is not None:
            return
        with suppress(TypeError, ValueError):  # a forged seq that is not a number stays as it is
            seq = int(seq)
        prev = self.prev
        if seq != self.expected_seq:
            self.broken = ChainReport(self.chain, self.count, False, prev, self.expected_seq, "gap",
                                      str(self.expected_seq), str(seq))  # fmt: skip
        elif prev_hash != prev:
            self.broken = ChainReport(self.chain, self.count, False, prev, seq, "link", prev, prev_hash)
        else:
            digest = "(not text)"
            if isinstance(type_, str) and isinstance(at, str) and isinstance(data_json, str):
                if self.link is None:
                    self.link = chain_hasher(self.chain)
                digest = self.link(prev, seq, type_, at, data_json)
            if digest != hash_:
                self.broken = ChainReport(self.chain, self.count, False, prev, seq, "hash", digest, hash_)
            else:
                self.prev, self.expected_seq, self.count = hash_, seq + 1, self.count + 1
                self.last = (type_, data_json)
                if seq == 1:
                    self.first = self.last

    def report(
        self, recorded_head: tuple[int, str] | None, pruned: tuple[int, str] | None, row: Sequence[Any] | None = None
    ) -> ChainReport:
        """The chain's verdict; ``row``: its run's row in ``runs``, compared with an intact
        chain (:func:`projection_report`)."""
        report = self._report(recorded_head, pruned)
        if report.ok and row is not None:
            return projection_report(self, row) or report
        return report

    def _report(self, recorded_head: tuple[int, str] | None, pruned: tuple[int, str] | None) -> ChainReport:
        if self.broken is not None:
            return self.broken
        chain, count, prev = self.chain, self.count, self.prev
        if count == 0 and pruned is not None:
            if recorded_head is None or recorded_head == pruned:
                return ChainReport(chain, pruned[0], True, pruned[1], pruned=True)
            return ChainReport(
                chain,
                0,
                False,
                GENESIS,
                1,
                "head",
                f"{recorded_head[0]}:{recorded_head[1][:16]}",
                f"pruned {pruned[0]}:{pruned[1][:16]}",
            )
        if recorded_head is None and count > 0:
            # Every writer records a chain's head (a run's row, or ``chain_heads``) in the
            # transaction of its events: events with no head anywhere lost their run's row.
            return ChainReport(chain, count, False, prev, count, "head", "a recorded head (a runs row)",
                               "none: the chain has events but no runs row")  # fmt: skip
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


def projection_report(check: _ChainCheck, row: Sequence[Any] | None) -> ChainReport | None:
    """The run's row in ``runs`` against its (intact) chain: ``None`` when they agree.

    ``row`` is ``(last_seq, last_hash, status, output, workflow, tenant, parent_id)``. The row is
    what the panel, ``wflo runs``, the compliance report and the costs group by, and it is not
    chained: someone with write access could turn a failed run into a succeeded one, change its
    output, or move it to another tenant or workflow, and the chain alone would still verify. Its
    status, output, workflow, tenant and parent are written in the transaction of the events that
    say them (``run.created``; the run's end event), so each must agree with them. Only compared
    when the row's head is the chain's (a row read after the run moved on is not compared)."""
    if row is None or check.first is None or check.last is None:
        return None
    chain, count, prev = check.chain, check.count, check.prev
    _, _, status, output, workflow, tenant, parent = row

    def differs(seq: int, what: str, chained: Any, found: Any) -> ChainReport:
        return ChainReport(chain, count, False, prev, seq, "projection", f"{what} {chained}", f"runs row says {found}")

    first_type, first_json = check.first
    if first_type == "run.created":
        try:
            created = json.loads(first_json)
        except (TypeError, ValueError):
            created = None
        if not isinstance(created, dict):
            return differs(1, "run.created data", "a JSON object", "unreadable data")
        for what, value in (("workflow", workflow), ("tenant", tenant), ("parent_id", parent)):
            if created.get(what) != value:
                return differs(1, what, repr(created.get(what)), repr(value))
    last_type, last_json = check.last
    ended = END_EVENTS.get(last_type) if isinstance(last_type, str) else None
    if ended is None:
        if status in FINAL_STATUSES:
            return differs(count, "status", f"not ended (last event {last_type})", repr(status))
        return None
    if status != ended:
        return differs(count, "status", repr(ended), repr(status))
    if ended == "succeeded":
        try:
            chained = canonical_json(json.loads(last_json).get("output"))
            stored = None if output is None else canonical_json(json.loads(output))
        except (TypeError, ValueError, AttributeError):
            chained, stored = "", None
        if chained != stored:
            return differs(count, "output", _short(chained), _short(stored))
    return None


def _short(text: str | None) -> str:
    if text is None:
        return "none"
    return text if len(text) <= 60 else text[:57] + "..."


def verify_chain(
    store: Store,
    chain: str,
    *,
    recorded_head: tuple[int, str] | None = None,
    pruned: tuple[int, str] | None = None,
) -> ChainReport:
    """Verify one chain: every link's hash, every prev_hash, no gaps, and its recorded head.

    ``pruned`` is the ``(count, head)`` an ``audit.pruned`` event recorded for this chain (see
    :func:`pruned_chains`); a chain with no events left that matches it is reported as pruned.
    """
    check = _ChainCheck(chain)
    for row in iter_links(store, chain):
        check.feed(*row)
        if check.broken is not None:
            return check.broken
    row = None
    if recorded_head is None:
        if _is_run(chain):
            row = _tables.run_rows(store, [chain]).get(chain)
            recorded_head = None if row is None else (int(row[0]), row[1])
        if recorded_head is None:
            recorded_head = _recorded_head(store, chain)
    return check.report(recorded_head, pruned, row)


def _is_run(chain: str) -> bool:
    return not (chain == SYSTEM_CHAIN or chain.startswith("_"))


_recorded_head = _tables.recorded_head


def pruned_items(store: Store, trusted: Any = None) -> Iterator[dict[str, Any]]:
    """Each chain entry of the ``audit.pruned`` records on the system chain, oldest first.

    With ``trusted`` (an Ed25519 public key), only the records signed by it. A damaged record
    is skipped: the system chain's own verification reports it."""
    yield from prune_items(_tables.prune_records(store), trusted)


def prune_items(records: Iterable[Any], trusted: Any = None) -> Iterator[dict[str, Any]]:
    """Each chain entry of ``audit.pruned`` records (their data as JSON text), as
    :func:`pruned_items` reads them from a store (an export's system chain holds them too)."""
    for data_json in records:
        try:
            data = json.loads(data_json)
            if trusted is not None:
                from ._checkpoint import record_signed_by

                if not record_signed_by(data, trusted):
                    continue
            items = [item for item in data.get("chains", []) if isinstance(item, dict)]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        yield from items


def pruned_chains(store: Store, trusted: Any = None) -> dict[str, tuple[int, str]]:
    """Every chain an ``audit.pruned`` event on the system chain names: ``{chain: (count, head)}``.

    With ``trusted`` (an Ed25519 public key), only prune records signed by it count: a chain
    deleted under a forged or unsigned record is then reported as missing."""
    return prunes_by_chain(pruned_items(store, trusted))


def prunes_by_chain(items: Iterable[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """``{chain: (count, head)}`` of prune record entries (a damaged entry is left out)."""
    out: dict[str, tuple[int, str]] = {}
    for item in items:
        try:
            out[str(item["chain"])] = (int(item["count"]), str(item["head"]))
        except (ValueError, TypeError, KeyError):
            continue  # a damaged entry: the system chain's own verification reports it
    return out


def unsigned_prune(chain: str, count: int) -> ChainReport:
    """The report for a chain that only an untrusted (unsigned or forged) prune record names."""
    return ChainReport(
        chain,
        0,
        False,
        GENESIS,
        1,
        "unsigned-prune",
        f"{count} events, or a prune record signed by the pinned key",
        "no events; the only prune record naming this chain is not signed by the pinned key",
    )


def _explain(reports: list[ChainReport], store: Store, trusted: Any) -> list[ChainReport]:
    """With a pinned key, say so when a broken chain was "pruned" by an untrusted record."""
    if trusted is None or all(r.ok for r in reports):
        return reports
    claimed = pruned_chains(store)
    out = []
    for r in reports:
        if not r.ok and r.count == 0 and r.chain in claimed:
            out.append(unsigned_prune(r.chain, claimed[r.chain][0]))
        else:
            out.append(r)
    return out


def verify_run(store: Store, run_id: str, *, trusted: Any = None) -> ChainReport:
    """Verify one run's chain, knowing whether it was pruned (by the ``trusted`` key's holder)."""
    report = verify_chain(store, run_id, pruned=pruned_chains(store, trusted).get(run_id))
    return _explain([report], store, trusted)[0]


SCAN_PAGE = 1000
"""Events fetched per batch when every chain is verified (one streamed pass in (chain, seq)
order; a batch that fits the CPU's caches is read faster than a large one)."""

HEADS_BATCH = 500
"""Recorded heads looked up per query in that pass."""

PARALLEL_MIN = 200_000
"""Events from which ``verify_all`` splits the pass over two processes (on two or more cores)."""


class _Reports:
    """The reports of finished chains, in order; recorded heads are looked up in batches."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reports: list[ChainReport] = []
        self.done: list[_ChainCheck] = []

    def add(self, check: _ChainCheck) -> None:
        self.done.append(check)
        if len(self.done) >= HEADS_BATCH:
            self.flush()

    def flush(self) -> list[ChainReport]:
        store, done = self.store, self.done
        rows = _tables.run_rows(store, [c.chain for c in done if _is_run(c.chain)])
        for check in done:
            row = rows.get(check.chain)
            head = (int(row[0]), row[1]) if row is not None else _recorded_head(store, check.chain)
            self.reports.append(check.report(head, None, row))
        done.clear()
        return self.reports


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a bulk read (restored after, if it was on).

    Each page is thousands of fresh row tuples; the collector, triggered by their very number,
    walked them (and the rest of the heap) again and again: a quarter of the scan's CPU on a
    million events. The scan makes no reference cycles; it only pauses collection for the
    process while it runs (seconds), as a bulk loader would."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _scan(store: Store, lo: str = "", below: str | None = None) -> list[ChainReport]:
    """Every chain from ``lo`` up to (not including) ``below`` that has events, verified in
    one pass over its events in key order (the garbage collector paused, see ``_gc_paused``)."""
    with _gc_paused():
        return _scan_pass(store, lo, below)


def _scan_pass(store: Store, lo: str = "", below: str | None = None) -> list[ChainReport]:
    """Every chain from ``lo`` up to (not including) ``below`` that has events, verified in
    one pass over its events in key order.

    The events come from one query streamed in batches (``Store.stream``: one snapshot,
    memory flat, no query per page); the recorded heads of finished chains are fetched in
    batches. An intact link costs one string, one SHA-256 and three comparisons, on local
    variables: the parts of the hashed text that do not change within a chain
    (``,"chain":…,"data":``) or with the event type (``,"seq":`` is written from the
    expected number, ``,"type":…}``) are built once. Only a row whose columns are all text
    of the expected kind takes this path; the first link that does not pass goes to
    ``_ChainCheck.feed``, which decides (and reports) the exact way.
    """
    out = _Reports(store)
    sha256, ascii_json, dumps, text_type = hashlib.sha256, _ascii_json, json.dumps, str
    tails: dict[Any, str | None] = {}  # event type -> ',"type":"…"}' (None: not text)
    chain: Any = None
    prev, expected = GENESIS, 1  # the events passed so far: expected - 1
    careful: _ChainCheck | None = None
    first: Any = None
    last: Any = None
    mid = ""
    for batch in _batches(store, lo, below):
        for row in batch:
            chain_, seq, type_, at, data_json, prev_hash, hash_ = row
            if chain_ != chain:
                if chain is not None:
                    out.add(_ended(careful or _ChainCheck(chain, prev, expected, expected - 1), first, last))
                chain, prev, expected, careful, first = chain_, GENESIS, 1, None, row
                mid = f',"chain":{dumps(chain, ensure_ascii=False)},"data":'
            last = row
            if careful is None:
                # seq == expected (an int) and the hashed "seq" is written from expected: a
                # forged seq of another type never hashes differently here than in feed().
                if seq == expected and prev_hash == prev and data_json.__class__ is text_type:
                    tail = tails.get(type_, "")
                    if tail == "":
                        tail = tails[type_] = (
                            f',"type":{dumps(type_, ensure_ascii=False)}}}' if type_.__class__ is text_type else None
                        )
                    if tail is not None:
                        try:  # at: ascii_json takes text only
                            digest = sha256(
                                f'{prev}{{"at":{ascii_json(at)}{mid}{data_json},"seq":{expected}{tail}'.encode()
                            ).hexdigest()
                        except TypeError:  # a forged row whose time is not text
                            digest = None
                        if digest == hash_:
                            prev, expected = hash_, expected + 1
                            continue
                careful = _ChainCheck(chain, prev, expected, expected - 1)
            careful.feed(*row[1:])
    if chain is not None:
        out.add(_ended(careful or _ChainCheck(chain, prev, expected, expected - 1), first, last))
    return out.flush()


def _ended(check: _ChainCheck, first: Sequence[Any], last: Sequence[Any]) -> _ChainCheck:
    """``check`` with its chain's first and last rows (``(chain, seq, type, at, data, …)``) noted."""
    check.first, check.last = (first[2], first[4]), (last[2], last[4])
    return check


RESUMES = 5
"""Times a scan goes on after the connection it streams from was lost (from the last key)."""


def _batches(store: Store, lo: str, below: str | None) -> Iterator[list[Any]]:
    """The events of the range in batches; a connection lost mid-stream (a server restart,
    ``pg_terminate_backend``) is replaced and the read goes on after the last key handed out.
    The rows before and after the loss then come from two snapshots, as keyset pages did;
    the chains are checked link by link either way."""
    after: tuple[Any, Any] | None = None
    for attempt in range(RESUMES + 1):
        try:
            with _tables.scan_links(store, lo, below, SCAN_PAGE, after) as stream:
                for batch in stream.batches():
                    yield batch
                    after = (batch[-1][0], batch[-1][1])  # as stored: a forged seq still sorts
            return
        except StoreUnavailableError:
            if attempt == RESUMES:
                raise
            time.sleep(min(0.05 * 2**attempt, 1.0))
        except Exception as exc:
            if not _tables.undecodable(store, exc):
                raise
            # A row that is not UTF-8 text (written past wflo): the rest of the range read
            # with text columns as bytes, so that row is reported where it is, not raised.
            yield _tables.raw_links(store, lo=lo, after=after, below=below)
            return


def _split(store: Store, workers: int | None) -> list[tuple[str, str | None]]:
    """Key ranges ``(lo, below)`` of about equal numbers of events, cut between chains."""
    auto = workers is None
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or store.dialect not in ("sqlite", "postgresql"):
        return [("", None)]
    total = _tables.count_events(store)
    if auto and total < PARALLEL_MIN:
        return [("", None)]
    cuts: list[str] = []
    for i in range(1, workers):
        chain = _tables.chain_at(store, total * i // workers)
        if chain is not None and chain > (cuts[-1] if cuts else ""):
            cuts.append(chain)
    return list(zip(["", *cuts], [*cuts, None], strict=True))


class _Child:
    """One key range verified by another Python process (its own connection; SQLite's WAL
    and PostgreSQL let readers run side by side).

    A plain subprocess, not ``multiprocessing``: nothing of the caller's program is imported
    again or forked. The URL goes over stdin (not the command line, where ``ps`` shows it);
    reports come back as JSON in a temporary file. A child that fails for any reason is
    replaced by verifying its range here, so the result never depends on it.
    """

    def __init__(self, url: str, lo: str, below: str | None) -> None:
        self.lo, self.below = lo, below
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 -- outlives this call; reports() closes it
        src = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from wflo.audit._verify import _child_main; _child_main()"],
                stdin=subprocess.PIPE, stdout=self.out, stderr=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        except OSError:
            return
        with suppress(OSError):  # a child that died at once: reports() sees its exit status
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"url": url, "lo": lo, "below": below}).encode())
            self.proc.stdin.close()

    def stop(self) -> None:
        """End the child if it still runs (the parent failed or was interrupted)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()

    def reports(self, store: Store) -> list[ChainReport]:
        try:
            if self.proc is not None and self.proc.wait() == 0:
                self.out.seek(0)
                return [ChainReport(*fields) for fields in json.loads(self.out.read())]
        except (OSError, ValueError, TypeError):
            pass
        finally:
            self.out.close()
        return _scan(store, self.lo, self.below)


def _child_main() -> None:
    from ..store import open_store

    job = json.loads(sys.stdin.read())
    with open_store(job["url"], migrate=False, verify=False, create=False) as store:
        reports = _scan(store, job["lo"], job["below"])
    sys.stdout.write(json.dumps([list(r.to_dict().values()) for r in reports]))


def _verify_every_chain(store: Store, workers: int | None = None) -> list[ChainReport]:
    """Every chain that has events, verified in key order; split over ``workers`` processes
    (by default two on a machine with two or more cores, from ``PARALLEL_MIN`` events)."""
    ranges = _split(store, workers)
    url, pooler = store.url, getattr(store, "pooler", "none")
    if pooler != "none":  # behind PgBouncer: the child must not prepare statements either
        url += ("&" if "?" in url else "?") + f"pooler={pooler}"
    children = [_Child(url, lo, below) for lo, below in ranges[1:]]
    try:
        reports = _scan(store, *ranges[0])
        for child in children:
            reports += child.reports(store)
    finally:
        for child in children:
            child.stop()
    return reports


def verify_all(
    store: Store, *, since: str | None = None, trusted: Any = None, workers: int | None = None
) -> list[ChainReport]:
    """Verify every run's chain and the system chain (pruned chains are reported as such).

    ``since`` (an ISO time): only the chains with an event at or after it, plus the system
    chain (if it has events); each of those is still verified whole, from its first link.
    """
    if since is not None:
        recent = _tables.chains_since(store, since)  # and the system chain: configuration changes
        return _explain([verify_run(store, chain, trusted=trusted) for chain in sorted(recent)], store, trusted)
    pruned = pruned_chains(store, trusted)
    reports = _verify_every_chain(store, workers)
    chains = {r.chain for r in reports}
    # Runs whose events all vanished: deliberately (a recorded prune) or not.
    missing = _tables.runs_without_events(store)
    reports += [verify_chain(store, chain, pruned=pruned.get(chain)) for chain in missing]
    if trusted is not None:
        # A run deleted whole (events and runs row) under an untrusted prune record: the
        # record itself names it.
        claimed = pruned_chains(store)
        known = chains | set(missing)
        reports += [unsigned_prune(c, claimed[c][0]) for c in sorted(set(claimed) - set(pruned) - known)]
    return _explain(reports, store, trusted)
