"""Runaway detection on the stream of call signatures the call boundary records (promise P2).

Every guarded call of a run (explicit step, intercepted LLM call, tool call, sandbox run) is
a :class:`Signature` ``(seq, kind, name, args_digest, at)``; how it ended is an
:class:`Outcome` (error, output digest, cost). :class:`LoopState` holds one run's detectors.

Checked **before** a call (:meth:`LoopState.before`; the call is refused, nothing runs):
the caps (``max_steps``, ``max_llm_calls``, ``max_tool_calls``, ``max_duration``), the same
call repeated (``max_repeats``) and A,B,A,B / A,B,C,A,B,C oscillation (``max_oscillation``).
Checked **after** it (:meth:`LoopState.after`; the call ran, its result is replaced by the
stop): the same error in a row (``max_same_error``), no new output (``max_no_progress``)
and the spend rate (``max_spend_rate``).

Cost: every detector keeps a bounded window (its own threshold, ``repeat_window`` or
:data:`HISTORY` entries), so memory and time per call are O(1) to O(window) and do not grow
with the run's length (``bench/guards.py`` measures it over 10,000 calls).

Latching: when a detector fires, ``LoopDetectedError`` (with the evidence) is raised and the
state is *stopped*. Every later :meth:`~LoopState.before` raises ``RunStopped``, a
``BaseException``, so agent code whose ``except Exception`` swallowed the first stop cannot
keep looping; :attr:`LoopState.stopped` keeps the original error for the run's record.

Resume: :meth:`LoopState.replay` feeds the journal's calls back without checking them (they
were accepted once, so nothing fires during replay) and the next live call continues the
counts: a resumed run that had made 3 identical calls may make ``max_repeats - 3`` more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, NoReturn

from .._errors import LoopDetectedError, RunStopped, UserError
from ._parse import parse_duration, parse_rate

__all__ = ["HISTORY", "TURN_KINDS", "LoopGuard", "LoopState", "Outcome", "Signature", "digest", "now", "same_value"]

TURN_KINDS = frozenset({"llm", "tool", "sandbox"})
"""The kinds whose results the no-progress detector looks at (steps wrap them: not counted twice)."""
HISTORY = 64
"""How many recent results the no-progress detector remembers as "already seen"."""
_EVIDENCE_CALLS = 20  # evidence lists at most this many calls (the last ones); "count" has the total


@dataclass(frozen=True, kw_only=True)
class LoopGuard:
    """Runaway protection for each run: ``@wflo.workflow(guards=wflo.LoopGuard(max_repeats=3))``.

    ``None`` switches a check off. Every workflow gets ``LoopGuard()`` unless it passes its own
    (or ``guards=False``), so the defaults are chosen to stop true runaways without stopping
    busy but healthy agents: the pattern detectors that have no legitimate look-alike are on
    (the same call 6 times in 20, the same error 5 times in a row, 4 full A,B cycles) with a
    count backstop of 1,000 calls; the checks that depend on the workload are off (wall time
    counts waits for approval, which may last days; identical LLM answers are normal in batch
    classification; a spend rate depends on the model). Tighten them per workflow.

    "At most" semantics throughout: ``max_repeats=3`` lets 3 identical calls run and refuses the
    4th; ``max_same_error=3`` stops the run right after the 3rd identical error.
    """

    max_steps: int | None = 1000
    """Guarded calls of any kind (steps, LLM, tool, sandbox) in one run. Checked before each:
    call ``max_steps + 1`` is refused. A backstop for runaways whose arguments always differ,
    which the pattern detectors cannot see; batch workflows with many steps raise or drop it."""
    max_llm_calls: int | None = None
    """LLM calls in one run (checked before each)."""
    max_tool_calls: int | None = None
    """Tool calls in one run (checked before each)."""
    max_duration: float | str | None = None
    """Wall time since the run started, as seconds or ``"15m"``, ``"90s"``, ``"1h"``; checked
    before each call (a run is not interrupted in the middle of a call). Includes time spent
    waiting (approvals, timers), which is why it is off by default."""
    max_repeats: int | None = 5
    """The same call (kind, name and canonical-JSON digest of the arguments) may run at most
    this often within any ``repeat_window`` consecutive calls; the next one is refused before
    it runs. Polling the same tool with the same arguments is a repeat too: raise this or add
    the changing part (a cursor, an attempt number) to the arguments."""
    repeat_window: int = 20
    """How many consecutive calls (of all kinds, the refused one included) ``max_repeats``
    looks at. Must be larger than ``max_repeats``."""
    max_same_error: int | None = 5
    """The same error (class and message) this many times in a row among calls of one kind
    stops the run, after the last of them. Per kind because the LLM calls that relay each tool
    failure back to the model succeed, and must not hide that the tool keeps failing."""
    max_oscillation: int | None = 4
    """Calls of one kind cycling A,B,A,B… (period 2) or A,B,C,A,B,C… (period 3) with the same
    arguments may complete this many full cycles; the first call of the next cycle is refused.
    Per kind because the LLM calls between an agent's tool calls always differ."""
    max_no_progress: int | None = None
    """This many LLM/tool/sandbox results in a row that add nothing new stop the run. An LLM
    result is new if its output was not among the run's last 64 results; a tool result if that
    tool with those arguments had not already returned that output. Off by default: batch
    LLM work (classification, extraction) legitimately repeats answers."""
    max_spend_rate: str | None = None
    """USD per period, ``"1.00/min"`` or ``"5/hour"``: when the cost of the calls that ended
    within the last period passes it, the run stops (checked after each call). Budgets cap the
    total; this catches a run burning money fast."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("max_") and f.name not in ("max_duration", "max_spend_rate") and value is not None:
                _positive_int(value, f.name)
        _positive_int(self.repeat_window, "repeat_window")
        if self.repeat_window < 2:
            raise UserError(f"LoopGuard(repeat_window=...) must be at least 2, got {self.repeat_window}")
        if self.max_repeats is not None and self.max_repeats >= self.repeat_window:
            raise UserError(
                f"LoopGuard(max_repeats={self.max_repeats}) can never fire within repeat_window="
                f"{self.repeat_window}: pass repeat_window={self.max_repeats * 4} (or more)"
            )
        if self.max_duration is not None:
            parse_duration(self.max_duration, "LoopGuard(max_duration=...)")
        if self.max_spend_rate is not None:
            parse_rate(self.max_spend_rate, "LoopGuard(max_spend_rate=...)")

    def to_run_options(self) -> dict[str, Any]:
        """The options as JSON data, stored with the run so a resumed run keeps them."""
        return {"loop_guard": {f.name: getattr(self, f.name) for f in fields(self)}}


def _positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"LoopGuard({name}=...) must be a positive integer or None, got {value!r}")


@dataclass(frozen=True, slots=True)
class Signature:
    """One guarded call, as the detectors see it (recorded before the call runs)."""

    seq: int | str
    """The call's position in the run's journal (event seq or call id); evidence names calls by it."""
    kind: str
    """``"step"``, ``"llm"``, ``"tool"`` or ``"sandbox"`` (other kinds count only towards ``max_steps``)."""
    name: str
    """Step or tool name; the model for an LLM call."""
    args_digest: str
    """SHA-256 hex of the canonical JSON of the arguments (see :func:`digest`)."""
    at: float | None = None
    """Epoch seconds when the call was made; ``None`` means the state's clock, now."""

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two calls "the same call"."""
        return (self.kind, self.name, self.args_digest)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "name": self.name, "args_digest": self.args_digest}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended, as the after-detectors see it."""

    ok: bool = True
    """False if the call raised (or returned an error the integration recognises)."""
    error_type: str | None = None
    """The error's class name."""
    error_message: str | None = None
    """The error's message."""
    output_digest: str | None = None
    """SHA-256 hex of what the call produced (``None``: not compared, e.g. steps)."""
    cost_usd: Decimal = Decimal(0)
    """What the call cost, settled."""
    at: float | None = None
    """Epoch seconds when it ended; ``None``: the signature's time."""

    def __post_init__(self) -> None:
        if not isinstance(self.cost_usd, Decimal):
            cost = self.cost_usd
            object.__setattr__(self, "cost_usd", Decimal(str(cost)) if cost is not None else Decimal(0))

    @classmethod
    def failure(cls, error: BaseException, *, cost_usd: Decimal = Decimal(0), at: float | None = None) -> Outcome:
        """The outcome of a call that raised ``error``."""
        return cls(ok=False, error_type=type(error).__name__, error_message=str(error), cost_usd=cost_usd, at=at)

    @property
    def error_key(self) -> str | None:
        """What makes two errors "the same error" (class and message); ``None`` if ok."""
        if self.ok:
            return None
        return ": ".join(p for p in (self.error_type, self.error_message) if p) or "error"


_EXACT = 2**53  # floats up to here are exact integers when integral


def same_value(value: Any) -> tuple[Any, bool]:
    """``value`` with the spellings of one value made one, and whether anything changed.

    "The same arguments" means the same values, not the same characters: a number is its value
    (``1``, ``1.0`` and ``1e0`` are one; a model writes either), text is compared in Unicode
    NFC (``"é"`` composed or decomposed is one word), and text that is a JSON object or array
    (a tool that takes its arguments as a JSON string) is that object, whatever its key order
    and whitespace. Without this, an agent repeating a call could slip past ``max_repeats`` and
    ``max_oscillation`` by respelling it. Objects other than dicts, lists, tuples, strings and
    floats are left as they are.
    """
    if isinstance(value, str):
        if value[:1] in ("{", "[") or value[:1].isspace():
            stripped = value.strip()
            if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
                try:
                    parsed = json.loads(stripped)
                except (ValueError, RecursionError):
                    parsed = None
                if isinstance(parsed, dict | list):
                    return same_value(parsed)[0], True
        if not value.isascii() and not unicodedata.is_normalized("NFC", value):
            return unicodedata.normalize("NFC", value), True
        return value, False
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= _EXACT:
            return int(value), True
        return value, False
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for k, v in value.items():
            k2, ck = same_value(k) if isinstance(k, str) else (k, False)
            v2, cv = same_value(v)
            out[k2] = v2
            changed = changed or ck or cv
        return (out, True) if changed else (value, False)
    if isinstance(value, list | tuple):
        items = [same_value(v) for v in value]
        if any(c for _, c in items):
            return [v for v, _ in items], True
        return value, False
    return value, False


def digest(value: Any) -> str:
    """SHA-256 hex of the canonical JSON of ``value`` (sorted keys, no spaces, one spelling per
    value: see :func:`same_value`; ``repr`` as a last resort), the form
    ``Signature.args_digest`` and ``Outcome.output_digest`` use."""
    with contextlib.suppress(RecursionError):  # too deep for one spelling: json.dumps decides
        value = same_value(value)[0]
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return hashlib.sha256(text.encode()).hexdigest()


def now() -> float:
    """Epoch seconds (the default clock)."""
    return time.time()


class _Window:
    """The last ``size`` items with a count per key: O(1) append and membership."""

    __slots__ = ("counts", "items", "key")

    def __init__(self, size: int, key: Callable[[Any], Hashable]) -> None:
        self.items: deque[Any] = deque(maxlen=size)
        self.counts: Counter[Hashable] = Counter()
        self.key = key

    def append(self, item: Any) -> None:
        if self.items.maxlen == 0:
            return
        if len(self.items) == self.items.maxlen:
            old = self.key(self.items[0])
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        self.items.append(item)
        self.counts[self.key(item)] += 1


class _Streak:
    """A run of equal things in a row: its key, its length and its last calls (for evidence)."""

    __slots__ = ("calls", "count", "key")

    def __init__(self) -> None:
        self.key: Any = None
        self.count = 0
        self.calls: deque[Signature] = deque(maxlen=_EVIDENCE_CALLS)

    def extend(self, key: Any, sig: Signature) -> None:
        if self.count and key == self.key:
            self.count += 1
        else:
            self.key, self.count = key, 1
            self.calls.clear()
        self.calls.append(sig)

    def reset(self) -> None:
        self.key, self.count = None, 0
        self.calls.clear()


class LoopState:
    """The detectors' memory for one run: bounded, thread-safe, rebuildable from the journal.

    Args:
        guard: the options (``LoopGuard()`` if omitted).
        started_at: epoch seconds when the run started (for ``max_duration``); defaults to
            the time of the first call seen.
        run_id: named in the errors raised.
        clock: epoch seconds, for calls and outcomes that carry no time (tests inject one).
    """

    def __init__(
        self,
        guard: LoopGuard | None = None,
        started_at: float | None = None,
        *,
        run_id: str | None = None,
        clock: Callable[[], float] = now,
    ) -> None:
        g = self.guard = guard if guard is not None else LoopGuard()
        self.run_id = run_id
        self.started_at = started_at
        self._clock = clock
        self._lock = threading.Lock()
        self._max_duration = parse_duration(g.max_duration) if g.max_duration is not None else None
        self._rate = parse_rate(g.max_spend_rate) if g.max_spend_rate is not None else None
        self._stopped: LoopDetectedError | None = None
        self._total = 0
        self._counts: Counter[str] = Counter()
        # max_repeats: the calls before this one that it is compared with.
        self._recent = _Window(g.repeat_window - 1 if g.max_repeats else 0, lambda s: s.key)
        # max_oscillation: per kind, the last 3K calls and, per period p, how many calls in a
        # row equalled the call p before them (O(1) per call instead of rescanning the tail).
        self._osc_size = 3 * (g.max_oscillation or 0)
        self._by_kind: dict[str, deque[Signature]] = {}
        self._periodic: dict[str, dict[int, int]] = {}
        self._errors: dict[str, _Streak] = {}
        self._seen = _Window(HISTORY if g.max_no_progress else 0, lambda k: k)
        self._stale = _Streak()
        self._spend: deque[tuple[float, Decimal, Signature]] = deque()
        self._spent = Decimal(0)

    # ------------------------------------------------------------------ public
    @property
    def stopped(self) -> LoopDetectedError | None:
        """The error that stopped the run, or ``None`` while it runs."""
        return self._stopped

    @property
    def counts(self) -> dict[str, int]:
        """Calls accepted so far: ``{"total": 12, "llm": 6, "tool": 6}``."""
        return {"total": self._total, **self._counts}

    def before(self, sig: Signature) -> None:
        """Check a call before it runs; count it if it may run.

        Raises:
            LoopDetectedError: a cap, ``max_repeats`` or ``max_oscillation`` would be exceeded
                by this call; it must not run, and the state is now stopped.
            RunStopped: the state was already stopped (by this or an earlier error).
        """
        with self._lock:
            self._check_before(sig, self._time(sig.at))
            self._accept(sig)

    def after(self, sig: Signature, outcome: Outcome, *, check: bool = True) -> None:
        """Record how a call (that passed :meth:`before`) ended; check the after-detectors.

        Does nothing once the state is stopped (a call that was in flight when another one
        stopped the run has run; the next ``before`` ends the run).

        Raises:
            LoopDetectedError: ``max_same_error``, ``max_no_progress`` or ``max_spend_rate``
                fired on this outcome; the state is now stopped.
        """
        with self._lock:
            if self._stopped is not None:
                return
            self._observe(sig, outcome)
            if check:
                self._check_after(sig, outcome)

    def stop(self, error: LoopDetectedError) -> None:
        """Latch a stop decided elsewhere (a person refused to let a paused run go on)."""
        with self._lock:
            self._stopped = error

    def accept(self, sig: Signature) -> None:
        """Count a call without checking it (a call the journal says was already made)."""
        with self._lock:
            self._accept(sig)

    def replay(self, calls: Iterable[tuple[Signature, Outcome | None]]) -> LoopState:
        """Feed back the calls of a run's journal, in order, so a resumed run continues counting.

        Nothing fires during replay: these calls were accepted when they were first made (if
        the options were tightened since, the next live call is the one refused). Pass
        ``None`` as the outcome of a call that started but never ended and will not run again;
        leave out a call in flight that the engine will run again (its ``before`` counts it).

        Returns:
            ``self``, so ``LoopState(guard, run_id=...).replay(journal)`` reads as one step.
        """
        with self._lock:
            for sig, outcome in calls:
                self._accept(sig)
                if outcome is not None:
                    self._observe(sig, outcome)
        return self

    # ------------------------------------------------------------------ bookkeeping
    def _time(self, at: float | None) -> float:
        return self._clock() if at is None else at

    def _accept(self, sig: Signature) -> None:
        if self.started_at is None:
            self.started_at = self._time(sig.at)
        self._total += 1
        self._counts[sig.kind] += 1
        self._recent.append(sig)
        if self._osc_size:
            hist = self._by_kind.get(sig.kind)
            if hist is None:
                hist = self._by_kind[sig.kind] = deque(maxlen=self._osc_size)
                self._periodic[sig.kind] = {2: 0, 3: 0}
            runs = self._periodic[sig.kind]
            for p in (2, 3):
                runs[p] = runs[p] + 1 if len(hist) >= p and hist[-p].key == sig.key else 0
            hist.append(sig)

    def _observe(self, sig: Signature, outcome: Outcome) -> None:
        g = self.guard
        if g.max_same_error:
            streak = self._errors.setdefault(sig.kind, _Streak())
            key = outcome.error_key
            if key is None:
                streak.reset()
            else:
                streak.extend(key, sig)
        if g.max_no_progress and sig.kind in TURN_KINDS and outcome.output_digest is not None:
            novelty: tuple[str, ...] = (
                ("llm", outcome.output_digest) if sig.kind == "llm" else (*sig.key, outcome.output_digest)
            )
            if novelty in self._seen.counts:
                self._stale.extend(None, sig)
            else:
                self._stale.reset()
            self._seen.append(novelty)
        if self._rate is not None:
            at = outcome.at if outcome.at is not None else self._time(sig.at)
            if outcome.cost_usd:
                self._spend.append((at, outcome.cost_usd, sig))
                self._spent += outcome.cost_usd
            horizon = at - self._rate.seconds
            while self._spend and self._spend[0][0] <= horizon:
                self._spent -= self._spend.popleft()[1]

    # ------------------------------------------------------------------ detectors
    def _check_before(self, sig: Signature, at: float) -> None:
        if self._stopped is not None:
            raise RunStopped(run_id=self.run_id, detector=self._stopped.detector)
        g = self.guard
        n = self._total + 1
        if g.max_steps is not None and n > g.max_steps:
            self._fire("max_steps", f"call {n} would exceed max_steps={g.max_steps}",
                       count=n, limit=g.max_steps, call=sig.to_dict())  # fmt: skip
        cap = {"llm": g.max_llm_calls, "tool": g.max_tool_calls}.get(sig.kind)
        if cap is not None and self._counts[sig.kind] + 1 > cap:
            n = self._counts[sig.kind] + 1
            self._fire(f"max_{sig.kind}_calls", f"{sig.kind} call {n} would exceed max_{sig.kind}_calls={cap}",
                       count=n, limit=cap, call=sig.to_dict())  # fmt: skip
        if self._max_duration is not None and self.started_at is not None:
            elapsed = at - self.started_at
            if elapsed > self._max_duration:
                self._fire("max_duration", f"the run has lasted {elapsed:.0f}s, over max_duration={g.max_duration}",
                           elapsed_s=round(elapsed, 3), limit_s=self._max_duration, call=sig.to_dict())  # fmt: skip
        if g.max_repeats is not None:
            same = self._recent.counts.get(sig.key, 0) + 1
            if same > g.max_repeats:
                earlier = [s.to_dict() for s in self._recent.items if s.key == sig.key]
                self._fire("max_repeats",
                           f"{sig.kind} {sig.name!r} called {same} times with the same arguments within "
                           f"{g.repeat_window} calls (max_repeats={g.max_repeats})",
                           kind=sig.kind, name=sig.name, args_digest=sig.args_digest, count=same,
                           limit=g.max_repeats, window=g.repeat_window, calls=earlier, call=sig.to_dict())  # fmt: skip
        if g.max_oscillation is not None:
            self._check_oscillation(sig, g.max_oscillation)

    def _check_oscillation(self, sig: Signature, cycles: int) -> None:
        hist = self._by_kind.get(sig.kind)
        if hist is None:
            return
        runs = self._periodic[sig.kind]
        for p in (2, 3):
            # The tail (this call included) must be p * cycles + 1 calls long and periodic:
            # `cycles` full cycles ran, this call would start one more.
            if len(hist) < p * cycles or hist[-p].key != sig.key or runs[p] + 1 < p * (cycles - 1) + 1:
                continue
            cycle = list(hist)[-p:]
            if len({s.key for s in cycle}) < 2:
                continue  # one call repeated: max_repeats' business
            tail = [s.to_dict() for s in list(hist)[-p * cycles :]]
            names = " -> ".join(f"{s.kind} {s.name}" for s in cycle)
            self._fire("max_oscillation",
                       f"{sig.kind} calls cycled {cycles} times with period {p} ({names}); refusing cycle {cycles + 1}",
                       period=p, cycles=cycles, count=p * cycles + 1, limit=cycles,
                       cycle=[s.to_dict() for s in cycle], calls=tail[-_EVIDENCE_CALLS:], call=sig.to_dict())  # fmt: skip

    def _check_after(self, sig: Signature, outcome: Outcome) -> None:
        g = self.guard
        streak = self._errors.get(sig.kind)
        if g.max_same_error is not None and streak is not None and streak.count >= g.max_same_error:
            self._fire("max_same_error",
                       f"{sig.kind} calls failed {streak.count} times in a row with {streak.key}",
                       error=streak.key, error_type=outcome.error_type, error_message=outcome.error_message,
                       kind=sig.kind, count=streak.count, limit=g.max_same_error,
                       calls=[s.to_dict() for s in streak.calls])  # fmt: skip
        if g.max_no_progress is not None and self._stale.count >= g.max_no_progress:
            self._fire("max_no_progress",
                       f"{self._stale.count} results in a row added nothing new (max_no_progress={g.max_no_progress})",
                       count=self._stale.count, limit=g.max_no_progress, output_digest=outcome.output_digest,
                       calls=[s.to_dict() for s in self._stale.calls])  # fmt: skip
        if self._rate is not None and self._spent > self._rate.amount:
            self._fire("max_spend_rate",
                       f"spent ${self._spent} within {self._rate.seconds:g}s, over {g.max_spend_rate}",
                       spent=str(self._spent), limit=g.max_spend_rate, window_s=self._rate.seconds,
                       count=len(self._spend),
                       calls=[{**s.to_dict(), "cost_usd": str(c)} for _, c, s in list(self._spend)[-_EVIDENCE_CALLS:]])  # fmt: skip

    def _fire(self, detector: str, summary: str, **evidence: Any) -> NoReturn:
        err = LoopDetectedError(
            detector=detector, evidence={"summary": summary, "detector": detector, **evidence}, run_id=self.run_id
        )
        self._stopped = err
        raise err
