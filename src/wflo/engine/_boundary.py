"""The call boundary: one path for every guarded operation of a run.

Every explicit step, intercepted LLM call, tool call and sandbox execution goes through
``guarded_call`` (or ``aguarded_call``)::

    journal (replay?) → guards' before() in order → execute (retries) → guards' after() in
    reverse → record the completion event (with the guards' extra data and store ops, in one
    transaction)

A :class:`Guard` says what it checks *before* the call (it may refuse it, or change its
arguments, e.g. lower ``max_tokens``) and what it does *after* it (settle, count, detect).
Guards are hooks rather than wrappers so that sync and async calls share one implementation.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import logging
import reprlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, NamedTuple, NoReturn

from .._errors import (
    AtMostOnceError,
    NonDeterminismError,
    SerializationError,
    WfloError,
)
from ..store import NewEvent, StoreOp, canonical_json, json_string
from ._attempts import Attempts, LoopWait, Step, _Pause, adrive, claim_loop_waits, drive, off_loop, on_store, to_store
from ._context import Held, JournalEntry, RunContext, _call_path
from ._executor import disk_full
from ._serialize import _limit, as_replayed, decode, encode_input_text, encode_text, error_data, rebuild_error

log = logging.getLogger("wflo")


@dataclass(slots=True)
class Call:
    """One guarded operation, as the guards see it."""

    kind: str
    """``"step"``, ``"llm"``, ``"tool"``, ``"sandbox"`` or ``"child"``."""
    name: str
    """Step or tool name; the model for an LLM call."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    run: RunContext
    call_id: str = ""
    serializer: str = "json"
    at_most_once: bool = False
    retry: Any = None
    """A retry policy (``wflo.guards.RetryPolicy``): ``next_delay(attempt, error)`` says how
    long to wait before the next attempt, or ``None`` to give up."""
    timeout: Any = None
    """A ``wflo.guards.Timeout`` for each attempt (``None``: no limit)."""
    record_input: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form facts for guards (provider, request body, tool manifest, …)."""
    event: dict[str, Any] = field(default_factory=dict)
    """Extra fields guards add to the completion event (cost, usage, clamp, …)."""
    ops: list[StoreOp] = field(default_factory=list)
    """Store writes committed in the same transaction as the completion event."""

    @property
    def args_digest(self) -> str:
        """SHA-256 of the canonical JSON of the arguments (the loop detectors' key)."""
        cached = self.meta.get("_args_digest")
        if cached is None:
            try:
                text = canonical_json([list(self.args), self.kwargs])
            except (TypeError, ValueError, RecursionError):
                try:
                    text = repr((self.args, sorted(self.kwargs.items())))
                except RecursionError:  # absurdly deep arguments: refused when encoded, not here
                    text = reprlib.repr((self.args, sorted(self.kwargs.items())))
            cached = self.meta["_args_digest"] = _digest(text)
        return cached


def _digest(text: str) -> str:
    """A call's argument digest from the canonical text of ``[args, kwargs]``. surrogatepass:
    a lone surrogate is refused by ``encode()`` with a SerializationError, not here with a
    UnicodeEncodeError."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class Outcome:
    """How a call ended, for the guards' ``after``."""

    value: Any = None
    error: BaseException | None = None
    duration_ms: float = 0.0
    attempts: int = 1


class Guard:
    """A link of the guard chain. Override what you need; both hooks default to nothing."""

    def before(self, call: Call) -> None:
        """Checked before the call runs; raise to refuse it (nothing is executed or paid)."""

    def after(self, call: Call, outcome: Outcome) -> None:
        """Runs after the call (success or failure), before its event is recorded."""

    def replayed(self, call: Call, entry: JournalEntry) -> None:
        """A finished call was replayed from the journal (rebuild counters; never refuse)."""

    def recorded(self, call: Call, outcome: Outcome) -> None:
        """The call's event is committed (notify, alert). Errors here are logged, not raised."""

    def local(self, call: Call) -> bool:
        """True when this guard's ``before`` and ``replayed`` for ``call`` only read and change
        memory: no store access (but for ``call.run.append``, which may be held back and written
        later, in order), no waiting, no I/O.

        An async run begins a call on its event loop when every guard says so (and nothing of
        the run waits for the store), saving a hand-off to the store's threads; otherwise it
        begins it there. The default is ``True`` only for a guard that overrides neither hook.
        """
        cls = type(self)
        return cls.before is Guard.before and cls.replayed is Guard.replayed


NOT_REPLAYED: Any = object()
"""What :func:`start_call` returns when the call must really run."""
_NOT_REPLAYED = NOT_REPLAYED


def _replay(call: Call, entry: JournalEntry | None) -> Any:
    """The recorded result of ``call`` if the journal has one, else ``_NOT_REPLAYED``.

    The replay rules, and why:

    - A call is matched by its *position* (its call id) and checked by name and kind only, not
      by its arguments: prompts legitimately differ between the first run and the replay (a
      timestamp, a random id), and refusing those would block every such run. A different
      name or kind at a position means the code changed under the run: that is reported
      (``NonDeterminismError``), never mixed.
    - A recorded failure is raised again rather than retried: the workflow already saw that
      error and may have branched on it; running the call again could take another branch.
    - A call that started and never ended (the process died in it) runs again: at-least-once
      is the default because most effects are idempotent or checked, and the alternative loses
      work. ``at_most_once`` calls journal their start for exactly this case and fail instead.
    - Guards see replayed calls (``Guard.replayed``) so counters (loop signatures, spend) are
      rebuilt as they were, without charging or refusing anything a second time.
    """
    ctx = call.run
    if entry is None:
        return _NOT_REPLAYED
    if entry.name != call.name or entry.kind != call.kind:
        mismatch = NonDeterminismError(
            run_id=ctx.run_id, call_id=call.call_id,
            expected=f"{entry.kind} {entry.name}", found=f"{call.kind} {call.name}",
        )  # fmt: skip
        # Latched: code that catches it cannot go on and finish the run with a mixed journal;
        # the executor leaves the run blocked for fixed code.
        ctx.state.setdefault("non_determinism", mismatch)
        raise mismatch
    if entry.status == "completed":
        for guard in _hooks(ctx).replayed:
            guard.replayed(call, entry)
        return decode(entry.data.get("output"))
    if entry.status == "failed":
        for guard in _hooks(ctx).replayed:
            guard.replayed(call, entry)
        raise rebuild_error(entry.data.get("error") or {}, call.name)
    # "started" without an end: the call was in flight when the run died.
    if call.at_most_once:
        err = AtMostOnceError(run_id=ctx.run_id, step=call.name, call_id=call.call_id)
        ctx.append([NewEvent("call.failed", _end_data(call, error=err, duration_ms=0.0, attempts=0))])
        raise err
    return _NOT_REPLAYED


def start_call(call: Call) -> Any:
    """Begin a call: number it, replay it if the journal has its end, else run the guards'
    ``before`` checks. Returns the replayed value, or ``NOT_REPLAYED`` when the caller must
    execute the call and then pass its outcome to :func:`finish_call`."""
    value = _begin(call)
    if value is not _NOT_REPLAYED:
        return value
    return _admit(call, 0)


def _admit(call: Call, first: int) -> Any:
    """The guards' ``before`` checks of :func:`start_call`, from the guard at place ``first``
    of the chain (the earlier ones let the call in already). A guard that must wait for an
    async call (``_attempts.pause``) gives a ``LoopWait``: the wait is made on the call's
    event loop, then this goes on from that guard."""
    ctx = call.run
    hooks = _hooks(ctx)
    claim_loop_waits(call)
    at = first  # the guards before this one in the chain let the call in
    try:
        for place, guard in hooks.before:
            if place < first:
                continue
            at = place
            guard.before(call)
        at = len(hooks.chain)
        # Last, right before the call's first effect: a guard's before() may have waited (a
        # rate limit) while the lease ran out.
        ctx.ensure_lease()
    except _Pause as wait:
        entered = hooks.chain[:at]
        return LoopWait(
            wait.seconds,
            wait.check,
            functools.partial(_admit, call, at),
            lambda exc: _refused(call, exc, entered),
        )
    except BaseException as exc:
        _refused(call, exc, hooks.chain[:at])
    if call.at_most_once:
        _started(call)
    return _NOT_REPLAYED


def _begin(call: Call) -> Any:
    """Number the call and replay it, or encode its input: the start's part that needs no
    guard (and, but for an at-most-once call found in flight, no store)."""
    ctx = call.run
    ctx.check_cancelled()
    if "non_determinism" in ctx.state:
        raise ctx.state["non_determinism"]
    call.call_id, entry = ctx.position(call.name, call.kind, lambda: call.args_digest)
    if entry is not None:
        value = _replay(call, entry)
        if value is not _NOT_REPLAYED:
            return value
    if call.record_input:
        # Encoded before the call runs, so an input that cannot be stored fails before any effect.
        meta = call.meta
        meta["_limit"] = limit = _limit()  # the record's output is checked against the same
        value, text, stored = encode_input_text(
            call.args, call.kwargs, serializer=call.serializer, step=call.name, limit=limit
        )
        meta["_input"] = value
        if text is not None and "_args_digest" not in meta:  # the same digest, from the same text
            meta["_args_digest"] = _digest(text)
        if stored is not None:
            # The input's text, for the record (:func:`_completed_text`): valid while the stored
            # input is unchanged. Its arguments are scalars and strings (``stored`` is only given
            # for those), so only its ``kwargs`` dict (the caller's) could change: kept as items.
            kwargs = value["kwargs"]
            meta["_input_text"] = (value, stored, tuple(kwargs.items()) if kwargs else None)
    return _NOT_REPLAYED


def _refused(call: Call, exc: BaseException, entered: list[Guard]) -> NoReturn:
    """A guard or the lease check refused the call: the guards that let it in see it end, it
    is recorded (if it is a result), and the error raised."""
    _after(call, Outcome(error=exc), entered)
    _record(call, Outcome(error=exc))
    raise exc


def _started(call: Call) -> None:
    """An at-most-once call journals its start (see :func:`_replay`)."""
    data = {"call": call.call_id, "name": call.name, "kind": call.kind, "digest": call.args_digest}
    call.run.append([NewEvent("call.started", data)])


class _Hooks(NamedTuple):
    """Which guards of a run's chain do something in each hook (``Guard``'s own hooks do
    nothing: a guard that keeps one is not called for it), read once per chain: a call
    runs through the chain three times (``before``, ``after``, ``recorded``)."""

    chain: list[Guard]
    size: int
    before: tuple[tuple[int, Guard], ...]  # (its place in the chain, the guard)
    after: tuple[Guard, ...]  # in reverse order, as they run
    recorded: tuple[Guard, ...]
    replayed: tuple[Guard, ...]


def _hooks(ctx: RunContext) -> _Hooks:
    """The run's :class:`_Hooks`, made again when its chain was replaced."""
    chain = ctx.guards
    hooks: _Hooks | None = ctx.hooks
    if hooks is None or hooks.chain is not chain or hooks.size != len(chain):
        hooks = ctx.hooks = _Hooks(
            chain,
            len(chain),
            tuple((i, g) for i, g in enumerate(chain) if _acts(g, "before")),
            tuple(g for g in reversed(chain) if _acts(g, "after")),
            tuple(g for g in chain if _acts(g, "recorded")),
            tuple(g for g in chain if _acts(g, "replayed")),
        )
    return hooks


def _acts(guard: Guard, hook: str) -> bool:
    """Whether ``guard``'s ``hook`` may do something: it is not ``Guard``'s own (which does
    nothing), on its class or set on the guard itself."""
    return getattr(type(guard), hook, None) is not getattr(Guard, hook) or hook in getattr(guard, "__dict__", ())


def _after_all(call: Call, outcome: Outcome) -> None:
    """:func:`_after` of the whole chain (the guards whose ``after`` does something)."""
    guards = _hooks(call.run).after
    if guards:
        _after(call, outcome, guards, ordered=True)


def _after(call: Call, outcome: Outcome, guards: Sequence[Guard], *, ordered: bool = False) -> None:
    """The guards' ``after`` in reverse order (``ordered``: ``guards`` are in that order)."""
    for guard in guards if ordered else reversed(guards):
        try:
            guard.after(call, outcome)
        except BaseException as exc:
            # A guard's own refusal (a loop stop, say) wins over the call's error: it is
            # deliberate, and it is what the agent and the journal must see.
            if outcome.error is None or isinstance(exc, WfloError):
                outcome.error = exc
                outcome.value = None


def _end_data(
    call: Call, *, output: Any = None, error: BaseException | None = None, duration_ms: float, attempts: int
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "call": call.call_id,
        "name": call.name,
        "kind": call.kind,
        "ms": round(duration_ms, 3),
        "digest": call.args_digest,
    }
    if attempts != 1:
        data["attempts"] = attempts
    if "_input" in call.meta:
        data["input"] = call.meta["_input"]
    else:
        data["args_digest"] = call.args_digest
    if error is None:
        data["output"] = output
    else:
        data["error"] = error_data(error)
    data.update(call.event)
    return data


def _record(call: Call, outcome: Outcome, recorded: Sequence[Guard] | None = None) -> None:
    """Journal how ``call`` ended (if it is a result), then the guards' ``recorded``
    (``recorded``: those of the chain that act in it, if read already)."""
    ev = _end_event(call, outcome)
    if ev is None:
        return
    call.run.append([ev], ops=call.ops)
    if recorded is None or recorded:
        _recorded(call, outcome, recorded)


def _end_event(call: Call, outcome: Outcome) -> NewEvent | None:
    """The event that records how ``call`` ended, or ``None`` when it is not a result (see
    :func:`_record`)."""
    output = text = None
    if outcome.error is None:
        try:
            meta = call.meta
            limit = meta["_limit"] if "_limit" in meta else _limit()  # read at the start, if it was
            output, text = encode_text(
                outcome.value, serializer=call.serializer, step=call.name, what="output", limit=limit
            )
            if text is not None:  # JSON: what a replay will return (a tuple comes back a list)
                outcome.value = as_replayed(outcome.value, text)
        except SerializationError as exc:
            outcome.error, outcome.value = exc, None
    if outcome.error is None:
        data = _end_data(call, output=output, duration_ms=outcome.duration_ms, attempts=outcome.attempts)
        ev = NewEvent("call.completed", data, data_json=None if text is None else _completed_text(call, data, text))
    else:
        if (
            not isinstance(outcome.error, Exception)
            or isinstance(outcome.error, NonDeterminismError)
            or disk_full(outcome.error) is not None
        ):
            # Cancellation, lease loss, suspension, KeyboardInterrupt, SystemExit, a full disk,
            # a child run's code not matching its journal: not results of the call. Nothing is
            # recorded, so a resumed run runs it again.
            return None
        ev = NewEvent(
            "call.failed",
            _end_data(call, error=outcome.error, duration_ms=outcome.duration_ms, attempts=outcome.attempts),
        )
    return ev


def _completed_text(call: Call, data: dict[str, Any], output_text: str) -> str | None:
    """``canonical_json(data)`` of a completed call's record, put together from the texts its
    checks made (the input's in :func:`_begin`, the output's in :func:`_end_event`) rather
    than by encoding the input and output again; ``None`` (the store encodes ``data``) unless
    ``data`` has exactly :func:`_end_data`'s keys for a completed call, no guard added any
    (``call.event``), and its input's text is still that of its stored input. Keys in sorted
    order, strings as ``canonical_json`` writes them (``encode_basestring``), the same bytes
    (``tests/unit/engine/test_record_text.py``)."""
    if call.event:
        return None
    get = data.get
    ms, name, kind, call_id, digest = get("ms"), get("name"), get("kind"), get("call"), get("digest")
    if (
        type(ms) is not float
        or ms - ms != 0.0  # NaN, infinities: the store's encoder refuses them
        or type(name) is not str
        or type(kind) is not str
        or type(call_id) is not str
        or type(digest) is not str
    ):
        return None
    keys = 7  # call, name, kind, ms, digest, input or args_digest, output
    if "input" in data:
        held = call.meta.get("_input_text")
        if held is None or held[0] is not data["input"]:
            return None
        value, text, items = held
        if items is not None and tuple(value["kwargs"].items()) != items:
            return None
        first, middle = "{", f',"input":{text}'
    else:
        args_digest = get("args_digest")
        if type(args_digest) is not str:
            return None
        first, middle = f'{{"args_digest":{encode_basestring(args_digest)},', ""
    if "attempts" in data:
        attempts = data["attempts"]
        if type(attempts) is not int:
            return None
        first += f'"attempts":{int.__repr__(attempts)},'
        keys += 1
    if len(data) != keys:
        return None
    # A digest is hexadecimal (letters and digits: nothing to escape); names and kinds repeat.
    digest = f'"{digest}"' if digest.isascii() and digest.isalnum() else encode_basestring(digest)
    return (
        f'{first}"call":{encode_basestring(call_id)},"digest":{digest}{middle},'
        f'"kind":{json_string(kind)},"ms":{float.__repr__(ms)},'
        f'"name":{json_string(name)},"output":{output_text}}}'
    )


def _recorded(call: Call, outcome: Outcome, guards: Sequence[Guard] | None = None) -> None:
    """The guards' ``recorded`` (``guards``: those of the chain that act in it, if read)."""
    for guard in _hooks(call.run).recorded if guards is None else guards:
        try:
            guard.recorded(call, outcome)
        except Exception:
            log.exception("wflo: guard %r failed after recording call %s", guard, call.call_id)


def _retry_delay(call: Call, exc: BaseException, attempt: int) -> float | None:
    """Seconds before the next attempt, or ``None`` (no policy, a signal, or the policy says no)."""
    if call.retry is None or not isinstance(exc, Exception) or isinstance(exc, WfloError):
        return None
    delay = call.retry.next_delay(attempt, exc)
    return None if delay is None else float(delay)


def _note_retry(call: Call, attempt: int, exc: BaseException, delay: float) -> None:
    call.run.append([NewEvent("call.retry", {
        "call": call.call_id, "name": call.name, "kind": call.kind, "attempt": attempt,
        "error": error_data(exc), "delay_s": round(delay, 3),
    })])  # fmt: skip


_OVERRIDE = "result_override"


def _overridden(call: Call) -> Any:
    """A guard may answer a call without running it (e.g. a rejection returned as text)."""
    if _OVERRIDE in call.meta:
        return finish_call(call, Outcome(value=call.meta[_OVERRIDE]))
    return _NOT_REPLAYED


def _attempts(call: Call) -> Attempts[Outcome]:
    """The attempts of a step or tool call: run it, and after a failure retry it as its policy
    says (each retry recorded as ``call.retry``); the outcome is the last attempt's."""
    t0 = time.perf_counter()
    attempt = 0
    outcome = Outcome()
    while True:
        attempt += 1
        try:
            outcome.value = yield Step("attempt")
            break
        except BaseException as exc:
            delay = _retry_delay(call, exc, attempt)
            if delay is None:
                outcome.error = exc
                break
            yield Step("store", functools.partial(_note_retry, call, attempt, exc, delay))
            try:
                # The wait ends early when the run is cancelled or handed back (its worker is
                # stopping): a backoff of minutes must not hold up either.
                yield Step("sleep", (delay, call.run.check_cancelled))
                # The retry is a new start of the call, after a wait the lease may not have outlived.
                yield Step("store", call.run.ensure_lease)
            except BaseException as stop:
                outcome.error = stop
                break
    outcome.duration_ms = (time.perf_counter() - t0) * 1000
    outcome.attempts = attempt
    return outcome


class _Run:
    """The io of :func:`_attempts`' drivers. ``run``: the run whose store the ``"store"`` steps
    go to (the drivers' convention; an op named ``run`` once shadowed it, and every async step
    with a retry policy failed on its first retry with an AttributeError)."""

    def __init__(self, call: Call, fn: Callable[..., Any]) -> None:
        self.call, self.fn, self.run = call, fn, call.run

    def attempt(self, _: object) -> Any:
        call = self.call
        if call.timeout is None:
            return self.fn(*call.args, **call.kwargs)
        return call.timeout.call(self.fn, *call.args, **call.kwargs)


class _ARun(_Run):
    async def attempt(self, _: object) -> Any:
        call = self.call
        if call.timeout is None:
            return await self.fn(*call.args, **call.kwargs)
        return await call.timeout.acall(self.fn, *call.args, **call.kwargs)


def guarded_call(call: Call, fn: Callable[..., Any]) -> Any:
    """Run ``fn(*call.args, **call.kwargs)`` through the journal and the guard chain."""
    replayed = start_call(call)
    if replayed is not _NOT_REPLAYED:
        return replayed
    if _OVERRIDE in call.meta:
        return _overridden(call)
    token = _call_path.set(call.call_id)
    try:
        outcome = _run_once(call, fn) if call.retry is None else drive(_attempts(call), _Run(call, fn))
    finally:
        _call_path.reset(token)
    return finish_call(call, outcome)


def _run_once(call: Call, fn: Callable[..., Any]) -> Outcome:
    """:func:`_attempts` for a call with no retry policy (one attempt, its outcome), without
    the generator and its driver: about 2 µs of every sync step."""
    outcome = Outcome()
    t0 = time.perf_counter()
    try:
        if call.timeout is None:
            outcome.value = fn(*call.args, **call.kwargs)
        else:
            outcome.value = call.timeout.call(fn, *call.args, **call.kwargs)
    except BaseException as exc:
        outcome.error = exc
    outcome.duration_ms = (time.perf_counter() - t0) * 1000
    return outcome


async def aguarded_call(call: Call, fn: Callable[..., Awaitable[Any]]) -> Any:
    """The async twin of :func:`guarded_call` (same journal, same guards, same attempts).

    What touches the store (the guards' ``before`` and ``after`` when they need it, the record)
    runs on the store's threads, in order for the run (``off_loop``); ``fn`` runs on the loop,
    and so does the call's start when it needs no store (see :func:`_astart`).

    The usual step (begun at once on the loop, no retry policy) passes through no coroutine
    but this one and ``fn``'s on its way to its record: its start is made here
    (:func:`_start_now`), its one attempt awaited here, and its end awaited on the store's
    own awaitable (:func:`_afinish`), each layer saved a frame on every resumption.
    """
    local = _local_start(call)
    begun = _start_now(call) if local else None
    if begun is None or begun.error is not None or begun.held or begun.value is not _NOT_REPLAYED:
        replayed = await _astart(call, local, begun)
        if replayed is not _NOT_REPLAYED:
            return replayed
    elif not call.run.lease_fresh():  # the lease ran out meanwhile: renewed there
        await off_loop(_write_then_admit, call, [], begun.entered)
    if _OVERRIDE in call.meta:
        return await off_loop(_overridden, call)
    token = _call_path.set(call.call_id)
    try:
        if call.retry is None:  # one attempt: :func:`_attempts` without its generator and driver
            outcome = Outcome()
            t0 = time.perf_counter()
            try:
                if call.timeout is None:
                    outcome.value = await fn(*call.args, **call.kwargs)
                else:
                    outcome.value = await call.timeout.acall(fn, *call.args, **call.kwargs)
            except BaseException as exc:
                outcome.error = exc
            outcome.duration_ms = (time.perf_counter() - t0) * 1000
        else:
            outcome = await adrive(_attempts(call), _ARun(call, fn))
    finally:
        _call_path.reset(token)
    return await _afinish(call, outcome)


def _local_start(call: Call) -> bool:
    """Whether an async call's start needs no store: see :func:`_astart`."""
    ctx = call.run
    if call.at_most_once or not ctx.lease_fresh():
        return False
    for guard in ctx.guards:  # noqa: SIM110 (a loop, not ``all()`` of a generator: every async call asks)
        if not guard.local(call):
            return False
    return True


class _Begun(NamedTuple):
    value: Any  # the replayed value, or NOT_REPLAYED
    held: list[Held]  # appends held back, to write on the store's threads
    error: BaseException | None
    entered: list[Guard] | None  # the guards that let the call in (None: none was asked)


async def _astart(call: Call, local: bool, begun: _Begun | None) -> Any:
    """:func:`start_call` for an async call; on the event loop when it needs no store.

    Begun on the store's threads, a call costs a hand-off there and back before it runs and
    another after it (its record): on a fast store the hand-offs cost as much as the commit.
    Most calls need the store only for that record: the journal is in memory, a fresh lease
    needs no renewal, and a step's guards only count it. Such a call (not at-most-once, whose
    start is written; lease fresh; every guard saying its ``before`` and ``replayed`` need no
    store, ``Guard.local``) is begun with ``off_loop(..., here=True)``: on the loop's thread at
    once when nothing of the run is queued or running on the store's threads, else there in its
    turn. Either way it has the place in the run's order that a start on the store's threads
    would have had (so the same number), and the task gives way to the loop and is woken the
    same way: the run's tasks reach their next calls in the same order as before, on the first
    run and on a replay, whichever starts happened to run where.

    What such a start still writes (a guard's event as it refuses the call, the refused call's
    record) is held and written on the store's threads before the call runs or its error is
    raised; a lease that ran out in between is renewed there.

    ``local``: :func:`_local_start` said so; ``begun``: the start :func:`_start_now` made at
    once, if it did (:func:`aguarded_call` goes on by itself when it needs nothing more).
    """
    if not local:  # a guard's wait (a rate limit's turn) is made on the loop, not a store thread
        return await on_store(start_call, call)
    ctx = call.run
    if begun is None:
        begun = await off_loop(_start_here, call, here=True)
    elif begun.value is not _NOT_REPLAYED and begun.error is None and not begun.held:
        await asyncio.sleep(0)  # a replay of many calls still gives the loop's other tasks turns
    if begun.error is not None:
        if begun.entered is not None:  # a guard refused the call: recorded there, then raised
            await off_loop(_write_then_refuse, call, begun.held, begun.error, begun.entered)
        elif begun.held:
            await off_loop(ctx.write_held, begun.held)
        raise begun.error
    if begun.value is not _NOT_REPLAYED:
        if begun.held:
            await off_loop(ctx.write_held, begun.held)
        return begun.value
    if begun.held or not ctx.lease_fresh():  # the lease ran out meanwhile: renewed there
        await off_loop(_write_then_admit, call, begun.held, begun.entered)
    return _NOT_REPLAYED


def _start_now(call: Call) -> _Begun | None:
    """:func:`_start_here` made at once, with no turn of the loop, when the run's one task
    is the only one that can call (no task created inside the run still runs) and nothing of
    the run is queued or running on the store's threads (``Store.run_here``); ``None``
    otherwise (begun through ``off_loop(..., here=True)``).

    Why no turn of the loop is needed then: the turn a start on the loop gives way with keeps
    the order in which the run's *tasks* reach their next calls the same whichever starts ran
    where (see :func:`_astart`); with one task there is no such order. What the start does is
    what a start through ``off_loop`` does (in a copy of the context, in the run's place in
    the order of the store's threads): in memory, no store, no wait (``_local_start``)."""
    ctx = call.run
    if not ctx.one_task():
        return None
    ran, begun = ctx.store.run_here(ctx.run_id, contextvars.copy_context().run, _start_here, call)
    return begun if ran else None


def _start_here(call: Call) -> _Begun:
    """The start of a call that needs no store, wherever it runs: appends are held back."""
    ctx = call.run
    entered: list[Guard] | None = None  # None: no guard was asked (the start failed before)
    chain: list[Guard] | None = None
    at = 0
    with ctx.hold_appends() as held:
        try:
            value = _begin(call)
            if value is _NOT_REPLAYED:
                chain = (hooks := _hooks(ctx)).chain
                for place, guard in hooks.before:
                    at = place
                    guard.before(call)
                entered = chain
        except BaseException as exc:
            if chain is not None:  # a guard refused it: the guards before it let it in
                entered = chain[:at]
            return _Begun(_NOT_REPLAYED, held, exc, entered)
    return _Begun(value, held, None, entered)


def _write_then_refuse(call: Call, held: list[Held], exc: BaseException, entered: list[Guard]) -> None:
    try:
        call.run.write_held(held)
    except BaseException as lost:  # the lease was lost: that, not the refusal, is what happened
        _refused(call, lost, entered)
    _refused(call, exc, entered)


def _write_then_admit(call: Call, held: list[Held], entered: list[Guard] | None) -> None:
    try:
        call.run.write_held(held)
        call.run.ensure_lease()
    except BaseException as exc:
        _refused(call, exc, entered or [])


def _local_end(call: Call) -> bool:
    """Whether an async call's end needs no store but for its record: every guard says its
    ``before`` and ``replayed`` for the call are in memory (``Guard.local``), and its ``after``
    and ``recorded`` are too: wflo's guards keep both to memory for a call they call local (a
    budget settles, and a loop guard pauses, only calls they are not local for); another
    guard must not override them."""
    for guard in call.run.guards:
        cls = type(guard)
        if not (cls.__module__.startswith("wflo.") or (cls.after is Guard.after and cls.recorded is Guard.recorded)):
            return False
        if not guard.local(call):
            return False
    return True


def _afinish(call: Call, outcome: Outcome) -> Awaitable[Any]:
    """:func:`finish_call` for an async call; its record written from the event loop when the
    store can (``Store.loop_writer``: PostgreSQL with a pooled connection idle, nothing of the
    run queued or running on the store's threads) and the end needs the store for nothing
    else (:func:`_local_end`): no hand-off to a store thread and back, and the loop is never
    blocked (the commit is awaited on its reader). The writer holds the run's place in the
    order of the store's threads from the guards' ``after`` to the commit, as a job there
    would. Otherwise, or when the end turns out to need more (an append a guard made, ops
    to commit with the record, another thread of the run appending), on the store's threads.
    Returns the awaitable of the end: the store's own (``Store.off_loop``'s) on the store's
    threads, with no coroutine of its own between."""
    ctx = call.run
    writer = ctx.store.loop_writer(ctx.run_id) if _local_end(call) and not ctx.lease_lost else None
    if writer is None:
        return to_store(ctx, finish_call, call, outcome)
    return _afinish_on_loop(call, outcome, writer)


async def _afinish_on_loop(call: Call, outcome: Outcome, writer: Any) -> Any:
    """:func:`_afinish` through the store's loop writer (``Store.loop_writer``)."""
    ctx = call.run
    try:
        with ctx.hold_appends() as held:
            _after_all(call, outcome)
            ev = _end_event(call, outcome)
        if held or call.ops:
            writer.close()
            writer = None
            return await off_loop(_finish_held, call, outcome, held, ev)
        if ev is not None:
            if await ctx.append_on_loop(writer, [ev]) is None:
                writer.close()
                writer = None
                return await off_loop(_finish_held, call, outcome, [], ev)
            held = []
            if ctx.guards:
                with ctx.hold_appends() as held:
                    _recorded(call, outcome)
            if held:
                writer.close()
                writer = None
                await off_loop(ctx.write_held, held)
    finally:
        if writer is not None:
            writer.close()
    if outcome.error is not None:
        raise outcome.error
    ctx.check_cancelled()
    return outcome.value


def _finish_held(call: Call, outcome: Outcome, held: list[Held], ev: NewEvent | None) -> Any:
    """The rest of :func:`finish_call` after :func:`_afinish` ran the guards' ``after`` on the
    loop: what they appended, then the record (with its ops), on the store's threads."""
    ctx = call.run
    ctx.write_held(held)
    if ev is not None:
        ctx.append([ev], ops=call.ops)
        _recorded(call, outcome)
    if outcome.error is not None:
        raise outcome.error
    ctx.check_cancelled()
    return outcome.value


def finish_call(call: Call, outcome: Outcome, *, check_cancel: bool = True) -> Any:
    """End a call begun with :func:`start_call`: guards' ``after``, then record it.

    Raises the call's error, if any; returns its value.
    """
    hooks = _hooks(call.run)
    if hooks.after:
        _after(call, outcome, hooks.after, ordered=True)
    _record(call, outcome, hooks.recorded)
    if outcome.error is not None:
        raise outcome.error
    if check_cancel:
        call.run.check_cancelled()
    return outcome.value
