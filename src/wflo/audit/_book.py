"""The spend book checked against the hash-chained journals (part of ``wflo audit verify``).

The costs API, ``wflo costs`` and the compliance reports read the spend book (``ledger_spend``,
see ``wflo.cost._spend``), which is not chained: someone with write access to the database
could lower, raise, delete or invent its rows and the chains would still verify. Every charge
in it is also on a chain: a ``call.completed`` (or ``call.failed``, ``budget.unknown_outcome``)
event of its run carries the model, usage and ``cost_usd``; a call lost with its process and
not journaled yet is charged at its reservation (``budget_unknown``). So the book is recomputed
from the journals and compared, exactly (money as ``Decimal``), per run and model: calls, cost,
estimated cost, input and output tokens.

Why per run and model, not per hour: the book's hour is the store's clock when the ledger
charged, the journal's is the writer's clock (they differ on a lagging writer), and a real
cost that arrives after an estimate corrects the estimate's row, in the estimate's hour. Both
sides agree exactly per run and model; a finding names the book's hours of the row it is about.

A pruned run has no events left. ``wflo audit prune`` keeps what its journal recorded, per
model, on the ``audit.pruned`` record (on the system chain; signed with the checkpoint key when
given), and its book rows are checked against that. A run pruned by an older release has no
such figures: its book rows are reported as *not checkable*, which does not fail verification.
Book rows of a run that does not exist (no run row) are always a finding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cost import SpendLine, book_and_journal, book_runs_since
from ..store import SYSTEM_CHAIN, Store
from ._tables import chains_since, undecodable
from ._verify import pruned_items

FIGURES = ("calls", "cost_usd", "estimated_usd", "input_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class BookFinding:
    """A run's spend on one model that the book and its journal (or its prune record) disagree on."""

    run_id: str
    model: str
    hours: tuple[str, ...]
    """The book's hours of the rows concerned (store clock; empty: the book has no row)."""
    book: dict[str, str]
    """The figures that differ, as the book holds them (money as exact decimal strings)."""
    journal: dict[str, str]
    """The same figures as the run's journal (or its prune record) records them."""
    kind: str = "mismatch"
    """``mismatch``; ``no-run`` (book rows of a run that does not exist); ``pruned``: a pruned
    run's book against the figures its prune record kept; ``unreadable``: the pass could not
    read the tables (text that is not UTF-8, written past wflo), so the book was not checked."""

    def describe(self) -> str:
        if self.kind == "unreadable":
            return f"spend book not checked: {self.book.get('error', 'unreadable')}"
        where = f"hours {', '.join(self.hours)}" if self.hours else "no book row"
        against = "prune record" if self.kind == "pruned" else "journal"
        figures = "; ".join(f"{k} book {self.book[k]}, {against} {self.journal[k]}" for k in self.book)
        run = f"run {self.run_id}" + (" (no such run)" if self.kind == "no-run" else "")
        return f"spend book: {run}, model {self.model}, {where}: {figures}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "model": self.model, "hours": list(self.hours), "kind": self.kind,
            "book": self.book, "journal": self.journal,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class BookReport:
    """The result of checking the whole spend book (or one run's rows)."""

    runs: int = 0
    """Runs whose book rows were compared (with their journal or their prune record)."""
    rows: int = 0
    """Book rows read."""
    pruned: int = 0
    """Of ``runs``: pruned runs checked against their prune record's figures."""
    unchecked: tuple[str, ...] = ()
    """Pruned runs with book rows whose prune record kept no figures (an older release's prune)."""
    findings: tuple[BookFinding, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.findings

    def describe(self) -> str:
        parts = [f"{self.rows} rows of {self.runs} runs"]
        if self.pruned:
            parts.append(f"{self.pruned} pruned checked against their prune records")
        if self.unchecked:
            parts.append(f"{len(self.unchecked)} pruned not checkable (pruned before figures were kept)")
        n = len(self.findings)
        state = (
            "agrees with the journals" if self.ok else f"disagrees with the journals ({n} mismatch{'es' * (n != 1)})"
        )
        return f"spend book {state}: {', '.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "runs": self.runs, "rows": self.rows, "pruned": self.pruned,
            "unchecked": list(self.unchecked), "findings": [f.to_dict() for f in self.findings],
        }  # fmt: skip


def pruned_spend(store: Store, trusted: Any = None) -> dict[str, dict[str, SpendLine] | None]:
    """Every chain an ``audit.pruned`` record names, with the spend per model it recorded
    (``None``: a record made before prunes kept it). With ``trusted``, only records signed by
    that key count (as in ``pruned_chains``)."""
    out: dict[str, dict[str, SpendLine] | None] = {}
    for item in pruned_items(store, trusted):
        try:
            spent = item.get("spend")
            out[str(item["chain"])] = (
                None if spent is None else {str(s["model"]): SpendLine.from_dict(s) for s in spent}
            )
        except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
            continue  # a damaged entry: the system chain's own verification reports it
    return out


def spend_record(lines: dict[str, SpendLine]) -> list[dict[str, Any]]:
    """A run's spend per model as a prune record keeps it (sorted by model)."""
    return [{"model": model, **lines[model].to_dict()} for model in sorted(lines)]


def verify_book(
    store: Store,
    *,
    run_id: str | None = None,
    since: str | None = None,
    trusted: Any = None,
    on_progress: Callable[[int], None] | None = None,
) -> BookReport:
    """Check the spend book against the runs' journals (every run, or ``run_id`` only).

    ``since`` (an ISO time, as ``verify_all``'s): only the runs with an event at or after it and
    the runs with a book row of its hour or later (a row forged for an old run, or for no run,
    in that window is found; one dated before it is not looked at).

    Per run and model, the book's calls, cost, estimated cost and tokens must equal what the
    run's journal records (with its calls charged at their reservation and not journaled yet);
    a pruned run's must equal what its prune record kept (``trusted``: only records signed by
    that key count). Read a page of runs at a time; ``on_progress`` is told how many runs each
    page held.
    """
    pruned = pruned_spend(store, trusted)
    findings: list[BookFinding] = []
    unchecked: list[str] = []
    runs = rows = pruned_runs = page = 0
    only = None
    if since is not None and run_id is None:
        only = (chains_since(store, since) | set(book_runs_since(store, since))) - {SYSTEM_CHAIN}
    try:
        for run in book_and_journal(store, run_id=run_id, run_ids=only):
            page += 1
            if on_progress is not None and page == 500:
                on_progress(page)
                page = 0
            if not run.book and not run.journal and not pruned.get(run.run_id):
                continue
            rows += sum(len(line.hours) for line in run.book.values())
            expected, kind = run.journal, "mismatch"
            if not run.exists:
                kind = "no-run"
            elif run.run_id in pruned and not run.journaled:
                # No journal left to recompute from: the prune record's figures, if it kept any.
                record = pruned[run.run_id]
                if record is None:
                    if run.book:
                        unchecked.append(run.run_id)
                    continue
                expected, kind = record, "pruned"
                pruned_runs += 1
            runs += 1
            findings += _compare(run.run_id, run.book, expected, kind)
    except Exception as exc:
        if not undecodable(store, exc):
            raise
        # A finding, not a traceback: the chains' pass names the rows that are not text.
        error = "the database holds text that is not UTF-8 (the chains' findings name the rows)"
        findings.append(BookFinding(run_id or "*", "*", (), {"error": error}, {"error": "UTF-8 text"}, "unreadable"))
    if on_progress is not None and page:
        on_progress(page)
    return BookReport(runs, rows, pruned_runs, tuple(unchecked), tuple(findings))


def _compare(run_id: str, book: dict[str, SpendLine], journal: dict[str, SpendLine], kind: str) -> list[BookFinding]:
    out = []
    for model in sorted(set(book) | set(journal)):
        b, j = book.get(model, SpendLine()), journal.get(model, SpendLine())
        bf, jf = b.figures(), j.figures()
        differ = [k for k in FIGURES if bf[k] != jf[k]]
        if differ:
            bd, jd = b.to_dict(), j.to_dict()
            out.append(BookFinding(
                run_id, model, tuple(sorted(b.hours)), {k: str(bd[k]) for k in differ},
                {k: str(jd[k]) for k in differ}, kind,
            ))  # fmt: skip
    return out
