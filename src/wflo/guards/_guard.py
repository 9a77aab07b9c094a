"""The loop guard as a link of the call boundary."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from decimal import Decimal
from typing import Any

from .._errors import LoopDetectedError, UserError
from ..engine import Call, Guard, JournalEntry
from ..engine import Outcome as CallOutcome
from ..store import NewEvent, canonical_json, parse_iso
from ._loop import LoopGuard, LoopState, Outcome, Signature, digest, now, same_value

_COUNTED = frozenset({"step", "llm", "tool", "sandbox", "child"})


def _llm_content(value: dict[str, Any]) -> Any:
    """What an LLM answered (text and tool calls), without ids and timestamps that always differ."""
    body = value.get("body") or ""
    try:
        doc = json.loads(body)
    except ValueError:
        return body  # a stream: its text is what it is
    if not isinstance(doc, dict):
        return doc
    if "choices" in doc:  # chat (message) and legacy completions (text)
        return [c.get("message") or c.get("text") for c in doc["choices"] if isinstance(c, dict)]
    if "content" in doc:
        return doc["content"]
    if "candidates" in doc:  # Gemini
        return [c.get("content") for c in doc["candidates"] if isinstance(c, dict)]
    if isinstance(doc.get("output"), dict):  # Bedrock Converse
        return doc["output"]
    if isinstance(doc.get("output"), list):
        return [{k: v for k, v in item.items() if k != "id"} for item in doc["output"] if isinstance(item, dict)]
    return doc


def _error_key(kind: str, error: Any, value: Any) -> str | None:
    if error is not None:
        if isinstance(error, dict):
            return f"{error.get('type')}: {error.get('message')}"
        return f"{type(error).__name__}: {error}"
    if kind == "llm" and isinstance(value, dict) and int(value.get("status", 200)) >= 400:
        return f"HTTP {value.get('status')}"
    return None


def _output_digest(kind: str, value: Any) -> str | None:
    if kind == "llm" and isinstance(value, dict):
        return digest(_llm_content(value))
    return digest(value) if kind in ("tool",) else None


def _outcome(kind: str, error: Any, value: Any, cost: Any, at: float) -> Outcome:
    key = _error_key(kind, error, value)
    return Outcome(ok=key is None, error_message=key, output_digest=_output_digest(kind, value),
                   cost_usd=Decimal(cost) if cost else Decimal(0), at=at)  # fmt: skip


def _loop_key(call: Call, recorded: str | None = None) -> str:
    """The digest the detectors compare: the call's argument digest, unless its arguments
    spell a value more than one way (``1.0``, decomposed text, a JSON string; see
    :func:`same_value`), then the digest of their one spelling, so a respelled call is the
    same call. ``recorded``: the digest a replayed call's event holds (kept if the call's own
    arguments are no longer the recorded ones)."""
    raw = call.args_digest
    if recorded is not None and recorded != raw:
        return recorded
    if call.kind == "llm" or call.meta.get("_loop_key") is not None:
        return str(call.meta.get("_loop_key") or raw)
    try:
        value, changed = same_value([list(call.args), call.kwargs])
        key = hashlib.sha256(canonical_json(value).encode("utf-8", "surrogatepass")).hexdigest() if changed else raw
    except (TypeError, ValueError, RecursionError):
        key = raw  # not JSON: its digest is the engine's, from its encoded form
    call.meta["_loop_key"] = key
    return key


ON_LOOP = ("stop", "pause")


class LoopGuardGuard(Guard):
    """Runaway detection at the call boundary; see ``wflo.guards._loop`` for what it checks.

    ``on_loop="stop"`` (the default) ends the run at the first detection. ``on_loop="pause"``
    turns a detection made *before* a call (caps, ``max_repeats``, ``max_oscillation``) into an
    approval request on that call: the run waits, durably, for a person. Allowed: the call runs
    and the detectors start counting afresh from it. Rejected: the run stops as with ``"stop"``.
    Detections made *after* a call (same error, no progress, spend rate) always stop: the call
    has already happened, and there is nothing left to hold back.
    """

    def __init__(self, options: LoopGuard, *, run_id: str, created_at: str, on_loop: str = "stop") -> None:
        if on_loop not in ON_LOOP:
            raise UserError(f"on_loop must be 'stop' or 'pause', got {on_loop!r}")
        self.options = options
        self.created = parse_iso(created_at).timestamp()
        self.state = LoopState(options, self.created, run_id=run_id)
        self.run_id = run_id
        self.on_loop = on_loop

    def _sig(self, call: Call) -> Signature:
        return Signature(call.call_id, call.kind, call.name, _loop_key(call))

    def local(self, call: Call) -> bool:
        # Counting is in memory; a stop's event goes through ``run.append``. A pause files an
        # approval request, which the approval guard writes to the store.
        return call.kind not in _COUNTED or self.on_loop == "stop"

    def before(self, call: Call) -> None:
        if call.kind not in _COUNTED:
            return
        try:
            self.state.before(self._sig(call))
        except LoopDetectedError as exc:
            if self.on_loop == "pause":
                self._pause(call, exc)
                return
            self._stopped(call, exc)
            raise

    def _pause(self, call: Call, exc: LoopDetectedError) -> None:
        from ..approvals import Approval

        self._restart()
        self.state.accept(self._sig(call))
        summary = exc.evidence.get("summary", exc.detector)
        call.meta["approval"] = Approval(
            message=f"Loop guard ({exc.detector}): {summary}. Let the run go on?", on_reject="return"
        )
        call.meta["loop_pause"] = exc
        call.event["loop_pause"] = {"detector": exc.detector, "summary": summary}

    def _restart(self) -> None:
        self.state = LoopState(self.options, self.created, run_id=self.run_id)

    def after(self, call: Call, outcome: CallOutcome) -> None:
        paused = call.meta.get("loop_pause")
        if paused is not None and "approval" not in call.event and outcome.error is None:
            # The person said no (the approval guard answered instead of running the call).
            self.state.stop(paused)
            self._stopped(call, paused)
            raise paused
        if call.kind not in _COUNTED or isinstance(outcome.error, LoopDetectedError):
            return
        cost = call.event.get("cost_usd")
        ended = now()
        result = _outcome(call.kind, outcome.error, outcome.value, cost, ended)
        if result.cost_usd and self.options.max_spend_rate is not None:
            # When the money went, for a resumed run's spend-rate window (a crash must not
            # empty it: the calls just before it still count against the rate).
            call.event["spent_at"] = round(ended, 3)
        if call.kind == "llm" and result.output_digest is not None:
            # Recorded: the content policy may keep less of the answer than was hashed here.
            call.event["output_digest"] = result.output_digest
        try:
            self.state.after(self._sig(call), result)
        except LoopDetectedError as exc:
            self._stopped(call, exc)
            raise

    def replayed(self, call: Call, entry: JournalEntry) -> None:
        if entry.kind not in _COUNTED:
            return
        data = entry.data
        if data.get("loop_pause"):
            self._restart()  # a person let the run go on here: counting started afresh
        sig = Signature(entry.call, entry.kind, entry.name, _loop_key(call, data.get("digest")))
        from ..engine._serialize import decode

        output = decode(data.get("output")) if "output" in data else None
        # Spend is in the rate window at the time it was made ("spent_at"); without one, old.
        spent_at = data.get("spent_at")
        at = float(spent_at) if isinstance(spent_at, int | float) and not isinstance(spent_at, bool) else 0.0
        outcome = _outcome(entry.kind, data.get("error"), output, data.get("cost_usd"), at)
        if data.get("output_digest"):
            outcome = dataclasses.replace(outcome, output_digest=data["output_digest"])
        self.state.replay([(sig, outcome)])

    def _stopped(self, call: Call, exc: LoopDetectedError) -> None:
        ctx = call.run
        if ctx.state.get("stopped") is None:
            ctx.state["stopped"] = exc
            ctx.append(
                [NewEvent("loop.stopped", {"detector": exc.detector, "evidence": exc.evidence, "call": call.call_id})]
            )
