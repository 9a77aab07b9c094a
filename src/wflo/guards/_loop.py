"""Runaway detection on the stream of call signatures the call boundary records.

Every guarded call (explicit step, tool call, intercepted LLM call, sandbox run) is a
signature ``(kind, name, digest of its arguments)``; its outcome adds an error key, an output
digest and a cost. Detectors look at a bounded window of that stream, so their cost per call
does not grow with the run's length, and they are rebuilt from the journal on resume, so a
resumed run continues counting where it stopped.

Checked *before* a call (it is refused, nothing runs): the caps (steps, LLM calls, tool
calls, duration), the same call repeated, and A↔B(↔C) oscillation. Checked *after* it: the
same error in a row, no new output across turns, and the spend rate.

When a detector fires the run is **stopped**: ``LoopDetectedError`` is raised, a
``loop.stopped`` event with the evidence is journaled, and the stop is latched: every later
guarded call of the run raises ``RunStopped``, a ``BaseException`` that agent code's
``except Exception`` cannot swallow; the run ends ``stopped`` even if the code returns.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .._errors import LoopDetectedError, RunStopped, UserError
from ..approvals._policy import parse_duration

_RATE = re.compile(r"^\s*\$?(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(value: Any) -> tuple[Decimal, float]:
    """``"1.00/min"`` → (Decimal("1.00"), 60.0)."""
    match = _RATE.match(str(value))
    if not match:
        raise UserError(f"max_spend_rate must look like '1.00/min' or '5/hour', got {value!r}")
    return Decimal(match.group(1)), float(_PER[match.group(2)])


@dataclass(frozen=True, kw_only=True)
class LoopGuard:
    """Runaway protection for each run: ``@wflo.workflow(guards=wflo.LoopGuard(max_repeats=3))``.

    ``None`` switches a check off. The defaults are deliberately loose (they catch true
    runaways, not busy agents); tighten them per workflow.
    """

    max_steps: int | None = 1000
    """Guarded calls of any kind in one run (checked before each)."""
    max_llm_calls: int | None = None
    """LLM calls in one run."""
    max_tool_calls: int | None = None
    """Tool calls in one run."""
    max_duration: float | str | None = None
    """Wall time since the run was created (``"15m"``), checked before each call."""
    max_repeats: int | None = 5
    """The same call (kind, name and arguments) at most this often within ``repeat_window``."""
    repeat_window: int = 20
    """How many recent calls ``max_repeats`` looks at."""
    max_same_error: int | None = 5
    """The same error (class and message) this many times in a row among calls of one kind."""
    max_oscillation: int | None = 6
    """Full cycles of an A,B,A,B… (period 2) or A,B,C,A,B,C… (period 3) pattern among the
    calls of one kind (tool calls, say, whatever LLM calls come between them)."""
    max_no_progress: int | None = None
    """Consecutive LLM/tool results that repeat an earlier result (no new output)."""
    max_spend_rate: str | None = None
    """Spend above this rate over the last window stops the run, e.g. ``"1.00/min"``."""

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "max_llm_calls",
            "max_tool_calls",
            "max_repeats",
            "max_same_error",
            "max_oscillation",
            "max_no_progress",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"LoopGuard({name}=...) must be a positive integer or None, got {value!r}")
        if self.repeat_window < 2:
            raise UserError("repeat_window must be at least 2")
        if self.max_duration is not None:
            parse_duration(self.max_duration, "max_duration")
        if self.max_spend_rate is not None:
            parse_rate(self.max_spend_rate)

    def to_run_options(self) -> dict[str, Any]:
        return {"loop_guard": {k: getattr(self, k) for k in self.__dataclass_fields__}}


@dataclass(frozen=True, slots=True)
class Signature:
    seq: str
    """The call's id in the run (``3``, ``3.1``): evidence names calls by it."""
    kind: str
    name: str
    digest: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.name, self.digest)


def digest(value: Any) -> str:
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return hashlib.sha256(text.encode()).hexdigest()


class LoopState:
    """The detectors' memory for one run (bounded; O(window) per call)."""

    WINDOW = 64

    def __init__(self, guard: LoopGuard, started_at: float) -> None:
        self.g = guard
        self.started_at = started_at
        self.counts = {"step": 0, "llm": 0, "tool": 0}
        self.total = 0
        self.recent: deque[Signature] = deque(maxlen=max(self.WINDOW, guard.repeat_window))
        self.errors: dict[str, tuple[str | None, list[Any]]] = {}
        self.error_key: str | None = None
        self.error_streak: list[Any] = []
        self.outputs: deque[str] = deque(maxlen=self.WINDOW)
        self.no_progress: list[str] = []
        self.spend: deque[tuple[float, Decimal, str]] = deque()
        self.stopped: LoopDetectedError | None = None
        self.rate = parse_rate(guard.max_spend_rate) if guard.max_spend_rate else None
        self.max_duration = parse_duration(guard.max_duration) if guard.max_duration is not None else None

    # ------------------------------------------------------------------ before
    def before(self, sig: Signature, now: float, run_id: str) -> None:
        if self.stopped is not None:
            raise RunStopped(run_id=run_id, detector=self.stopped.detector)
        g = self.g
        self._fire_if(g.max_steps is not None and self.total + 1 > g.max_steps, "max_steps", run_id,
                      f"call {self.total + 1} exceeds max_steps={g.max_steps}", {"count": self.total, "limit": g.max_steps})  # fmt: skip
        cap = {"llm": g.max_llm_calls, "tool": g.max_tool_calls}.get(sig.kind)
        if cap is not None and self.counts.get(sig.kind, 0) + 1 > cap:
            self._fire(f"max_{sig.kind}_calls", run_id, f"{sig.kind} call {self.counts[sig.kind] + 1} exceeds max_{sig.kind}_calls={cap}",
                       {"count": self.counts[sig.kind], "limit": cap})  # fmt: skip
        if self.max_duration is not None and now - self.started_at > self.max_duration:
            self._fire("max_duration", run_id, f"run has lasted {now - self.started_at:.0f}s, over max_duration={g.max_duration}",
                       {"elapsed_s": round(now - self.started_at, 3), "limit_s": self.max_duration})  # fmt: skip
        if g.max_repeats is not None:
            window = list(self.recent)[-(g.repeat_window - 1) :]
            same = [s for s in window if s.key == sig.key]
            if len(same) + 1 > g.max_repeats:
                self._fire("max_repeats", run_id,
                           f"{sig.kind} {sig.name} called {len(same) + 1} times with the same arguments in the last {g.repeat_window} calls",
                           {"kind": sig.kind, "name": sig.name, "args_digest": sig.digest[:16], "count": len(same) + 1,
                            "calls": [s.seq for s in same], "window": g.repeat_window})  # fmt: skip
        if g.max_oscillation is not None:
            self._check_oscillation(sig, run_id)

    def _check_oscillation(self, sig: Signature, run_id: str) -> None:
        g = self.g
        # Within one kind: an agent's tool calls alternate A,B,A,B while the LLM calls between
        # them (whose context grows) all differ.
        same_kind = [s for s in self.recent if s.kind == sig.kind]
        keys = [s.key for s in same_kind] + [sig.key]
        for period in (2, 3):
            need = period * g.max_oscillation  # type: ignore[operator]
            if len(keys) < need:
                continue
            tail = keys[-need:]
            cycle = tail[:period]
            if len(set(cycle)) == period and all(tail[i] == cycle[i % period] for i in range(need)):
                calls = same_kind[-(need - 1) :]
                self._fire("max_oscillation", run_id,
                           f"calls cycle with period {period} ({' -> '.join(k[1] for k in cycle)}) {g.max_oscillation} times",
                           {"period": period, "cycles": g.max_oscillation, "cycle": [{"kind": k[0], "name": k[1], "args_digest": k[2][:16]} for k in cycle],
                            "calls": [s.seq for s in calls]})  # fmt: skip

    def accept(self, sig: Signature) -> None:
        """Count a call that passed ``before`` (or was replayed)."""
        self.total += 1
        if sig.kind in self.counts:
            self.counts[sig.kind] += 1
        self.recent.append(sig)

    # ------------------------------------------------------------------ after
    def after(
        self,
        sig: Signature,
        error_key: str | None,
        output_digest: str | None,
        cost: Decimal | None,
        now: float,
        run_id: str,
        *,
        check: bool = True,
    ) -> None:
        g = self.g
        # Streaks are per kind: the LLM calls that relay each tool failure back succeed, and
        # must not hide that the tool keeps failing the same way.
        key, streak = self.errors.get(sig.kind, (None, []))
        if error_key is None:
            key, streak = None, []
        elif error_key == key:
            streak = [*streak, sig.seq]
        else:
            key, streak = error_key, [sig.seq]
        self.errors[sig.kind] = (key, streak)
        self.error_key, self.error_streak = key, streak
        if output_digest is not None and sig.kind in ("llm", "tool"):
            if output_digest in self.outputs:
                self.no_progress.append(sig.seq)
            else:
                self.no_progress = []
            self.outputs.append(output_digest)
        if cost:
            self.spend.append((now, cost, sig.seq))
        if self.rate is not None:
            while self.spend and self.spend[0][0] < now - self.rate[1]:
                self.spend.popleft()
        if not check:
            return
        if g.max_same_error is not None and len(self.error_streak) >= g.max_same_error:
            self._fire("max_same_error", run_id, f"the same error {len(self.error_streak)} times in a row: {self.error_key}",
                       {"error": self.error_key, "count": len(self.error_streak), "calls": list(self.error_streak)})  # fmt: skip
        if g.max_no_progress is not None and len(self.no_progress) >= g.max_no_progress:
            self._fire("max_no_progress", run_id, f"{len(self.no_progress)} results in a row repeated earlier output",
                       {"count": len(self.no_progress), "calls": list(self.no_progress), "output_digest": (output_digest or "")[:16]})  # fmt: skip
        if self.rate is not None:
            total = sum((c for _, c, _ in self.spend), Decimal(0))
            if total > self.rate[0]:
                self._fire("max_spend_rate", run_id, f"spent ${total} within {self.rate[1]:.0f}s, over {g.max_spend_rate}",
                           {"spent": str(total), "window_s": self.rate[1], "limit": g.max_spend_rate, "calls": [s for _, _, s in self.spend]})  # fmt: skip

    # ------------------------------------------------------------------ firing
    def _fire_if(self, cond: bool, detector: str, run_id: str, summary: str, evidence: dict[str, Any]) -> None:
        if cond:
            self._fire(detector, run_id, summary, evidence)

    def _fire(self, detector: str, run_id: str, summary: str, evidence: dict[str, Any]) -> None:
        err = LoopDetectedError(
            detector=detector, evidence={"summary": summary, "detector": detector, **evidence}, run_id=run_id
        )
        self.stopped = err
        raise err


def now() -> float:
    return time.time()
