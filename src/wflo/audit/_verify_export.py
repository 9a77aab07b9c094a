"""``wflo audit verify-export``: check an export directory offline, with no database.

What is checked, from the directory alone:

- ``manifest.json`` is a wflo export manifest; each file it lists is a regular file in the
  directory (no path, no symlink, no FIFO) whose size is the listed one (checked *before* the
  file is read: a file larger than listed is not read at all) and whose SHA-256 is the listed one;
- every line is UTF-8 text holding exactly the export's columns, and each event's hash and link
  are recomputed with the functions ``wflo audit verify`` uses (``_ChainCheck``, the same
  ``chain_hasher``): every hash, every ``prev_hash``, no gap in the sequence numbers;
- each chain's first and last sequence number, event count and head hash are the manifest's,
  and the file holds no chain the manifest does not list, nor lists one it does not hold;
- optionally, a signed checkpoint: its signature (the checkpoint code's own check) and that the
  export *extends* it, chain by chain, as ``verify --checkpoint`` asks of a database.

A chain exported from the middle (``export --since``) starts at its first exported event: that
event's ``prev_hash`` is taken as given, so the export shows that the events from there on link
up, not what came before them. A signed checkpoint whose count for the chain falls inside the
exported range (or just before it) ties that start to the signed head.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._errors import UserError
from ..store import SYSTEM_CHAIN
from ._checkpoint import CheckpointResult, checkpoint_leaves, checkpoint_refused, gone_against
from ._export import COLUMNS, FORMATS
from ._verify import ChainReport, _ChainCheck, prune_items, prunes_by_chain, unsigned_prune

MANIFEST_MAX = 256 << 20
"""Bytes: a larger ``manifest.json`` is refused unread (an export's manifest is a few hundred
bytes per chain)."""

LINE_MAX = 64 << 20
"""Bytes: a longer line of the events file is reported, not held in memory."""

PROBLEMS_MAX = 50
"""Problems listed one by one; past this many only their number is kept."""

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ExportProblem:
    """Something in the export directory that does not hold, other than a chain's links."""

    file: str
    kind: str
    """``missing`` (a listed file is not there), ``not-a-file`` (a symlink, directory, FIFO…),
    ``manifest`` (not JSON, or not an export manifest), ``size``, ``sha256``, ``encoding`` (not
    UTF-8), ``syntax`` (a line that is not a record), ``columns`` (other columns or keys than the
    export's), ``too-long`` (a line over ``LINE_MAX``), ``truncated`` (the file ends inside a
    line), ``order`` (a chain's events are not together), ``count`` (another number of events
    than the manifest says)."""
    detail: str
    line: int | None = None

    def describe(self) -> str:
        where = f" line {self.line}" if self.line is not None else ""
        return f"{self.file}{where}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ExportReport:
    """The result of :func:`verify_export`."""

    path: str
    format: str | None
    events: int
    """Events read from the events file(s) (each verified, or reported)."""
    chains: list[ChainReport] = field(default_factory=list)
    """One per chain in the file or the manifest. Beyond ``verify``'s kinds (``hash``, ``link``,
    ``gap``): ``start`` (the first exported event is not the one the manifest names), ``head``
    (the last one, or the count, is not), ``missing`` (listed, no event in the file),
    ``unlisted`` (events in the file, not listed)."""
    problems: list[ExportProblem] = field(default_factory=list)
    more_problems: int = 0
    """Problems found past ``PROBLEMS_MAX`` (counted, not listed)."""
    starts: dict[str, int] = field(default_factory=dict)
    """Chains whose export starts after their first event: ``{chain: first exported seq}``."""
    holes: list[tuple[str, int, int]] = field(default_factory=list)
    """``(chain, from_seq, to_seq)`` left out of a ``--since`` export (events dated before the
    cut-off between later ones): the links across a hole are not shown."""
    filters: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointResult | None = None
    uncovered: list[str] = field(default_factory=list)
    """Chains the checkpoint signs that this export cannot speak to (filtered out, or exported
    only from after the signed head)."""
    unlisted: list[str] = field(default_factory=list)
    """Other entries of the directory, not in the manifest (a checkpoint kept beside the export, or
    a file slipped in): nothing in them is verified. Not a problem, said so (at most
    ``PROBLEMS_MAX`` names)."""

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and not self.more_problems
            and all(r.ok for r in self.chains)
            and (self.checkpoint is None or self.checkpoint.ok)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "format": self.format,
            "events": self.events,
            "chains": len(self.chains),
            "broken": [r.to_dict() for r in self.chains if not r.ok],
            "problems": [p.to_dict() for p in self.problems],
            "more_problems": self.more_problems,
            "starts": self.starts,
            "holes": [{"chain": c, "from_seq": a, "to_seq": b} for c, a, b in self.holes],
            "filters": self.filters,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint is not None else None,
            "uncovered": self.uncovered,
            "unlisted": self.unlisted,
        }


class _Problems:
    def __init__(self) -> None:
        self.items: list[ExportProblem] = []
        self.more = 0

    def add(self, file: str, kind: str, detail: str, line: int | None = None) -> None:
        if len(self.items) < PROBLEMS_MAX:
            self.items.append(ExportProblem(file, kind, detail, line))
        else:
            self.more += 1


# --------------------------------------------------------------------------- the manifest
def _regular(folder: Path, name: str, problems: _Problems) -> os.stat_result | None:
    """``lstat`` of ``folder/name`` if it is a regular file (a symlink, FIFO or device is never
    opened: reading one could leave the directory or block), else a problem and ``None``."""
    try:
        st = os.lstat(folder / name)
    except FileNotFoundError:
        problems.add(name, "missing", "no such file in the export")
        return None
    except OSError as exc:
        problems.add(name, "missing", f"cannot read it: {exc.strerror}")
        return None
    if not stat.S_ISREG(st.st_mode):
        problems.add(name, "not-a-file", "not a regular file (a symlink, directory or device): not read")
        return None
    return st


def _int(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _manifest_shape(doc: Any) -> str | None:
    """What is wrong with the manifest's shape, or ``None``."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("format") not in FORMATS:
        return f"format {doc.get('format')!r} is not one of {', '.join(FORMATS)}"
    files = doc.get("files")
    if not isinstance(files, list) or not files:
        return "no files listed"
    names = set()
    for f in files:
        if not isinstance(f, dict):
            return "a file entry is not an object"
        name = f.get("name")
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..", "manifest.json"):
            return f"an unsafe file name {name!r}"
        if name in names:
            return f"{name!r} listed twice"
        names.add(name)
        if not (isinstance(f.get("sha256"), str) and _SHA256.fullmatch(f["sha256"])):
            return f"{name}: sha256 is not a SHA-256 hex digest"
        if not _int(f.get("bytes")) or not _int(f.get("events")):
            return f"{name}: bytes and events must be counts"
    if not _int(doc.get("events")):
        return "events must be a count"
    chains = doc.get("chains")
    if not isinstance(chains, list):
        return "chains is not a list"
    seen = set()
    for c in chains:
        if not (
            isinstance(c, dict)
            and isinstance(c.get("chain"), str)
            and _int(c.get("first_seq"), 1)
            and _int(c.get("last_seq"), 1)
            and _int(c.get("events"), 1)
            and isinstance(c.get("first_prev_hash"), str)
            and isinstance(c.get("head"), str)
        ):
            return "a chain entry lacks chain, first_seq, first_prev_hash, last_seq, head or events"
        if c["chain"] in seen:
            return f"chain {c['chain']!r} listed twice"
        seen.add(c["chain"])
    filters = doc.get("filters")
    if not isinstance(filters, dict) or not all(
        isinstance(filters.get(k), (str, type(None))) for k in ("run", "since")
    ):
        return "filters is not an object of run and since"
    return None


def _read_manifest(folder: Path, problems: _Problems) -> dict[str, Any] | None:
    st = _regular(folder, "manifest.json", problems)
    if st is None:
        return None
    if st.st_size > MANIFEST_MAX:
        problems.add(
            "manifest.json", "size", f"{st.st_size} bytes, over the {MANIFEST_MAX} a manifest may have: not read"
        )
        return None
    try:
        raw = (folder / "manifest.json").read_bytes()
    except OSError as exc:
        problems.add("manifest.json", "missing", f"cannot read it: {exc.strerror}")
        return None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.add("manifest.json", "encoding", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None
    except ValueError as exc:
        problems.add("manifest.json", "manifest", f"not JSON: {exc}")
        return None
    wrong = _manifest_shape(doc)
    if wrong is None and doc.get("columns") != list(COLUMNS):
        problems.add("manifest.json", "columns", f"columns {doc.get('columns')!r}, not the export's {list(COLUMNS)}")
        return None
    if wrong is not None:
        problems.add("manifest.json", "manifest", f"not a wflo export manifest: {wrong}")
        return None
    return dict(doc)


# --------------------------------------------------------------------------- the events
def _lines(fh: IO[bytes], hasher: Any) -> Iterator[bytes | None]:
    """The file's lines as bytes, each fed to ``hasher``; ``None`` for a line over ``LINE_MAX``
    (read through in pieces and hashed, never held whole)."""
    while True:
        raw = fh.readline(LINE_MAX + 1)
        if not raw:
            return
        hasher.update(raw)
        if len(raw) > LINE_MAX and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(1 << 20)
                hasher.update(raw)
            yield None
            continue
        yield raw


Row = tuple[Any, int, str, str, str, str, str]


def _typed(values: list[Any]) -> Row | str:
    """The seven columns with ``seq`` an integer and the rest text, or what is wrong."""
    chain, seq, type_, at, data, prev_hash, hash_ = values
    if isinstance(seq, str):
        try:
            seq = int(seq)
        except ValueError:
            return f"seq {seq[:40]!r} is not an integer"
    if not _int(seq):
        return f"seq {seq!r} is not an integer"
    for name, value in zip(COLUMNS, (chain, seq, type_, at, data, prev_hash, hash_), strict=True):
        if name != "seq" and not isinstance(value, str):
            return f"{name} is not text"
    return (chain, seq, type_, at, data, prev_hash, hash_)


def _decoded(raw: bytes, name: str, n: int, problems: _Problems) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(name, "encoding", f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line)", n)
        return None


def _jsonl_rows(lines: Iterator[bytes | None], name: str, problems: _Problems) -> Iterator[tuple[int, Row]]:
    for n, raw in enumerate(lines, 1):
        if raw is None:
            problems.add(name, "too-long", f"longer than {LINE_MAX} bytes: not read", n)
            continue
        if not raw.endswith(b"\n"):
            problems.add(name, "truncated", "the file ends inside this line (every line ends with a newline)", n)
        text = _decoded(raw, name, n, problems)
        if text is None:
            continue
        try:
            doc = json.loads(text)
        except ValueError as exc:
            problems.add(name, "syntax", f"not a JSON record: {exc}", n)
            continue
        if not isinstance(doc, dict) or set(doc) != set(COLUMNS):
            keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            problems.add(name, "columns", f"keys {keys}, not the export's {sorted(COLUMNS)}", n)
            continue
        row = _typed([doc[c] for c in COLUMNS])
        if isinstance(row, str):
            problems.add(name, "syntax", row, n)
            continue
        yield n, row


@contextmanager
def _csv_fields_up_to(limit: int) -> Iterator[None]:
    """csv's field size limit (131072 characters by default, process-wide) raised while an
    export is read: an event's data can be larger. Restored after."""
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, limit))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _csv_rows(lines: Iterator[bytes | None], name: str, problems: _Problems) -> Iterator[tuple[int, Row]]:
    state = {"n": 0}

    def texts() -> Iterator[str]:
        for raw in lines:
            state["n"] += 1
            if raw is None:
                problems.add(name, "too-long", f"longer than {LINE_MAX} bytes: not read", state["n"])
                yield "\n"
                continue
            if not raw.endswith(b"\n"):
                problems.add(name, "truncated", "the file ends inside this line (every line ends with a newline)",
                             state["n"])  # fmt: skip
            text = _decoded(raw, name, state["n"], problems)
            yield "\n" if text is None else text

    reader = csv.reader(texts(), strict=True)
    with _csv_fields_up_to(LINE_MAX):
        header = True
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                problems.add(name, "syntax", f"not a CSV record: {exc}", state["n"])
                continue
            if header:
                header = False
                if values != list(COLUMNS):
                    problems.add(name, "columns", f"header {values!r}, not the export's {list(COLUMNS)}: not read", 1)
                    for _ in reader:  # the rest is still hashed (the file's SHA-256 is reported too)
                        pass
                    return
                continue
            if not values:  # a line that could not be decoded (reported) or an empty one
                continue
            if len(values) != len(COLUMNS):
                problems.add(name, "columns", f"{len(values)} fields, not the export's {len(COLUMNS)}", state["n"])
                continue
            row = _typed(values)
            if isinstance(row, str):
                problems.add(name, "syntax", row, state["n"])
                continue
            yield state["n"], row


# --------------------------------------------------------------------------- the chains
class _Seen:
    """One chain as its exported events arrive."""

    __slots__ = ("at_count", "check", "first_prev", "first_seq", "last_seq")

    def __init__(self, chain: str, seq: int, prev_hash: str, from_middle: bool) -> None:
        self.first_seq, self.first_prev, self.last_seq = seq, prev_hash, seq
        # A chain starts at seq 1 from genesis; only a --since export may start one later,
        # from the first exported event's own prev_hash (all it can offer: see the module's
        # docstring). Anywhere else a missing start is a gap at seq 1.
        if from_middle and seq > 1:
            self.check = _ChainCheck(chain, prev_hash, seq)
        else:
            self.check = _ChainCheck(chain)
        self.at_count: str | None = None


class _Chains:
    def __init__(self, problems: _Problems, since: bool, wanted: dict[str, int]) -> None:
        self.problems, self.since, self.wanted = problems, since, wanted
        self.seen: dict[str, _Seen] = {}
        self.current: Any = None
        self.split: set[str] = set()
        self.holes: list[tuple[str, int, int]] = []
        self.prune_records: list[str] = []

    def feed(self, name: str, n: int, row: Row) -> None:
        chain, seq, type_, at, data, prev_hash, hash_ = row
        s = self.seen.get(chain)
        if chain != self.current:
            if s is not None and chain not in self.split:
                self.split.add(chain)
                self.problems.add(name, "order", f"chain {chain!r} again, after other chains (an export keeps each chain's events together)", n)  # fmt: skip
            self.current = chain
        if s is None:
            s = self.seen[chain] = _Seen(chain, seq, prev_hash, self.since)
        check = s.check
        if self.since and check.broken is None and seq > check.expected_seq:
            # A --since export leaves out a chain's events dated before the cut-off, even
            # between later ones (the time is each writer's clock): go on from this event.
            self.holes.append((chain, check.expected_seq, seq - 1))
            check = s.check = _ChainCheck(chain, prev_hash, seq, check.count)
        check.feed(seq, type_, at, data, prev_hash, hash_)
        if check.broken is None:
            s.last_seq = seq
            if self.wanted.get(chain) == seq:
                s.at_count = hash_
            if chain == SYSTEM_CHAIN and type_ == "audit.pruned":
                self.prune_records.append(data)

    def reports(self, manifest: dict[str, dict[str, Any]], complete: bool) -> list[ChainReport]:
        out = []
        for chain, s in self.seen.items():
            check = s.check
            if check.broken is not None:
                out.append(check.broken)
                continue
            count, head, last = check.count, check.prev, check.expected_seq - 1
            m = manifest.get(chain)
            if m is None:
                out.append(ChainReport(chain, count, False, head, s.first_seq, "unlisted", "no entry in manifest.json",
                                       f"{count} events in the file"))  # fmt: skip
            elif (m["first_seq"], m["first_prev_hash"]) != (s.first_seq, s.first_prev):
                out.append(ChainReport(chain, count, False, head, s.first_seq, "start",
                                       f"{m['first_seq']}:{m['first_prev_hash'][:16]}",
                                       f"{s.first_seq}:{s.first_prev[:16]}"))  # fmt: skip
            elif (m["last_seq"], m["head"], m["events"]) != (last, head, count):
                out.append(ChainReport(chain, count, False, head, last, "head",
                                       f"{m['last_seq']}:{m['head'][:16]} ({m['events']} events)",
                                       f"{last}:{head[:16]} ({count} events)"))  # fmt: skip
            else:
                out.append(ChainReport(chain, count, True, head))
        if complete:  # with a file unread, its chains are not "missing": the file is reported
            for chain, m in manifest.items():
                if chain not in self.seen:
                    out.append(ChainReport(chain, 0, False, "", m["first_seq"], "missing", f"{m['events']} events",
                                           "no event of this chain in the file"))  # fmt: skip
        return out


def _against_checkpoint(
    doc: dict[str, Any], public_key: Any, chains: _Chains, reports: list[ChainReport], whole: bool
) -> tuple[CheckpointResult, list[str]]:
    """Whether the export extends the signed checkpoint ``doc``, chain by chain, as
    ``verify_checkpoint`` asks of a database; and the signed chains it cannot speak to."""
    refused = checkpoint_refused(doc, public_key)
    if refused is not None:
        return refused, []
    system_ok = any(r.chain == SYSTEM_CHAIN and r.ok for r in reports)
    records = chains.prune_records if system_ok else []
    pruned = prunes_by_chain(prune_items(records, public_key))
    claimed = prunes_by_chain(prune_items(records)) if public_key is not None else pruned
    found: list[ChainReport] = []
    uncovered: list[str] = []
    for chain, count, head in sorted(checkpoint_leaves(doc)):
        if count == 0:
            continue
        s = chains.seen.get(chain)
        report: ChainReport | None = None
        if s is None:
            if not whole:
                uncovered.append(chain)
                continue
            report = gone_against(chain, count, head, pruned.get(chain))
            if report is not None and report.kind == "missing":
                report = ChainReport(chain, 0, False, "", count, "missing", f"{count} events",
                                     "no event of this chain in the export")  # fmt: skip
                if chain in claimed:
                    report = unsigned_prune(chain, count)
        elif count == s.first_seq - 1:
            if s.first_prev != head:
                report = ChainReport(chain, 0, False, s.first_prev, s.first_seq, "rewritten", head, s.first_prev)
        elif count < s.first_seq - 1:
            uncovered.append(chain)
        elif s.at_count is not None:
            if s.at_count != head:
                report = ChainReport(chain, s.check.count, False, s.at_count, count, "rewritten", head, s.at_count)
        elif count > s.last_seq and s.check.broken is None:
            report = ChainReport(chain, s.check.count, False, "", s.last_seq + 1, "truncated",
                                 f"{count} events", f"{s.last_seq} events")  # fmt: skip
        elif s.check.broken is None:
            uncovered.append(chain)  # the signed event falls in a hole of a --since export
        # else: the chain broke before its signed head; its own report says where
        if report is not None:
            found.append(report)
    result = CheckpointResult(
        True,
        pinned=public_key is not None,
        at=str(doc.get("at")),
        merkle_root=str(doc["merkle_root"]),
        chains=len(doc["chains"]),
        reports=found,
    )
    return result, uncovered


# --------------------------------------------------------------------------- the whole
def verify_export(
    path: str | os.PathLike[str],
    *,
    checkpoint: dict[str, Any] | None = None,
    public_key: Any | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Check the export in directory ``path`` without a database (see the module's docstring).

    ``checkpoint``: a signed checkpoint (``read_checkpoint``) the export must extend;
    ``public_key`` pins its signer (else the key in the file is used) and, as for ``verify``,
    only prune records it signed excuse a signed chain that the export no longer holds.
    ``on_progress(events, total)`` is called as events are read (``total``: the manifest's
    count). Raises ``UserError`` only when ``path`` is not a directory; everything wrong
    inside it is in the report (``ok`` false).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a directory (give the directory that holds manifest.json)")
    if public_key is not None and checkpoint is None:
        raise UserError("a public key pins a checkpoint's signer: give the checkpoint too")
    problems = _Problems()
    manifest = _read_manifest(folder, problems)
    if manifest is None:
        refused = checkpoint_refused(checkpoint, public_key) if checkpoint is not None else None
        return ExportReport(str(folder), None, 0, problems=problems.items, more_problems=problems.more,
                            checkpoint=refused)  # fmt: skip
    fmt = manifest["format"]
    filters = manifest["filters"]
    listed = {c["chain"]: c for c in manifest["chains"]}
    wanted = {} if checkpoint is None else {c: n for c, n, _ in checkpoint_leaves(checkpoint)}
    chains = _Chains(problems, filters.get("since") is not None, wanted)
    total, events, complete, pending = int(manifest["events"]), 0, True, 0
    rows_of = _jsonl_rows if fmt == "jsonl" else _csv_rows
    for f in manifest["files"]:
        name = f["name"]
        st = _regular(folder, name, problems)
        if st is None:
            complete = False
            continue
        if st.st_size != f["bytes"]:
            problems.add(name, "size", f"{st.st_size} bytes, the manifest says {f['bytes']}")
            if st.st_size > f["bytes"]:  # could be anything, of any size: not read
                complete = False
                continue
        hasher = hashlib.sha256()
        in_file = 0
        with (folder / name).open("rb") as fh:
            for n, row in rows_of(_lines(fh, hasher), name, problems):
                chains.feed(name, n, row)
                in_file += 1
                pending += 1
                if on_progress is not None and pending >= 1000:
                    on_progress(pending, total)
                    pending = 0
        events += in_file
        if st.st_size == f["bytes"] and hasher.hexdigest() != f["sha256"]:
            problems.add(name, "sha256", f"SHA-256 {hasher.hexdigest()}, the manifest says {f['sha256']}")
        if in_file != f["events"]:
            problems.add(name, "count", f"{in_file} events read, the manifest says {f['events']}")
    if on_progress is not None and pending:
        on_progress(pending, total)
    if sum(f["events"] for f in manifest["files"]) != total:
        problems.add("manifest.json", "count", f"its files hold {sum(f['events'] for f in manifest['files'])} "
                     f"events, its total says {total}")  # fmt: skip
    reports = chains.reports(listed, complete)
    cp: CheckpointResult | None = None
    uncovered: list[str] = []
    if checkpoint is not None:
        whole = filters.get("run") is None and filters.get("since") is None
        cp, uncovered = _against_checkpoint(checkpoint, public_key, chains, reports, whole)
    starts = {c: s.first_seq for c, s in chains.seen.items() if s.first_seq > 1}
    known = {"manifest.json", *(f["name"] for f in manifest["files"])}
    unlisted = sorted(itertools.islice((e.name for e in os.scandir(folder) if e.name not in known), PROBLEMS_MAX))
    return ExportReport(
        str(folder),
        fmt,
        events,
        chains=reports,
        problems=problems.items,
        more_problems=problems.more,
        starts=starts,
        holes=chains.holes,
        filters=dict(filters),
        checkpoint=cp,
        uncovered=uncovered,
        unlisted=unlisted,
    )
