"""``@wflo.workflow`` and ``@wflo.step``: the decorators users type, and run handles."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import difflib
import functools
import inspect
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, cast, overload

from .._config import get_store, opened_store, settings
from .._errors import (
    ConfigurationError,
    OptionError,
    ResultTimeoutError,
    RunFailedError,
    RunSuspended,
    UnknownWorkflowError,
    UserError,
)
from .._runtime import runtime as current_runtime
from .._scope import check_name, check_tenant
from ..observability._link import LINK_OPTION, link_for_start, note_on_caller
from ..store import Event, NewEvent, OrderedExecutor, RunRecord, Store, new_id, parse_iso
from ._attempts import off_loop
from ._boundary import Call, aguarded_call, guarded_call
from ._context import RunContext, _call_path, current_run
from ._executor import (
    aexecute,
    clients_wrapped,
    execute,
    is_async_callable,
    loop_running,
    owner_is_dead_here,
    prepare,
    process_owner,
)
from ._options import StepOptions, WorkflowOptions, check_options
from ._queues import Queue, queue_name, queue_placement
from ._serialize import check_serializer, decode, encode_input_text
from ._tables import journal_read

if TYPE_CHECKING:
    from ..cost import Budget
    from ..guards import LoopGuard, RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

_registry: dict[str, Workflow[Any, Any]] = {}
_registry_lock = threading.Lock()


def registered_workflows() -> dict[str, Workflow[Any, Any]]:
    """The workflows defined (imported) in this process, by name."""
    with _registry_lock:
        return dict(_registry)


def get_workflow(name: str) -> Workflow[Any, Any]:
    with _registry_lock:
        wf = _registry.get(name)
        if wf is None:
            raise UnknownWorkflowError(name=name, known=list(_registry))
        return wf


def _qualname(fn: Callable[..., Any]) -> str:
    """``module.qualname``: a workflow's or step's default name, the same however it was loaded.

    A script run as ``python path/to/flow.py`` is module ``__main__``; it is named by its
    file (``flow``), the name it has when imported (``import flow``, ``--import flow`` or
    ``--import path/to/flow.py``), so a run started by the script resumes after a crash from
    the command line or a worker. ``python -m pkg.flow`` names it ``pkg.flow``.
    """
    module = str(getattr(fn, "__module__", None) or "?")
    if module == "__main__":
        module = main_module_name()
    return f"{module}.{fn.__qualname__}"


def main_module_name() -> str:
    """The importable name of the ``__main__`` module (``python -m x.y``: ``x.y``; a script: its file name)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None) and spec.name != "__main__":
        return str(spec.name)
    file = getattr(main, "__file__", None)
    if file:
        return module_for_file(str(file))[1]
    return "__main__"  # an interactive session: nothing else can import it anyway


def module_for_file(path: str) -> tuple[str, str]:
    """``(import root, dotted module name)`` of a Python file: ``app/pkg/flow.py`` with
    ``app/pkg/__init__.py`` is ``("app", "pkg.flow")``, the name it is imported by from ``app``."""
    file = os.path.abspath(path)
    folder, name = os.path.split(os.path.splitext(file)[0])
    parts = [name]
    while os.path.isfile(os.path.join(folder, "__init__.py")):
        folder, package = os.path.split(folder)
        parts.insert(0, package)
    return folder, ".".join(parts)


def check_function(fn: Any, what: str) -> None:
    """Refuse, at the decorator, what cannot be a workflow or a step: a run of it would only
    fail later, after it was created (a generator's result cannot be journaled), or, for a
    value that is not a function, deep inside with an ``AttributeError``."""
    if isinstance(fn, str):
        raise UserError(f"@wflo.{what} takes a function, got the text {fn!r}; to name it: @wflo.{what}(name={fn!r})")
    if isinstance(fn, type):
        raise UserError(
            f"@wflo.{what} decorates a function, not a class ({fn.__qualname__}); decorate a function or a method"
        )
    if not callable(fn):
        raise UserError(f"@wflo.{what} decorates a function, got {fn!r} ({type(fn).__name__})")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise UserError(
            f"@wflo.{what} cannot decorate the generator function {getattr(fn, '__qualname__', fn)!r}: its result is "
            "journaled, and a generator is not data; return a list instead of yielding"
        )


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Per-start options: ``research.options(id="ticket-42", tenant="acme").run(...)``."""

    id: str | None = None
    """Run id (an idempotency key): starting an id that exists returns that run."""
    tenant: str | None = None
    """Tenant the run's spend and records belong to."""
    traceparent: str | None = None
    """W3C ``traceparent`` of the caller's span (e.g. the incoming request's header): every
    stretch's root span links to it. Default: the OpenTelemetry span current at the start
    (a child run: its parent run's root); ``""`` for no link."""
    queue: Any = None
    """A ``wflo.Queue`` (or its name) to start the run on, instead of the workflow's own."""
    priority: int = 0
    """Within its queue, a run with a higher priority is started first (then the oldest)."""
    partition_key: str | None = None
    """Runs of one queue with the same key execute one at a time (``Queue.per_partition``)."""

    def __post_init__(self) -> None:
        # Refused before a run is created: a NUL reaches PostgreSQL as a driver error, a
        # long id overflows its NOTIFY.
        if self.id is not None:
            check_name(self.id, "run id", colon=True)
        if self.tenant is not None:
            check_tenant(self.tenant, "tenant")


class Workflow(Generic[P, R]):
    """A durable workflow: each run is journaled and resumes after a crash."""

    def __init__(self, fn: Callable[P, R], /, **options: Any) -> None:
        check_function(fn, "workflow")
        self.fn = fn
        self.config = check_options(WorkflowOptions, options, what="workflow")
        """The decorator's options, typed and checked (see ``WorkflowOptions``)."""
        if self.config.name:
            check_name(self.config.name, "a workflow's name", colon=True)  # no NUL, line break, 10k characters
        elif getattr(fn, "__name__", None) == "<lambda>":
            # Every lambda of a module has the same default name, and runs find their
            # workflow by name: a second one would silently replace the first.
            raise UserError("a lambda workflow needs a name of its own: wflo.workflow(name='...')(lambda ...)")
        self.name = self.config.name or _qualname(fn)
        self.serializer = check_serializer(self.config.serializer)
        self.is_async = is_async_callable(fn)
        self.queue = queue_name(self.config.queue, where=f"workflow {self.name!r}")
        functools.update_wrapper(self, fn)
        with _registry_lock:
            existing = _registry.get(self.name)
            if existing is not None and existing.fn is not fn and _qualname(existing.fn) != _qualname(fn):
                raise ConfigurationError(f"two different workflows are named {self.name!r}; give one another name=")
            _registry[self.name] = self

    resumes_only_in_process: str | None = None
    """Set by an integration whose runs only the process that started them can continue (a
    wrapped LangGraph graph or pydantic-ai agent: the graph and its call are that process's):
    how such a run resumes. Workers do not claim these runs and ``wflo.resume`` refuses them
    with it, instead of executing them without their call and failing them for good."""
    _signature: inspect.Signature | None = None
    """``fn``'s signature, read on the first start (not on every one)."""
    _bare: bool = False
    """Whether ``fn`` takes no arguments (known at the first start without any)."""
    _options: dict[str, Any] | None = None
    """:meth:`run_options`, made once (the options are frozen)."""

    def __repr__(self) -> str:
        return f"<wflo.engine.Workflow {self.name}>"

    def check_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse inputs the function cannot take, before a run is created for them."""
        if self._bare and not args and not kwargs:
            return  # taken once: always taken
        signature = self._signature
        if signature is None:
            try:
                signature = self._signature = inspect.signature(self.fn)
            except (TypeError, ValueError):
                return  # a builtin or C callable without a signature: let the call decide
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise UserError(f"workflow {self.name!r} cannot take these inputs: {exc} (it takes {signature})") from None
        if not args and not kwargs:
            self._bare = True

    def run_options(self) -> dict[str, Any]:
        """Options stored with each run, so any worker resumes it under the same rules.

        Option objects of other layers (``Budget``, ``LoopGuard``, …) contribute through
        their ``to_run_options()``.
        """
        options = self._options
        if options is None:
            options = self._options = self.config.run_options()
        return dict(options)

    def options(self, **options: Any) -> BoundWorkflow[P, R]:
        """This workflow with start options (``id=``, ``tenant=``; see ``RunOptions``)."""
        if options:
            known = [field.name for field in dataclasses.fields(RunOptions)]
            for key in options:
                if key not in known:
                    close = difflib.get_close_matches(key, known, n=2)
                    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"valid: {', '.join(known)}"
                    raise OptionError(
                        f"{self.name}.options() got an unknown option {key!r}; {hint}", option=key, of="options"
                    )
        return BoundWorkflow(self, RunOptions(**options))

    # --------------------------------------------------------------- calling
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Inside a workflow: run as a child workflow. Outside: the same as ``run``.

        An ``async def`` workflow called in async code (an event loop running in this thread)
        gives an awaitable, ``arun``'s, as any ``async def`` function does: ``await child(x)``
        in an async parent. (It ran synchronously, blocking the loop, and handed back its
        result, which the ``await`` then refused with a ``TypeError``.) In sync code it runs."""
        if self.is_async and loop_running():
            return cast(R, self.options().arun(*args, **kwargs))
        return cast(R, self.options().run(*args, **kwargs))

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run durably in this process and return the result (or raise the workflow's error)."""
        return cast(R, self.options().run(*args, **kwargs))

    async def arun(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Async ``run``: async workflows run on the current event loop."""
        return cast(R, await self.options().arun(*args, **kwargs))

    def start(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle:
        """Enqueue a run for a worker and return its handle at once."""
        return self.options().start(*args, **kwargs)

    async def astart(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle:
        """Async ``start``: the run is enqueued on the store's threads, not on the loop."""
        return await self.options().astart(*args, **kwargs)


MAX_CHILD_DEPTH = 50
"""How many child workflows may run nested in one another in one stack (``.run()`` inside a
run): a workflow calling itself without end is refused with a ``UserError`` at this depth,
before Python's recursion limit breaks the innermost run with a ``RecursionError``."""
_child_depth: contextvars.ContextVar[int] = contextvars.ContextVar("wflo_child_depth", default=0)


class BoundWorkflow(Generic[P, R]):
    """A workflow with start options bound (see :meth:`Workflow.options`)."""

    def __init__(self, wf: Workflow[P, R], opts: RunOptions) -> None:
        self.wf = wf
        self.opts = opts

    def _request(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], owner: str | None
    ) -> tuple[dict[str, Any], RunContext | None]:
        """``Store.create_run``'s arguments for a start (its inputs encoded; checked before:
        ``Workflow.check_inputs``), and the run it is started in (a child's parent), if any."""
        wf = self.wf
        cfg = settings()
        # Encoded once: the text of arguments that are scalars and strings is stored as it is.
        payload, _, input_json = encode_input_text(
            args, kwargs, serializer=wf.serializer, step=wf.name, limit=cfg.max_value_bytes
        )
        parent = current_run()
        run_id = self.opts.id
        parent_id = None
        tenant = self.opts.tenant
        if parent is not None:
            parent_id = parent.run_id
            tenant = tenant or parent.record.tenant
            if run_id is None:
                # A child's id is derived from its parent and call position, so a replayed
                # parent finds the same child instead of starting another.
                run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"wflo:{parent.run_id}:{_call_path.get()}"))
        options = wf.run_options()  # a copy of its own
        options["started_by"] = cfg.principal
        link = link_for_start(self.opts.traceparent, parent_id)
        if link is not None:
            options[LINK_OPTION] = link
        request = dict(
            run_id=run_id or new_id(), workflow=wf.name, input=payload, parent_id=parent_id,
            tenant=tenant, owner=owner, lease_seconds=cfg.lease_seconds, options=options, input_json=input_json,
            **queue_placement(self.opts, wf.queue, wf.name),
        )  # fmt: skip
        return request, parent

    def _created(self, record: RunRecord, created: bool, parent: RunContext | None) -> RunRecord:
        if parent is None:
            note_on_caller(record.id, self.wf.name)
        if not created and record.workflow != self.wf.name:
            raise UserError(f"run id {record.id!r} already belongs to workflow {record.workflow!r}")
        return record

    def _create(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], owner: str | None
    ) -> tuple[Store, RunRecord, bool]:
        self.wf.check_inputs(args, kwargs)
        store = get_store()
        request, parent = self._request(args, kwargs, owner)
        record, created = store.create_run(**request)
        return store, self._created(record, created, parent), created

    def _claim_existing(self, store: Store, record: RunRecord, owner: str) -> RunRecord:
        """Hold an existing run: at once if it is free or its owner died on this host,
        else when its owner's lease expires (unless it finishes first)."""
        record = _claim_look(store, record, owner)
        while not record.done and record.lease_owner != owner:
            time.sleep(_claim_pause())
            record = _claim_look(store, None, owner, record.id)
        return record

    async def _aclaim_existing(self, store: Store, record: RunRecord, owner: str) -> RunRecord:
        """``_claim_existing`` for ``arun``: each look on the store's threads (in the run's
        order), each wait between looks here, on the loop. The wait must hold no store thread
        and no place in the run's order: the run it waits for may be held by this process (a
        worker's slot runs a child whose parent, replaying on another slot, waits for it), and
        that run's own store work would queue behind the wait, which ends only when the run
        does: the worker hung for good."""
        record = await store.off_loop(_claim_look, store, record, owner, key=record.id)
        while not record.done and record.lease_owner != owner:
            await asyncio.sleep(_claim_pause())
            record = await store.off_loop(_claim_look, store, None, owner, record.id, key=record.id)
        return record

    def _child_call(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call | None:
        parent = current_run()
        if parent is None:
            return None
        return Call(
            kind=kind,
            name=self.wf.name,
            args=args,
            kwargs=kwargs,
            run=parent,
            serializer=self.wf.serializer,
            record_input=False,
        )

    def _nest(self) -> contextvars.Token[int]:
        """One more child run nested in this stack, refused past ``MAX_CHILD_DEPTH``."""
        depth = _child_depth.get()
        if depth >= MAX_CHILD_DEPTH:
            raise UserError(
                f"workflow {self.wf.name!r} would run {depth + 1} child workflows deep (at most "
                f"{MAX_CHILD_DEPTH}): does it call itself without end? Stop the recursion, or .start() the deeper runs"
            )
        return _child_depth.set(depth + 1)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        call = self._child_call("child", args, kwargs)
        if call is not None:
            token = self._nest()
            try:
                return guarded_call(call, lambda *a, **k: self._run_here(a, k))
            finally:
                _child_depth.reset(token)
        return self._run_here(args, kwargs)

    def _run_here(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        owner = process_owner()
        leased_at: float | None = time.monotonic()  # before the request that gives us the lease
        store, record, created = self._create(args, kwargs, owner)
        if not created:
            leased_at = time.monotonic()
            record = self._claim_existing(store, record, owner)
            if record.done:
                return _result_of(record)
        fresh = created
        prepared: RunContext | None = None
        while True:
            try:
                return execute(store, self.wf, record, owner, fresh=fresh, leased_at=leased_at, prepared=prepared)
            except RunSuspended as pause:
                if current_run() is not None:
                    raise  # a child waits by suspending its parent too
                record, prepared = _wait_until_woken(store, self.wf, record.id, owner, pause)
                if prepared is None:
                    return _result_of(record)
                fresh, leased_at = False, None

    async def arun(self, *args: Any, **kwargs: Any) -> Any:
        call = self._child_call("child", args, kwargs)
        if call is not None:
            token = self._nest()
            try:
                return await aguarded_call(call, lambda *a, **k: self._arun_here(a, k))
            finally:
                _child_depth.reset(token)
        return await self._arun_here(args, kwargs)

    async def _arun_here(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        owner = process_owner()
        begun = await self._astart_on_loop(args, kwargs, owner)
        if begun is None:
            # Opening the store (first use), creating the run and, for a new async run, recording
            # its start block: one hop off the loop.
            context = contextvars.copy_context()
            opened = _openers.submit(None, functools.partial(context.run, self._create_prepared, args, kwargs, owner))
            begun = cast(tuple[Store, RunRecord, bool, "RunContext | None"], await asyncio.wrap_future(opened))
        store, record, created, prepared = begun
        leased_at: float | None = None
        if not created:
            leased_at = time.monotonic()
            record = await self._aclaim_existing(store, record, owner)
            if record.done:
                return _result_of(record)
        fresh = created
        while True:
            try:
                return await aexecute(
                    store, self.wf, record, owner, fresh=fresh, prepared=prepared, leased_at=leased_at
                )
            except RunSuspended as pause:
                if current_run() is not None:
                    raise  # a child waits by suspending its parent too
                record, prepared = await _await_until_woken(store, self.wf, record.id, owner, pause)
                if prepared is None:
                    return _result_of(record)
                fresh, leased_at = False, None

    async def _astart_on_loop(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], owner: str
    ) -> tuple[Store, RunRecord, bool, RunContext | None] | None:
        """A top-level async run created from the event loop, and its context (issue 20: its
        start without a hand-off to a thread and back), when nothing of it blocks: the store
        open already, the HTTP clients wrapped by an earlier run, the store able to send the
        creation from the loop (``Store.loop_writer``: PostgreSQL with a pooled connection
        idle). ``None`` otherwise (nothing sent): the start goes through a thread, as before.
        The same statement as there, relaxed as that start is; the loop is never blocked."""
        wf = self.wf
        if not wf.is_async or not clients_wrapped() or current_run() is not None:
            return None
        store = opened_store()
        if store is None:
            return None
        wf.check_inputs(args, kwargs)
        request, _ = self._request(args, kwargs, owner)
        writer = store.loop_writer(request["run_id"])
        if writer is None:
            return None
        del request["parent_id"]  # a top-level run's
        sent_at = time.monotonic()  # before the request that gives us the lease
        try:
            record, created = await writer.create_run(**request)
        finally:
            writer.close()
        record = self._created(record, created, None)
        prepared = prepare(store, wf, record, owner, True, leased_at=sent_at) if created else None
        return store, record, created, prepared

    def _create_prepared(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], owner: str
    ) -> tuple[Store, RunRecord, bool, RunContext | None]:
        sent_at = time.monotonic()
        store, record, created = self._create(args, kwargs, owner)
        prepared = (
            prepare(store, self.wf, record, owner, True, leased_at=sent_at) if created and self.wf.is_async else None
        )
        return store, record, created, prepared

    def start(self, *args: Any, **kwargs: Any) -> RunHandle:
        call = self._child_call("child.start", args, kwargs)
        if call is not None:
            run_id = guarded_call(call, lambda *a, **k: self._create(a, k, None)[1].id)
            return RunHandle(run_id, get_store())
        store, record, _ = self._create(args, kwargs, None)
        return RunHandle(record.id, store)

    async def astart(self, *args: Any, **kwargs: Any) -> RunHandle:
        """Async ``start``: the same run (a child's recorded once in its parent's journal, as
        ``start`` records it), created on the store's threads; the loop goes on meanwhile."""
        call = self._child_call("child.start", args, kwargs)
        if call is not None:

            async def create(*a: Any, **k: Any) -> str:
                return await off_loop(lambda: self._create(a, k, None)[1].id)

            return RunHandle(await aguarded_call(call, create), call.run.store)
        context = contextvars.copy_context()
        opened = _openers.submit(None, functools.partial(context.run, self._create, args, kwargs, None))
        store, record, _ = cast(tuple[Store, RunRecord, bool], await asyncio.wrap_future(opened))
        return RunHandle(record.id, store)


def _claim_look(store: Store, record: RunRecord | None, owner: str, run_id: str = "") -> RunRecord:
    """One look of ``_claim_existing`` at a run (``record``, or read now: ``run_id``): taken
    if it is free, its lease expired or its owner died on this host; as it is otherwise."""
    if record is None:
        record = store.get_run(run_id)
    if record.done or record.lease_owner == owner:
        return record
    if record.lease_owner is not None and owner_is_dead_here(record.lease_owner):
        store.release(record.id, record.lease_owner)
    return store.claim(record.id, owner, settings().lease_seconds)


def _claim_pause() -> float:
    """How long ``_claim_existing`` waits between looks at a run another owner holds."""
    return min(1.0, settings().lease_seconds / 4)


_openers = OrderedExecutor("open", 4)
"""Threads on which async callers open the store and create runs (before a store is known)."""


def _wait_until_woken(
    store: Store, wf: Workflow[Any, Any], run_id: str, owner: str, pause: RunSuspended
) -> tuple[RunRecord, RunContext | None]:
    """In a script, wait for a suspended run's decision instead of exiting.

    Prints a visible line (with how to decide) once, then polls until the run is woken (and
    claims it to continue here: the record and its context, ready to execute) or another
    worker finished it (the record, no context).
    """
    _announce(run_id, pause)
    refused = 0
    ahead = False
    with store.changes(run_id) as changes:
        while True:
            # Claimed at once if its wake-up time has come (one round trip), else read as it is.
            record, ctx = _claim_woken(store, wf, run_id, owner, ahead)
            if record.done or ctx is not None:
                return record, ctx
            wait, refused = _next_look(record, settings().poll_interval, refused)
            ahead = _likely_due(record, changes.wait(wait))


async def _await_until_woken(
    store: Store, wf: Workflow[Any, Any], run_id: str, owner: str, pause: RunSuspended
) -> tuple[RunRecord, RunContext | None]:
    """``_wait_until_woken`` for ``arun``: claims (and prepares) on the store's threads, waits
    for the change feed on the loop, so a run waiting for a person holds no thread."""
    _announce(run_id, pause)
    refused = 0
    ahead, at = False, None
    with store.changes(run_id) as changes:
        while True:
            record, ctx = await store.off_loop(_claim_woken, store, wf, run_id, owner, ahead, at, key=run_id)
            if record.done or ctx is not None:
                return record, ctx
            poll = settings().poll_interval
            wait, refused = _next_look(record, poll, refused)
            # A look at the run's wake-up time (a timer) is handed to a store thread a little
            # before it, which sleeps the rest (``_HANDOFF``); any other look waits here.
            timer = record.wake_at is not None and wait < poll
            due = time.monotonic() + wait
            changed = await changes.await_change(wait - min(wait, _HANDOFF) if timer else wait)
            ahead = timer or _likely_due(record, changed)
            at = due if timer and not changed else None


_HANDOFF = 0.005
"""How long before a timer's deadline an async run hands its look to a store thread, which
sleeps until the deadline: the loop's own timer (epoll rounds it up to the millisecond) and the
hop to a thread each wait for a core, 1.5 to 6 ms after the deadline under load, where a
thread's sleep ends within a fraction of a millisecond. A decision in those last milliseconds
is looked at with the deadline."""


def _claim_woken(
    store: Store, wf: Workflow[Any, Any], run_id: str, owner: str, ahead: bool, at: float | None = None
) -> tuple[RunRecord, RunContext | None]:
    """Claim a waiting run back if its wake-up time has come and, if it was, load its journal
    and record its resumption (the context to execute it with), on this thread.

    ``ahead``: the run is likely due (see ``_likely_due``): the reads that loading makes (its
    journal, what the runtime checks on resuming) go with the claim (``Store.read_ahead``),
    so on PostgreSQL the run is back and loaded in one round trip, then its ``run.resumed``
    is written. Not on other looks (the first, as the run began to wait), which would read
    a journal for nothing. ``at``: the ``time.monotonic()`` to look at (sleep until then)."""
    if at is not None:
        time.sleep(max(0.0, at - time.monotonic()))
    reads = [journal_read(run_id), *current_runtime().resume_reads(store, run_id)] if ahead else []
    sent_at = time.monotonic()
    with store.read_ahead(reads):
        record = store.claim(run_id, owner, settings().lease_seconds, woken=True)
        if record.done or record.lease_owner != owner:
            return record, None
        return record, prepare(store, wf, record, owner, leased_at=sent_at)


def _likely_due(record: RunRecord, changed: bool) -> bool:
    """Whether the next look will likely take the run back: a change came (a decision), or
    the wake-up time it had has passed by this machine's clock (a timer)."""
    return changed or (record.wake_at is not None and parse_iso(record.wake_at) <= datetime.now(UTC))


def _announce(run_id: str, pause: RunSuspended) -> None:
    wait = pause.wait or {}
    lines = [f"wflo: run {run_id} is waiting: {pause.reason}"]
    if wait.get("hint"):
        lines.append(str(wait["hint"]))  # the guard that suspended the run knows how to wake it
    elif wait.get("approval_id"):
        lines.append(
            f"wflo: decide with `wflo approve {wait['approval_id']}` or `wflo reject {wait['approval_id']} --reason ...`"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


def _next_look(record: RunRecord, poll: float, refused: int) -> tuple[float, int]:
    """How long a run not (yet) claimed back waits for a change before looking again, and how
    many looks in a row found it due by this machine's clock but were refused by the store's.

    Such a refusal means this machine's clock runs ahead of the store's, which judges (or
    another claimer is at it): the next looks back off (5 ms, doubling, up to ``poll``), so a
    skewed clock cannot turn the wait into a stream of claims. A change (a decision) still
    wakes the wait at once."""
    wait = _until(record.wake_at, poll)
    if record.wake_at is not None and wait <= _PAST:
        return min(poll, 0.005 * 2 ** min(refused, 16)), refused + 1
    return wait, 0


_PAST = 0.0002
"""Looks for a wake-up time this long after it (stored to the microsecond): then it has passed,
and a timer's run is claimed at the first look (a millisecond here was a millisecond late)."""


def _until(wake_at: str | None, poll: float) -> float:
    """Seconds to wait for a change: ``poll`` at most, less if ``wake_at`` comes sooner."""
    if wake_at is None:
        return poll
    return max(0.0, min(poll, (parse_iso(wake_at) - datetime.now(UTC)).total_seconds() + _PAST))


def _result_of(record: RunRecord) -> Any:
    if record.status == "succeeded":
        return decode(record.output)
    raise RunFailedError(run_id=record.id, status=record.status, error=record.error)


_cancel_hooks: list[Callable[[Store, str], None]] = []


def add_cancel_hook(hook: Callable[[Store, str], None]) -> None:
    """``hook(store, run_id)`` runs after a run was asked to cancel, after the runtime's own
    (which closes the run's pending approvals; the engine knows no such thing by name)."""
    _cancel_hooks.append(hook)


class RunHandle:
    """A run somewhere (queued, running on a worker, finished). Cheap to create by id."""

    def __init__(self, run_id: str, store: Store | None = None) -> None:
        self.id = run_id
        self._store = store

    @property
    def store(self) -> Store:
        return self._store or get_store()

    def __repr__(self) -> str:
        return f"<wflo.RunHandle {self.id}>"

    def record(self) -> RunRecord:
        return self.store.get_run(self.id)

    def status(self) -> str:
        """``queued``, ``running``, ``waiting``, ``succeeded``, ``failed``, ``cancelled`` or ``stopped``."""
        return self.record().status

    def events(self) -> list[Event]:
        """The run's journal (its hash chain), in order."""
        return self.store.events(self.id)

    def cancel(self, *, by: str | None = None, via: str = "local") -> str:
        """Ask the run to stop at its next step boundary; returns its status now.

        Who asked (``by``, default the configured principal) is recorded on the system chain
        (``run.cancel_requested``): the run's own ``run.cancelled`` event is written by whoever
        stops it, which may be a worker long after, and knows no person.
        """
        return _cancel(self.store, self.id, by, via)

    async def _astore(self) -> Store:
        """The handle's store, opened off the loop when this is the process's first use of it
        (opening migrates a new store: store work too)."""
        if self._store is not None:
            return self._store
        context = contextvars.copy_context()
        opened = _openers.submit(None, functools.partial(context.run, get_store))
        return cast(Store, await asyncio.wrap_future(opened))

    async def arecord(self) -> RunRecord:
        """Async ``record``: read on the store's threads."""
        store = await self._astore()
        return await store.off_loop(store.get_run, self.id, key=self.id)

    async def astatus(self) -> str:
        """Async ``status``."""
        return (await self.arecord()).status

    async def aevents(self) -> list[Event]:
        """Async ``events``: the journal read on the store's threads."""
        store = await self._astore()
        return await store.off_loop(store.events, self.id, key=self.id)

    async def acancel(self, *, by: str | None = None, via: str = "local") -> str:
        """Async ``cancel``: the same request and record, written on the store's threads."""
        store = await self._astore()
        return await store.off_loop(_cancel, store, self.id, by, via, key=self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end; return its result or raise ``RunFailedError``.

        Raises ``ResultTimeoutError`` when ``timeout`` seconds pass first.
        """
        deadline = _deadline(timeout)
        # Woken by the run's final commit (LISTEN/NOTIFY, or SQLite's change feed); the
        # timeout only bounds a missed notification (a reconnect).
        with self.store.changes(self.id) as changes:
            while True:
                record = self.record()
                if record.done:
                    return _result_of(record)
                if deadline is not None and time.monotonic() >= deadline:
                    raise ResultTimeoutError(run_id=self.id, timeout=timeout, status=record.status)
                pause = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
                changes.wait(pause)

    async def aresult(self, timeout: float | None = None) -> Any:
        """Async ``result``: reads on the store's threads, waits on the loop (no thread held)."""
        deadline = _deadline(timeout)
        store = await self._astore()
        with store.changes(self.id) as changes:
            while True:
                record = await store.off_loop(store.get_run, self.id, key=self.id)
                if record.done:
                    return _result_of(record)
                if deadline is not None and time.monotonic() >= deadline:
                    raise ResultTimeoutError(run_id=self.id, timeout=timeout, status=record.status)
                pause = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
                await changes.await_change(pause)


def _cancel(store: Store, run_id: str, by: str | None, via: str) -> str:
    """``RunHandle.cancel``: the request recorded (who asked), the run told, its status now."""
    if not store.get_run(run_id).done:
        who = by or settings().principal
        store.append_system([NewEvent("run.cancel_requested", {"run_id": run_id, "by": who, "via": via})])
    record = store.request_cancel(run_id)
    if record.status == "cancelled" or record.cancel_requested:
        current_runtime().cancelled(store, run_id)
        for hook in _cancel_hooks:
            hook(store, run_id)
    return record.status


def _deadline(timeout: float | None) -> float | None:
    """When a wait of ``timeout`` seconds ends; a NaN (which never compares past the clock:
    the wait never ended) or negative timeout is refused."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout < float("inf"):
        raise UserError(f"timeout must be a finite number of seconds >= 0 (or None: no limit), got {timeout!r}")
    return time.monotonic() + timeout


def resume(run_id: str, *, wait: bool = True) -> Any:
    """Resume an interrupted (or blocked) run in this process and return its result.

    Finished steps are replayed from the journal; the run continues from where it stopped.
    The workflow's module must be imported here. If another live process holds the run,
    this waits until it finishes or its lease expires. A run that reaches a wait (an
    approval, a timer) is waited for here, as ``.run()`` does, printing how to decide; with
    ``wait=False`` the ``RunSuspended`` signal is raised instead (the run stays ``waiting``
    for a worker).
    """
    if not isinstance(run_id, str):
        raise UserError(f"wflo.resume() takes a run id (text), got {run_id!r}")
    store = get_store()
    record = store.find_run(run_id)
    if record.done:
        return _result_of(record)
    wf = get_workflow(record.workflow)
    if wf.resumes_only_in_process:
        raise UserError(f"run {record.id} ({wf.name}) cannot be resumed here: {wf.resumes_only_in_process}")
    # No start options: the run exists (its stored id is not checked again as a new one would be).
    bound: BoundWorkflow[Any, Any] = BoundWorkflow(wf, RunOptions())
    owner = process_owner()
    record = bound._claim_existing(store, record, owner)
    prepared: RunContext | None = None
    while not record.done:
        try:
            return execute(store, bound.wf, record, owner, prepared=prepared)
        except RunSuspended as pause:
            if not wait:
                raise
            record, prepared = _wait_until_woken(store, bound.wf, record.id, owner, pause)
    return _result_of(record)


# ------------------------------------------------------------------------- steps
class Step(Generic[P, R]):
    """A journaled unit of work: run once, replayed from the journal after a crash."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay: float = 0.5,
        retry: Any = None,
        timeout: float | str | None = None,
        at_most_once: bool = False,
        serializer: str = "json",
        kind: str = "step",
    ) -> None:
        check_function(fn, kind)
        if not isinstance(retries, int) or retries < 0:
            raise UserError(f"retries must be an integer >= 0, got {retries!r}")
        if retries and retry is not None:
            raise UserError("give either retries=N (any exception, doubling delay) or retry=RetryPolicy(...), not both")
        from ..guards import RetryPolicy
        from ..guards import timeout as make_timeout

        if retries:
            # retries=N: retry any exception of the step's own code, N times, doubling the delay.
            retry = RetryPolicy(
                attempts=retries + 1,
                backoff=retry_delay,
                max_backoff=max(retry_delay, 3600.0),
                jitter=False,
                retry_on=(Exception,),
            )
        elif retry is not None and not isinstance(retry, RetryPolicy):
            raise UserError("retry= takes a wflo.RetryPolicy(...)")
        self.retry = retry
        self.timeout = None if timeout is None else make_timeout(timeout)
        self.fn = fn
        if name:
            check_name(name, f"a {kind}'s name", colon=True)  # no NUL, line break, 10k characters
        self.name = name or _qualname(fn)
        self.at_most_once = at_most_once
        self.serializer = check_serializer(serializer)
        self.kind = kind
        self.is_async = is_async_callable(fn)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<wflo.engine.Step {self.name}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)

    def _call(self, ctx: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        return Call(
            kind=self.kind, name=self.name, args=args, kwargs=kwargs, run=ctx,
            serializer=self.serializer, at_most_once=self.at_most_once, retry=self.retry, timeout=self.timeout,
        )  # fmt: skip

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = current_run()
        if ctx is None:
            return self.fn(*args, **kwargs)  # outside a workflow a step is a plain function
        if self.is_async:
            return cast(R, aguarded_call(self._call(ctx, args, kwargs), cast(Any, self.fn)))
        return cast(R, guarded_call(self._call(ctx, args, kwargs), self.fn))


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...
@overload
def step(
    *,
    name: str | None = ...,
    retries: int = ...,
    retry_delay: float = ...,
    retry: RetryPolicy | None = ...,
    timeout: float | str | None = ...,
    at_most_once: bool = ...,
    serializer: Literal["json", "pickle"] = ...,
) -> Callable[[Callable[P, R]], Step[P, R]]: ...
def step(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a durable step: ``@wflo.step`` or ``@wflo.step(retries=3)``.

    Args:
        name: journal name (default ``module.qualname``).
        retries: extra attempts on any exception of the step (not wflo's own), with backoff.
        retry_delay: first backoff in seconds (doubles each attempt).
        retry: a ``wflo.RetryPolicy`` instead: retries only retryable errors (timeouts,
            connection errors, 408/409/429/5xx), honours ``Retry-After``, jitters.
        timeout: limit for each attempt (``"30s"``); exceeding it raises ``TimeoutError``.
        at_most_once: if the run dies while this step is in flight, do not run it again;
            fail the run with ``AtMostOnceError`` instead (for effects that must not repeat).
        serializer: ``"json"`` (default) or ``"pickle"`` for the step's input and output.
    """
    if fn is not None:
        return Step(fn)
    check_options(StepOptions, options, what="step")  # a misspelt option fails here, at the decorator
    return lambda f: Step(f, **options)


@overload
def workflow(fn: Callable[P, R], /) -> Workflow[P, R]: ...
@overload
def workflow(
    *,
    name: str | None = ...,
    serializer: Literal["json", "pickle"] = ...,
    budget: Budget | None = ...,
    guards: LoopGuard | Literal[False] | None = ...,
    on_loop: Literal["stop", "pause"] = ...,
    agent: str | None = ...,
    queue: Queue | str | None = ...,
) -> Callable[[Callable[P, R]], Workflow[P, R]]: ...
def workflow(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a durable workflow: ``@wflo.workflow`` or ``@wflo.workflow(name=...)``.

    The options are those of :class:`WorkflowOptions` (``name``, ``serializer``, ``budget``,
    ``guards``, ``on_loop``, ``agent``); an unknown one, or a value of the wrong type, raises
    ``wflo.errors.OptionError`` (a ``TypeError``) here, naming the closest valid option.
    """
    if fn is not None:
        return Workflow(fn)
    check_options(WorkflowOptions, options, what="workflow")
    return lambda f: Workflow(f, **options)
