"""Executing a claimed run: load its journal, run the workflow function, record how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import inspect
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import (
    LeaseLost,
    LoopDetectedError,
    NonDeterminismError,
    RunCancelled,
    RunReleased,
    RunStopped,
    RunSuspended,
    SerializationError,
)
from .._runtime import Runtime
from .._runtime import runtime as current_runtime
from ..observability import is_enabled, run_finished
from ..store import NewEvent, RunRecord, Store, StoreOp
from ._context import RunContext, _call_path, _current_run
from ._heartbeat import heartbeats
from ._serialize import _limit, decode, encode_text, error_data

if TYPE_CHECKING:
    from ._workflow import Workflow

# Extensions (``wflo.ext``): guards and hooks added to every run of the process, whichever
# runtime runs it, after the runtime's own (``Runtime.run_guards`` and its hooks). wflo itself
# adds none: its guard chain is the runtime's.
GuardFactory = Callable[["Workflow[Any, Any]", RunRecord], list[Any]]
_guard_factories: list[GuardFactory] = []


def add_guard_factory(factory: GuardFactory) -> None:
    """Add guards to every run: ``factory(wf, record)`` returns the extra guards of one
    execution (after the runtime's chain)."""
    if factory not in _guard_factories:
        _guard_factories.append(factory)


def guards_for(rt: Runtime, wf: Workflow[Any, Any] | None, record: RunRecord, store: Store) -> list[Any]:
    """The guards of one execution of ``record``: the runtime's chain, then the extensions'."""
    guards: list[Any] = list(rt.run_guards(wf, record, store))
    for factory in _guard_factories:
        guards.extend(factory(wf, record))  # type: ignore[arg-type]
    return guards


def chain_for(
    rt: Runtime, wf: Workflow[Any, Any] | None, record: RunRecord, store: Store
) -> list[Any] | Callable[[], Sequence[Any]]:
    """What :class:`RunContext` takes as its guards: wflo's own chain (the default
    ``Runtime.run_guards``, no extension's factory) as a builder, called at the run's first
    guarded call (issue 20: a run that makes none never builds it; its guards are made of
    memory alone, so building them later, on any thread, changes nothing they do). The HTTP
    clients are wrapped now, before the run's code can send a request. A chain of another
    runtime class, or with extensions' guards, is built now, as before: their factories may
    expect to be called for every execution, or read the store."""
    if _guard_factories or type(rt).run_guards is not Runtime.run_guards:
        return guards_for(rt, wf, record, store)
    rt.intercept()
    global _wrapped
    _wrapped = True
    return functools.partial(rt.run_guards, wf, record, store)


_wrapped = False


def clients_wrapped() -> bool:
    """Whether a run of this process has wrapped the HTTP clients already (``Runtime.intercept``,
    whose first call imports them: a later one is quick and in memory)."""
    return _wrapped


_process_owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
_owner_pid = os.getpid()


def process_owner() -> str:
    """This process's lease-owner name (``host:pid:nonce``), renewed after a fork."""
    global _process_owner, _owner_pid
    if os.getpid() != _owner_pid:
        _owner_pid = os.getpid()
        _process_owner = f"{socket.gethostname()}:{_owner_pid}:{uuid.uuid4().hex[:6]}"
    return _process_owner


def owner_is_dead_here(owner: str | None) -> bool:
    """True when ``owner`` is a process on this host that no longer exists."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return owner != process_owner() and not owner.startswith(f"{parts[0]}:{pid}:worker")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_resume_hooks: list[Callable[[Store, str], tuple[list[NewEvent], StoreOp | None]]] = []


def add_resume_hook(hook: Callable[[Store, str], tuple[list[NewEvent], StoreOp | None]]) -> None:
    """``hook(store, run_id)`` gives events and a store write committed with a run's
    ``run.resumed`` event (e.g. charging the calls a dead execution left in flight)."""
    if hook not in _resume_hooks:
        _resume_hooks.append(hook)


def _prepare(
    rt: Runtime, store: Store, wf: Workflow[Any, Any], record: RunRecord, owner: str, fresh: bool = False,
    leased_at: float | None = None,
) -> RunContext:  # fmt: skip
    ctx = RunContext.load(store, record, owner, chain_for(rt, wf, record, store), fresh=fresh, runtime=rt)
    if leased_at is not None:
        ctx.lease_renewed(leased_at)
    if record.attempts <= 1 and not ctx.journal:
        if ctx.last_event_type != "run.started":
            ctx.append([NewEvent("run.started", {"attempt": record.attempts, "worker": owner})])
        return ctx
    events, ops = rt.resume_ops(store, record.id)
    for hook in _resume_hooks:
        more, op = hook(store, record.id)
        events += more
        ops += [op] if op is not None else []
    if ctx.last_event_type != "run.started":
        resumed = {"attempt": record.attempts, "worker": owner, "replayable_calls": len(ctx.journal)}
        events.insert(0, NewEvent("run.resumed", resumed))
    if events:
        ctx.append(events, ops=ops)
    return ctx


_finish_ops: list[Callable[[Store, str, str], StoreOp | None]] = []


def add_finish_op(factory: Callable[[Store, str, str], StoreOp | None]) -> None:
    """``factory(store, run_id, status)`` gives a store write committed with a run's final
    event (``status``: succeeded, failed, stopped or cancelled), or ``None``."""
    _finish_ops.append(factory)


def _final_ops(ctx: RunContext, status: str) -> list[StoreOp]:
    ops = ctx.runtime.finish_ops(ctx.store, ctx.run_id, status, run=ctx)
    return ops + [op for f in _finish_ops if (op := f(ctx.store, ctx.run_id, status)) is not None]


def disk_full(exc: BaseException | None) -> BaseException | None:
    """The "no space left" error in ``exc``'s chain (OSError ENOSPC/EDQUOT, SQLite's
    "database or disk is full", PostgreSQL's SQLSTATE 53100), or ``None``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if getattr(exc, "sqlstate", None) == "53100" or "database or disk is full" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _blocking(ctx: RunContext, exc: BaseException) -> tuple[str, BaseException] | None:
    """Why the run must be left ``blocked`` (resumable by hand) instead of ending, if it must.

    Non-determinism is a fault of the code, not of the run: fixed code can finish it (as
    Temporal leaves such a workflow task retrying). A full disk is a fault of the host: once
    space is freed the run can finish. Neither is a result of the run, so neither ends it.
    """
    nd = ctx.state.get("non_determinism")
    if isinstance(nd, NonDeterminismError) or isinstance(exc, NonDeterminismError):
        return "non_determinism", nd if isinstance(nd, NonDeterminismError) else exc
    full = disk_full(exc)
    if full is not None:
        return "disk_full", full
    return None


_BLOCKED_FIX = {
    "non_determinism": "resume it with the code version that started it (or fixed code): wflo runs resume {id} --import MODULE",
    "disk_full": "free disk space, then resume it: wflo runs resume {id} --import MODULE",
}


def _block(ctx: RunContext, reason: str, cause: BaseException) -> None:
    """Leave the run ``blocked`` with the evidence; nothing is finished or released as failed.

    A blocked run is not claimed by workers (it would only fail the same way again); it is
    resumed by ``wflo runs resume`` / ``wflo.resume`` or cancelled. If even this event cannot
    be written (the disk is still full), the lease is let go, or simply expires: the run then
    stays ``running`` and resumable, never ``failed``.
    """
    data = {"reason": reason, "error": error_data(cause), "fix": _BLOCKED_FIX[reason].format(id=ctx.run_id)}
    try:
        ctx.append([NewEvent("run.blocked", data)], status="blocked", release=True)
    except LeaseLost:
        return
    except Exception:
        with contextlib.suppress(Exception):
            ctx.store.release(ctx.run_id, ctx.owner)
        return
    _ended(ctx)


def _finish_ok(ctx: RunContext, wf: Workflow[Any, Any], value: Any) -> Any:
    nd = ctx.state.get("non_determinism")
    if isinstance(nd, NonDeterminismError):
        # The code caught the error and returned anyway: its result mixes two code versions.
        _block(ctx, "non_determinism", nd)
        raise nd
    stopped = ctx.state.get("stopped")
    if stopped is not None:
        # The code caught the stop and returned anyway: the run still ends stopped.
        _finish_error(ctx, stopped)
        raise stopped
    try:
        output, text = encode_text(value, serializer=wf.serializer, step=wf.name, what="result", limit=_limit())
    except SerializationError as exc:
        _finish_error(ctx, exc)
        raise
    try:
        ctx.append(
            [_completed(output, text)],
            ops=_final_ops(ctx, "succeeded"),
            status="succeeded",
            output=output,
            output_json=text,
            finish=True,
        )
    except Exception as exc:
        if disk_full(exc) is None:
            raise
        _block(ctx, "disk_full", exc)
        raise
    _ended(ctx)
    return value


def _completed(output: Any, text: str | None) -> NewEvent:
    """A run's ``run.completed`` event; its data's canonical JSON written around the output's
    (``text``, ``None`` for pickle), which the store also keeps: the output serialised once."""
    return NewEvent("run.completed", {"output": output}, data_json=None if text is None else f'{{"output":{text}}}')


_ON_THREAD: Any = object()
"""What :func:`_end_on_loop` gives when the run's end must be written on the store's threads."""


def _end_on_loop(ctx: RunContext, wf: Workflow[Any, Any], value: Any) -> Any:
    """The encoded output of an async run that succeeded and its text (``encode_text``'s pair),
    when its end is the final append alone, which the event loop can send
    (:func:`_afinish_ok`); else ``_ON_THREAD``: a latched stop or non-determinism, a lost lease, an output that cannot be encoded, or finish ops to
    commit with it (kept payloads to drop, an extension's, another runtime's) go through
    :func:`_finish_ok` on the store's threads, as before."""
    if ctx.lease_lost or "non_determinism" in ctx.state or ctx.state.get("stopped") is not None:
        return _ON_THREAD
    if _finish_ops or type(ctx.runtime).finish_ops is not Runtime.finish_ops:
        return _ON_THREAD  # may read the store
    if ctx.runtime.finish_ops(ctx.store, ctx.run_id, "succeeded", run=ctx):  # wflo's own: in memory
        return _ON_THREAD
    try:
        return encode_text(value, serializer=wf.serializer, step=wf.name, what="result", limit=_limit())
    except SerializationError:
        return _ON_THREAD


async def _afinish_ok(ctx: RunContext, wf: Workflow[Any, Any], value: Any) -> Any:
    """:func:`_finish_ok` for an async run, its final append sent from the event loop when the
    store can (``Store.loop_writer``: PostgreSQL with a pooled connection idle, nothing of the
    run queued or running on the store's threads) and the end is that append alone
    (:func:`_end_on_loop`): no hand-off to a store thread and back (issue 20). The append is
    the same statement, fenced and durable, awaited before the value is returned; the writer
    holds the run's place in the order of the store's threads until it is answered.
    Otherwise, or when another thread of the run is appending, on the store's threads."""
    store = ctx.store
    output = _end_on_loop(ctx, wf, value)
    writer = store.loop_writer(ctx.run_id) if output is not _ON_THREAD else None
    if writer is None:
        return await store.off_loop(_finish_ok, ctx, wf, value, key=ctx.run_id)
    try:
        output, text = output
        end = {"status": "succeeded", "output": output, "output_json": text}
        head = await ctx.append_on_loop(writer, [_completed(output, text)], end=end)
    except Exception as exc:
        writer.close()
        writer = None
        if disk_full(exc) is None:
            raise
        await store.off_loop(_block, ctx, "disk_full", exc, key=ctx.run_id)
        raise
    finally:
        if writer is not None:
            writer.close()
    if head is None:  # another thread of the run is appending: after it, on the store's threads
        return await store.off_loop(_finish_ok, ctx, wf, value, key=ctx.run_id)
    if is_enabled():  # the export reads the store
        await store.off_loop(_ended, ctx, key=ctx.run_id)
    return value


def _finish_error(ctx: RunContext, exc: BaseException) -> None:
    if isinstance(exc, LeaseLost):
        return  # another worker owns the run now; we must not write
    blocking = _blocking(ctx, exc) if isinstance(exc, Exception) else None
    if blocking is not None:
        _block(ctx, *blocking)
        return
    err = error_data(exc)
    if isinstance(exc, RunSuspended):
        wake_at = (exc.wait or {}).get("wake_at")
        ctx.append(
            [NewEvent("run.waiting", {"reason": exc.reason, "wait": exc.wait})],
            status="waiting",
            release=True,
            wake_at=wake_at,
        )
        _ended(ctx)
        return
    if isinstance(exc, RunReleased):
        # Its worker is stopping: the lease goes, the status stays (``running``), and any
        # worker resumes the run at once from its journal (``run.resumed``).
        ctx.append([NewEvent("run.released", {"worker": ctx.owner})], release=True)
        return
    if isinstance(exc, RunCancelled):
        kind, status = "run.cancelled", "cancelled"
    elif isinstance(exc, LoopDetectedError | RunStopped):
        kind, status = "run.stopped", "stopped"
        stop = ctx.state.get("stopped")
        if isinstance(exc, RunStopped) and stop is not None:
            err = error_data(stop)
    elif isinstance(exc, Exception):
        kind, status = "run.failed", "failed"
    else:
        # KeyboardInterrupt, SystemExit…: the process is going away, not the run failing.
        # Let the lease go so another worker (or a rerun) resumes it at once.
        with contextlib.suppress(Exception):
            ctx.store.release(ctx.run_id, ctx.owner)
        return
    ctx.append([NewEvent(kind, {"error": err})], ops=_final_ops(ctx, status), status=status, error=err, finish=True)
    _ended(ctx)


def _ended(ctx: RunContext) -> None:
    """The run ended, stopped, failed or waits: export it (a no-op unless export is on; never raises)."""
    run_finished(ctx.store, ctx.run_id)


def _raise_stop(ctx: RunContext, exc: BaseException) -> None:
    """The caller of a stopped run sees the ``LoopDetectedError`` with its evidence."""
    stop = ctx.state.get("stopped")
    if isinstance(exc, RunStopped) and stop is not None:
        raise stop from None


def _args(record: RunRecord) -> tuple[list[Any], dict[str, Any]]:
    data = decode(record.input) if record.input is not None else {}
    return list(data.get("args", [])), dict(data.get("kwargs", {}))


def execute(
    store: Store, wf: Workflow[Any, Any], record: RunRecord, owner: str, *, fresh: bool = False,
    runtime: Runtime | None = None, leased_at: float | None = None, prepared: RunContext | None = None,
) -> Any:  # fmt: skip
    """Run ``record`` (whose lease ``owner`` holds) to its end, or until it waits or is lost.

    ``fresh``: ``owner`` has just created the run (its journal holds no calls yet, so it is
    not read). ``runtime``: the runtime running it (default: the one in use here); its guards
    and settings apply, and it is active while the workflow's code runs. ``leased_at``: the
    ``time.monotonic()`` at which the request that gave ``owner`` the lease was sent (unknown:
    the first call renews the lease first). ``prepared``: the context :func:`prepare` gave
    (with the claim that took the run back). Returns the workflow's value; raises its
    exception (after recording it).
    """
    rt = runtime if runtime is not None else current_runtime()
    if wf.is_async:
        return _run_coroutine(
            aexecute(store, wf, record, owner, fresh=fresh, prepared=prepared, runtime=rt, leased_at=leased_at)
        )
    with rt.activate():
        ctx = prepared if prepared is not None else _prepare(rt, store, wf, record, owner, fresh, leased_at)
        args, kwargs = _args(record)
        heartbeats.track(store, owner, ctx)
        run_token = _current_run.set(ctx)
        path_token = _call_path.set("")
        try:
            ctx.check_cancelled()
            value = wf.fn(*args, **kwargs)
        except BaseException as exc:
            ctx.close()
            ctx.end_open()
            _finish_error(ctx, exc)
            _raise_stop(ctx, exc)
            raise
        finally:
            _call_path.reset(path_token)
            _current_run.reset(run_token)
            heartbeats.untrack(ctx)
        ctx.close()  # before the final event: a thread still calling now is refused, not journaled after it
        ctx.end_open()  # a stream the code left unread: recorded and settled before the run's end
        return _finish_ok(ctx, wf, value)


def prepare(
    store: Store, wf: Workflow[Any, Any], record: RunRecord, owner: str, fresh: bool = False,
    runtime: Runtime | None = None, leased_at: float | None = None,
) -> RunContext:  # fmt: skip
    """The run's context, its journal loaded and its start (or resumption) recorded (blocking)."""
    rt = runtime if runtime is not None else current_runtime()
    with rt.activate():
        return _prepare(rt, store, wf, record, owner, fresh, leased_at)


async def aexecute(
    store: Store,
    wf: Workflow[Any, Any],
    record: RunRecord,
    owner: str,
    *,
    fresh: bool = False,
    prepared: RunContext | None = None,
    runtime: Runtime | None = None,
    leased_at: float | None = None,
) -> Any:
    """The async twin of :func:`execute`: the workflow runs on the loop, and its store work
    (loading the journal, the start and final events) on the store's threads, in order; a
    final append alone from the loop where the store can (:func:`_afinish_ok`).

    ``prepared``: the context :func:`prepare` gave (in the same hop as the run's creation, or
    as the claim that took it back)."""
    rt = runtime if runtime is not None else current_runtime()
    if not wf.is_async:
        return await asyncio.to_thread(
            execute, store, wf, record, owner, fresh=fresh, runtime=rt, leased_at=leased_at, prepared=prepared
        )
    with rt.activate():
        ctx = (
            prepared
            if prepared is not None
            else await store.off_loop(_prepare, rt, store, wf, record, owner, fresh, leased_at, key=record.id)
        )
        args, kwargs = _args(record)
        heartbeats.track(store, owner, ctx)
        run_token = _current_run.set(ctx)
        path_token = _call_path.set("")
        try:
            ctx.check_cancelled()
            value = await wf.fn(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, RunSuspended | RunReleased):
                await _settle_tasks(ctx)
            ctx.close()
            if ctx.has_open():
                await ctx.aend_open()
            await store.off_loop(_finish_error, ctx, exc, key=record.id)
            _raise_stop(ctx, exc)
            raise
        finally:
            _call_path.reset(path_token)
            _current_run.reset(run_token)
            heartbeats.untrack(ctx)
        ctx.close()  # before the final event: a thread still calling now is refused, not journaled after it
        if ctx.has_open():  # a stream the code left unread: recorded and settled before the run's end
            await ctx.aend_open()
        return await _afinish_ok(ctx, wf, value)


async def _settle_tasks(ctx: RunContext) -> None:
    """Before a run that will resume ends (it waits, or is handed back): let the tasks it
    started that still run finish, so their calls are recorded. ``asyncio.gather`` hands on
    the first task's ``RunSuspended`` at once while its siblings' calls are still in flight;
    their results then came after the run's end, were refused, and ran again on resume (sync
    code records a call before it can go on, and a thread pool joins its threads)."""
    me = asyncio.current_task()
    while live := [t for t in ctx.live_tasks() if t is not me]:
        await asyncio.wait(live)


def loop_running() -> bool:
    """Whether an event loop runs in this thread (the caller is async code, or under it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_coroutine(coro: Any) -> Any:
    """Run a coroutine from sync code: here if no loop runs, else in a fresh thread's loop."""
    if not loop_running():
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def runner() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=runner, name="wflo-async-run")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def is_async_callable(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or (callable(fn) and inspect.iscoroutinefunction(type(fn).__call__))
