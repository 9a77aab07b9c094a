"""LangGraph under wflo: ``wflo.wrap(graph)`` and a checkpointer on wflo's store.

``wrap(graph)`` returns an object with the compiled graph's API (``invoke``, ``ainvoke``,
``stream``, ``astream``, every other attribute passed through) where each invocation is one
wflo run:

* LLM calls made through the ``openai``/``anthropic`` SDKs (``langchain-openai``,
  ``langchain-anthropic``) are intercepted at the HTTP layer: budgeted, loop-guarded and
  journaled, replayed byte for byte on resume;
* each tool a ``ToolNode`` executes is a journaled wflo call of kind ``tool``: loop-guarded,
  approval-gated (``approvals={"tool_name": wflo.Approval(...)}``) and replayed on resume;
* the run id is the ``thread_id`` of ``config["configurable"]``: invoking again with the same
  thread after a crash (or while an approval is pending) resumes that run; once it finished, the
  next invocation on the thread is a new run (``<thread_id>#2``, ``#3``…), like a new turn.

``Checkpointer(url)`` is a LangGraph ``BaseCheckpointSaver`` that keeps checkpoints in wflo's
store (SQLite or PostgreSQL), so LangGraph's own resume and ``interrupt()`` work on it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import json
import pickle
import queue
import random
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

try:  # one line naming the extra, not a ModuleNotFoundError from inside
    import langchain_core  # noqa: F401
    import langgraph  # noqa: F401
except ModuleNotFoundError as exc:
    from .._extras import missing_extra

    raise (missing_extra(exc, "wflo.integrations.langgraph") or exc) from None

from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.prebuilt import ToolNode

from .._config import get_store
from .._errors import ApprovalRejected, RunNotFoundError, UserError, WfloError, WfloInterrupt
from ..approvals import Approval
from ..engine import BoundWorkflow, Call, RunContext, Step, Workflow, aguarded_call, current_run, guarded_call
from ..engine._attempts import off_loop
from ..store import Store, new_id, open_store
from . import _checkpoint_tables as _tables
from ._common import check_approvals, jsonable

__all__ = ["Checkpointer", "WrappedGraph", "wrap"]

_MARK = "__wflo_wrapped__"

RESUME = (
    "a wrapped LangGraph run resumes when the graph is invoked again with the same config (thread_id), "
    "in the program that wraps it; it cannot be resumed by a worker or `wflo runs resume`"
)
"""How a wrapped run resumes (``Workflow.resumes_only_in_process``)."""


def wrap(
    graph: Any,
    *,
    budget: Any = None,
    guards: Any = None,
    name: str | None = None,
    tenant: str | None = None,
    approvals: dict[str, Approval] | None = None,
    interrupts: Approval | None = None,
) -> WrappedGraph:
    """Put a compiled LangGraph graph under wflo (see the module docs)."""
    return WrappedGraph(
        graph, budget=budget, guards=guards, name=name, tenant=tenant, approvals=approvals, interrupts=interrupts
    )


# --------------------------------------------------------------------- JSON views
def _pack(value: Any) -> dict[str, Any]:
    """A tool node's result as JSON for the journal (a ``ToolMessage`` stays readable)."""
    if isinstance(value, ToolMessage):
        doc: dict[str, Any] = {"type": "tool_message", "content": value.content, "status": value.status,
                               "name": value.name}  # fmt: skip
        if value.artifact is None:
            try:
                json.dumps(doc)
                return doc
            except (TypeError, ValueError):
                pass
    return {"type": "pickle", "data": base64.b64encode(pickle.dumps(value)).decode()}


def _unpack(doc: Any, tool_call: dict[str, Any]) -> Any:
    if isinstance(doc, dict) and doc.get("type") == "tool_message":
        return ToolMessage(
            content=doc["content"], status=doc.get("status", "success"), name=doc.get("name"),
            tool_call_id=tool_call.get("id") or "",
        )  # fmt: skip
    if isinstance(doc, dict) and doc.get("type") == "pickle":
        return pickle.loads(base64.b64decode(doc["data"]))
    return doc


# --------------------------------------------------------------------- errors out of a node
class _Escape(WfloInterrupt):
    """Carries a wflo refusal (budget, loop stop) past LangGraph's tool-error handling."""

    code = "escape"
    _fields = ("error",)
    error: Any


def _escape(exc: BaseException) -> BaseException:
    if isinstance(exc, WfloError) and not isinstance(exc, ApprovalRejected):
        return _Escape(error=exc)
    return exc


def _unescape(exc: BaseException) -> BaseException:
    """The wflo refusal carried in ``exc`` (or in what it was raised from), else ``exc`` itself."""
    cur: BaseException | None = exc
    for _ in range(10):
        if cur is None:
            break
        if isinstance(cur, _Escape):
            return cur.error  # type: ignore[no-any-return]
        cur = cur.__cause__ or cur.__context__
    return exc


# --------------------------------------------------------------------- tools
def _tool_call(ctx: RunContext, tool_call: dict[str, Any], tool: Any, approvals: dict[str, Approval]) -> Call:
    name = str(tool_call.get("name", "tool"))
    meta: dict[str, Any] = {"framework": "langgraph"}
    policy = approvals.get(name)
    if policy is not None:
        meta["approval"] = policy
    fn = getattr(tool, "func", None) or getattr(tool, "coroutine", None)
    if fn is not None:
        meta["fn"] = fn
    return Call(kind="tool", name=name, args=(), kwargs=dict(tool_call.get("args") or {}), run=ctx, meta=meta)


def _with_args(request: Any, kwargs: dict[str, Any]) -> Any:
    if kwargs == (request.tool_call.get("args") or {}):
        return request
    return request.override(tool_call={**request.tool_call, "args": kwargs})


def guard_tool_node(node: ToolNode, approvals: dict[str, Approval]) -> None:
    """Make each tool call of ``node`` a guarded, journaled wflo call (once per node)."""
    if getattr(node, _MARK, None) is not None:
        getattr(node, _MARK).update(approvals)
        return
    policies = dict(approvals)
    inner_sync: Any = node._wrap_tool_call
    inner_async: Any = node._awrap_tool_call

    def wrap_sync(request: Any, execute: Callable[[Any], Any]) -> Any:
        ctx = current_run()
        if ctx is None:
            return inner_sync(request, execute) if inner_sync else execute(request)

        def run(**kwargs: Any) -> Any:
            req = _with_args(request, kwargs)
            return _pack(inner_sync(req, execute) if inner_sync else execute(req))

        try:
            value = guarded_call(_tool_call(ctx, request.tool_call, request.tool, policies), run)
        except WfloError as exc:
            raise _escape(exc) from exc
        return _unpack(value, request.tool_call)

    async def wrap_async(request: Any, execute: Callable[[Any], Any]) -> Any:
        ctx = current_run()
        if ctx is None:
            if inner_async:
                return await inner_async(request, execute)
            return await execute(request)

        async def run(**kwargs: Any) -> Any:
            req = _with_args(request, kwargs)
            return _pack(await inner_async(req, execute) if inner_async else await execute(req))

        try:
            value = await aguarded_call(_tool_call(ctx, request.tool_call, request.tool, policies), run)
        except WfloError as exc:
            raise _escape(exc) from exc
        return _unpack(value, request.tool_call)

    if inner_sync is not None and inner_async is None:
        # LangGraph runs a sync-only wrapper from async code through a thread; keep that.
        wrap_async = None  # type: ignore[assignment]
    node._wrap_tool_call = wrap_sync
    node._awrap_tool_call = wrap_async
    setattr(node, _MARK, policies)


def tool_nodes(graph: Any) -> list[ToolNode]:
    """The ``ToolNode``\\ s of a compiled graph (and of its compiled subgraphs)."""
    found: list[ToolNode] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, ToolNode):
            found.append(obj)
            return
        nodes = getattr(obj, "nodes", None)
        if isinstance(nodes, dict):
            for node in nodes.values():
                visit(getattr(node, "bound", node), depth + 1)
        for attr in ("steps", "runnable", "bound"):
            inner = getattr(obj, attr, None) if attr != "bound" or not isinstance(obj, dict) else None
            if isinstance(inner, list | tuple):
                for item in inner:
                    visit(item, depth + 1)
            elif inner is not None and not isinstance(inner, str | int | float | bool | dict):
                visit(inner, depth + 1)

    visit(graph, 0)
    return found


# --------------------------------------------------------------------- the wrapper
@dataclass
class _Job:
    mode: str
    input: Any
    config: dict[str, Any]
    kwargs: dict[str, Any]
    result: Any = None
    chunks: Any = None  # queue.Queue (stream) or asyncio.Queue (astream)
    closed: threading.Event = field(default_factory=threading.Event)
    done: bool = False


_END = object()


class WrappedGraph:
    """A compiled LangGraph graph whose invocations are wflo runs (made by :func:`wrap`)."""

    def __init__(
        self,
        graph: Any,
        *,
        budget: Any = None,
        guards: Any = None,
        name: str | None = None,
        tenant: str | None = None,
        approvals: dict[str, Approval] | None = None,
        interrupts: Approval | None = None,
    ) -> None:
        if isinstance(graph, WrappedGraph):
            graph = graph.graph
        if interrupts is not None:
            if not isinstance(interrupts, Approval):
                raise UserError(f"interrupts= takes a wflo.Approval(...) (who answers interrupt()), got {interrupts!r}")
            if not isinstance(getattr(graph, "checkpointer", None), BaseCheckpointSaver):
                raise UserError("interrupts= needs a graph compiled with a checkpointer (e.g. wflo's Checkpointer())")
        self.interrupts = interrupts
        if not callable(getattr(graph, "invoke", None)):
            raise UserError(f"wflo.wrap expects a compiled LangGraph graph (with .invoke), got {type(graph).__name__}")
        approvals = check_approvals(approvals)
        self.graph: Any = graph
        self.tenant = tenant
        self.approvals = dict(approvals or {})
        self._jobs: dict[str, _Job] = {}
        extra: dict[str, Any] = {}
        if budget is not None:
            extra["budget"] = budget
        if guards is not None:
            extra["guards"] = guards
        graph_name = getattr(graph, "name", None) or "graph"
        self.workflow: Workflow[..., Any] = Workflow(self._body, name=name or f"langgraph.{graph_name}", **extra)
        self.workflow.resumes_only_in_process = RESUME
        self.tool_nodes = tool_nodes(graph)
        for node in self.tool_nodes:
            guard_tool_node(node, self.approvals)
        self._pin = Step(self._latest_checkpoint, name="langgraph.checkpoint")

    def __getattr__(self, item: str) -> Any:
        return getattr(self.graph, item)

    def __repr__(self) -> str:
        return f"<wflo.wrap {self.workflow.name} of {self.graph!r}>"

    # ----------------------------------------------------------------- run ids
    def run_id_for(self, config: dict[str, Any] | None) -> str:
        """The wflo run an invocation with ``config`` belongs to (resumed if unfinished)."""
        conf = dict((config or {}).get("configurable") or {})
        if conf.get("wflo_run_id"):
            return str(conf["wflo_run_id"])
        thread = conf.get("thread_id")
        if thread is None:
            return new_id()
        store = get_store()
        turn, run_id = 1, str(thread)
        while True:
            try:
                record = store.get_run(run_id)
            except RunNotFoundError:
                return run_id
            if not record.done:
                return run_id
            turn += 1
            run_id = f"{thread}#{turn}"

    def _job(self, mode: str, input: Any, config: Any, kwargs: dict[str, Any]) -> tuple[str, _Job]:
        run_id = self.run_id_for(config)
        job = _Job(mode, input, dict(config or {}), kwargs)
        self._jobs[run_id] = job
        return run_id, job

    def _bound(self, run_id: str) -> BoundWorkflow[..., Any]:
        return self.workflow.options(id=run_id, tenant=self.tenant)

    @staticmethod
    def _request(job: _Job) -> dict[str, Any]:
        conf = job.config.get("configurable") or {}
        return {"mode": job.mode, "input": jsonable(job.input), "thread_id": jsonable(conf.get("thread_id"))}

    # ----------------------------------------------------------------- the run's body
    async def _latest_checkpoint(self, thread_id: str, checkpoint_ns: str) -> str | None:
        saver = self.graph.checkpointer
        config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}}
        try:
            found = await saver.aget_tuple(config)
        except NotImplementedError:
            found = await asyncio.to_thread(saver.get_tuple, config)
        return None if found is None else str(found.config["configurable"]["checkpoint_id"])

    async def _config(self, ctx: RunContext, job: _Job) -> dict[str, Any]:
        """With a checkpointer, pin the checkpoint the run started from (journaled), so a
        resumed run re-executes from the same state and its calls replay in the same order."""
        saver = getattr(self.graph, "checkpointer", None)
        conf = dict(job.config.get("configurable") or {})
        conf.pop("wflo_run_id", None)
        config = {**job.config, "configurable": conf}
        if not isinstance(saver, BaseCheckpointSaver) or "thread_id" not in conf or conf.get("checkpoint_id"):
            return config
        resumed = bool(ctx.journal)
        pinned = await self._pin(str(conf["thread_id"]), str(conf.get("checkpoint_ns", "")))
        if not resumed:
            return config
        if pinned is None:
            # Nothing was checkpointed before this run: all there is came from its dead attempt.
            # Not through ``asyncio.to_thread``: a thread started here, on resume only, would
            # take the lane number the thread running the graph had (``wflo.engine``'s run
            # context), and calls in threads that thread starts (a ToolNode's tools) would no
            # longer find their entries. The store's threads start no lane.
            try:
                await saver.adelete_thread(str(conf["thread_id"]))
            except NotImplementedError:
                await off_loop(saver.delete_thread, str(conf["thread_id"]))
            return config
        conf["checkpoint_id"] = pinned
        return config

    async def _body(self, request: dict[str, Any]) -> Any:
        ctx = current_run()
        job = self._jobs.get(ctx.run_id) if ctx is not None else None
        if ctx is None or job is None:
            raise UserError(RESUME)
        config = await self._config(ctx, job)
        graph = self.graph
        try:
            if job.mode == "invoke":
                job.result = await asyncio.to_thread(graph.invoke, job.input, config, **job.kwargs)
            elif job.mode == "ainvoke":
                job.result = await graph.ainvoke(job.input, config, **job.kwargs)
            elif job.mode == "stream":
                job.result = await asyncio.to_thread(self._pump, job, config)
            else:
                out = []
                async for chunk in graph.astream(job.input, config, **job.kwargs):
                    out.append(chunk)
                    await job.chunks.put(chunk)
                    if job.closed.is_set():
                        break
                job.result = out
            if self.interrupts is not None and job.mode in ("invoke", "ainvoke"):
                await self._answer_interrupts(job, config)
        except BaseException as exc:
            raise _unescape(exc) from None
        return jsonable(job.result)

    async def _answer_interrupts(self, job: _Job, config: dict[str, Any]) -> None:
        """``interrupt(value)`` in a node becomes a wflo approval (durable: the run waits, no
        process held); the decision resumes the graph, as ``Command(resume=...)``, with
        ``{"approved": True, "value": <value, as the approver may have edited it>, "by": …}`` or
        ``{"approved": False, "reason": …, "by": …}``."""
        from langgraph.types import Command

        from ..approvals import approval

        policy = self.interrupts
        assert policy is not None
        conf = {k: v for k, v in (config.get("configurable") or {}).items() if k != "checkpoint_id"}
        latest = {**config, "configurable": conf}  # go on from where the graph stopped
        while isinstance(job.result, dict) and job.result.get("__interrupt__"):
            answers: dict[str, Any] = {}
            for pending in job.result["__interrupt__"]:
                value = getattr(pending, "value", pending)
                message = value if isinstance(value, str) else json.dumps(jsonable(value), sort_keys=True)
                try:
                    decision = approval(f"LangGraph interrupt: {message}", data=jsonable(value),
                                        approvers=policy.approvers, quorum=policy.quorum,
                                        timeout=policy.timeout_seconds, on_timeout=policy.on_timeout,
                                        escalate_to=policy.escalate_to)  # fmt: skip
                    answer: dict[str, Any] = {"approved": True, "value": decision.data}
                except ApprovalRejected as rejected:
                    answer = {"approved": False, "reason": rejected.reason, "by": rejected.decided_by}
                answers[str(getattr(pending, "id", len(answers)))] = answer
            resume: Any = next(iter(answers.values())) if len(answers) == 1 else answers
            if job.mode == "invoke":
                job.result = await asyncio.to_thread(self.graph.invoke, Command(resume=resume), latest, **job.kwargs)
            else:
                job.result = await self.graph.ainvoke(Command(resume=resume), latest, **job.kwargs)

    def _pump(self, job: _Job, config: dict[str, Any]) -> list[Any]:
        out = []
        for chunk in self.graph.stream(job.input, config, **job.kwargs):
            out.append(chunk)
            job.chunks.put(chunk)
            if job.closed.is_set():
                break
        return out

    # ----------------------------------------------------------------- the graph's API
    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """``graph.invoke`` as one wflo run (resumed if the thread's run is unfinished)."""
        run_id, job = self._job("invoke", input, config, kwargs)
        try:
            value = self._bound(run_id).run(self._request(job))
        finally:
            self._jobs.pop(run_id, None)
        return job.result if job.result is not None else value

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        """``graph.ainvoke`` as one wflo run."""
        run_id, job = self._job("ainvoke", input, config, kwargs)
        try:
            value = await _arun(self._bound(run_id), self._request(job))
        finally:
            self._jobs.pop(run_id, None)
        return job.result if job.result is not None else value

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
        """``graph.stream`` as one wflo run: chunks are passed on as the graph makes them."""
        run_id, job = self._job("stream", input, config, kwargs)
        chunks: queue.Queue[Any] = queue.Queue()
        job.chunks = chunks
        outcome: dict[str, Any] = {}

        def runner() -> None:
            try:
                outcome["value"] = self._bound(run_id).run(self._request(job))
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                chunks.put(_END)

        thread = threading.Thread(target=runner, name=f"wflo-langgraph-{run_id}", daemon=True)
        thread.start()
        try:
            while True:
                chunk = chunks.get()
                if chunk is _END:
                    break
                yield chunk
        finally:
            job.closed.set()
            thread.join()
            self._jobs.pop(run_id, None)
        if "error" in outcome:
            raise outcome["error"]
        if job.result is None and isinstance(outcome.get("value"), list):
            yield from outcome["value"]  # a finished run: its recorded chunks

    async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        """``graph.astream`` as one wflo run."""
        run_id, job = self._job("astream", input, config, kwargs)
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        job.chunks = chunks

        async def runner() -> Any:
            try:
                return await _arun(self._bound(run_id), self._request(job))
            finally:
                await chunks.put(_END)

        task = asyncio.ensure_future(runner())
        try:
            while True:
                chunk = await chunks.get()
                if chunk is _END:
                    break
                yield chunk
        finally:
            job.closed.set()
            if not task.done():
                await asyncio.wait([task])
            self._jobs.pop(run_id, None)
        value = task.result()
        if job.result is None and isinstance(value, list):
            for chunk in value:
                yield chunk


async def _arun(bound: BoundWorkflow[..., Any], request: Any) -> Any:
    """``bound.arun`` (which waits in-process for a pending approval, as ``run`` does)."""
    return await bound.arun(request)


# --------------------------------------------------------------------- the checkpointer
# Durability of each write (issue 20). LangGraph saves, per step, the pending writes of each
# task as it finishes (``put_writes``) and then the step's checkpoint (``put``). On a store
# whose commits wait for the disk (SQLite at ``synchronous=FULL``, PostgreSQL), ``put``
# commits as every store write does, but an ordinary ``put_writes`` commits relaxed
# (``Store.write_batch(relaxed=True)``): one disk flush per node instead of two.
#
# Why that is safe. The WAL (SQLite's and PostgreSQL's) is one sequence: the next commit that
# waits for the disk, on any connection, flushes every frame before its own, so a relaxed
# write is durable once a later ``put`` (or delete) returned. A process crash (``kill -9``)
# loses nothing: the commit is in the OS's page cache (SQLite) or the server (PostgreSQL).
# Only an OS crash or power loss in between can lose it; LangGraph then finds the task without
# saved writes and runs it again on resume, as it does for a task that was running at the
# crash. Inside a wflo run (``wrap``) that costs no paid call: the task's LLM and tool calls
# were journaled, each in a commit that waited for the disk, before the task returned and its
# writes were saved, so the re-run task replays them (the journal may be in another file:
# what matters is that its flush came first, and it did). Nothing wflo journals depends on a
# pending write.
#
# Where nothing is sure to follow, no relaxation:
# - writes on LangGraph's reserved channels (negative index: an error, ``interrupt()``, a
#   resume value, a scheduled task) mark where a graph stops or how it goes on after a wait;
#   they commit like ``put``, and so flush every relaxed write before them;
# - a task that finishes after a sibling interrupted, or a task whose siblings keep running
#   for a long time, may leave a relaxed write last. ``_Flusher`` bounds that: a relaxed
#   write not covered after ``FLUSH_AFTER`` seconds is flushed (``Store.sync``), as
#   PostgreSQL's WAL writer does for its relaxed commits; so is one left at interpreter exit.
FLUSH_AFTER = 0.2

# A flusher's thread ends after this many seconds without a relaxed write.
_IDLE_EXIT = 30.0

# SQLite ``synchronous`` settings whose commits wait for the disk in WAL mode.
_SYNCING = ("FULL", "EXTRA", "2", "3")


class _Flusher:
    """Flushes relaxed checkpoint writes that no later commit made durable (see above)."""

    _all: Any = None  # WeakSet of live flushers, synced at interpreter exit

    def __init__(self, store: Store) -> None:
        self.store = store
        # The counters are taken under the plain lock (a C call; writes take it on LangGraph's
        # threads), the flusher's thread waits on the condition built on it.
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.relaxed = 0  # relaxed commits made
        self.durable = 0  # of which this many are known to be on disk
        self.idle = True
        self.closed = False
        self.thread: threading.Thread | None = None
        if _Flusher._all is None:
            _Flusher._all = weakref.WeakSet()
            atexit.register(_flush_all)
        _Flusher._all.add(self)

    def made_relaxed(self) -> None:
        with self.lock:
            self.relaxed += 1
            if self.idle and not self.closed:
                self.idle = False
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="wflo-lg-flush", daemon=True)
                    self.thread.start()
                self.cond.notify()

    def seen(self) -> int:
        """Taken before a commit that waits for the disk: the relaxed commits it will cover."""
        with self.lock:
            return self.relaxed

    def covered(self, seen: int) -> None:
        with self.lock:
            self.durable = max(self.durable, seen)

    def flush(self) -> None:
        """Make every relaxed commit made so far durable (nothing to do when they are)."""
        with self.lock:
            target = self.relaxed
            if self.durable >= target:
                return
        self.store.sync()
        self.covered(target)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.flush()

    def _run(self) -> None:
        with self.cond:
            while not self.closed:
                if self.idle:
                    if not self.cond.wait(_IDLE_EXIT) and self.idle:
                        self.thread = None  # the next relaxed write starts another
                        return
                    continue
                target = self.relaxed
                self.cond.wait(FLUSH_AFTER)
                if self.durable < target:
                    self.cond.release()
                    try:
                        with contextlib.suppress(Exception):  # the store went away: its next user finds out
                            self.flush()
                    finally:
                        self.cond.acquire()
                if self.durable >= self.relaxed:
                    self.idle = True


def _flush_all() -> None:
    for flusher in list(_Flusher._all or ()):
        with contextlib.suppress(Exception):  # a store already gone: nothing left to flush
            flusher.flush()


def _metadata_json(config: RunnableConfig, metadata: CheckpointMetadata) -> str:
    """A checkpoint's metadata as LangGraph keeps it (with the config's plain values), as JSON."""
    found = get_checkpoint_metadata(config, metadata)
    try:
        return json.dumps(found)  # plain JSON values: the usual case, in C
    except (TypeError, ValueError):
        return json.dumps(jsonable(found))


class Checkpointer(BaseCheckpointSaver[str]):
    """A LangGraph checkpoint saver on wflo's store (SQLite or PostgreSQL).

    ``Checkpointer()`` uses the configured store (``wflo.configure`` / ``WFLO_DATABASE_URL``);
    ``Checkpointer("postgresql://…")`` opens its own. Checkpoints live in two tables of their
    own (``wflo_lg_checkpoints``, ``wflo_lg_writes``; the store's migrations create them),
    serialized as bytes. The async methods run the sync ones on the store's threads.

    A checkpoint (``put``) commits as every store write does; a task's ordinary pending
    writes (``put_writes``) commit relaxed and are made durable by the next checkpoint, or
    within ``FLUSH_AFTER`` seconds (see "Durability" in the LangGraph docs).
    """

    def __init__(self, url: str | None = None, *, serde: Any = None) -> None:
        super().__init__(serde=serde)
        self.url = url
        self._store: Store | None = None
        self._flusher: _Flusher | None = None
        self._flusher_lock = threading.Lock()

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.url) if self.url else get_store()
        return self._store

    def _flusher_for(self, store: Store) -> _Flusher | None:
        """The flusher of ``store``'s relaxed writes (SQLite only: PostgreSQL's WAL writer
        flushes its relaxed commits by itself)."""
        flusher = self._flusher
        if flusher is not None and flusher.store is store:
            return flusher
        if store.dialect != "sqlite" or str(getattr(store, "synchronous", "")).upper() not in _SYNCING:
            return None  # NORMAL: no commit waits for the disk, relaxed or not
        with self._flusher_lock:  # LangGraph writes from several threads at once
            flusher = self._flusher
            if flusher is None or flusher.store is not store:
                if flusher is not None:
                    flusher.close()
                flusher = self._flusher = _Flusher(store)
            return flusher

    def sync(self) -> None:
        """Make every write this checkpointer made durable now (they are within
        ``FLUSH_AFTER`` seconds anyway)."""
        if self._flusher is not None:
            self._flusher.flush()

    def _fence(self, store: Store) -> tuple[str, str] | None:
        """The lease a checkpoint write made inside a run on this store checks: ``(run_id, owner)``.

        A worker that lost its run's lease (it stalled, and another worker took the run over)
        must not keep writing the graph's state under the new holder: like the journal's
        appends, each write checks the lease in its own transaction and raises ``LeaseLost``.
        Outside a run, or for a run kept in another store, there is no lease to check (``None``).
        """
        ctx = current_run()
        if ctx is None or (ctx.store is not store and ctx.store.url != store.url):
            return None
        return ctx.run_id, ctx.owner

    def close(self) -> None:
        """Flush its relaxed writes; close a store this checkpointer opened itself (``Checkpointer(url)``)."""
        if self._flusher is not None:
            self._flusher.close()
            self._flusher = None
        if self._store is not None and self.url:
            self._store.close()
        self._store = None

    # ----------------------------------------------------------------- reading
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config.get("configurable") or {}
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        # the checkpoint and its pending writes: one statement (one round trip on PostgreSQL)
        found = _tables.get_checkpoint(self.store, thread_id, ns, get_checkpoint_id(config))
        return None if found is None else self._tuple(found)

    def _tuple(self, found: _tables.Saved) -> CheckpointTuple:
        thread_id, ns, (checkpoint_id, parent_id, type_, blob, metadata), writes = found
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}},
            checkpoint=self.serde.loads_typed((type_, blob)),
            metadata=json.loads(metadata),
            parent_config=(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent_id}}
                if parent_id
                else None
            ),
            pending_writes=[(t, c, self.serde.loads_typed((ty, v))) for t, c, ty, v in writes],
        )

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        conf = (config or {}).get("configurable") or {}
        # every checkpoint listed and its pending writes: one statement, not one more per checkpoint
        found = _tables.list_checkpoints(
            self.store,
            thread_id=None if conf.get("thread_id") is None else str(conf["thread_id"]),
            ns=None if conf.get("checkpoint_ns") is None else str(conf["checkpoint_ns"]),
            checkpoint_id=str(conf["checkpoint_id"]) if conf.get("checkpoint_id") else None,
            before=(get_checkpoint_id(before) or None) if before is not None else None,
            # the metadata filter is applied here, so the store can stop at ``limit`` only without one
            limit=max(limit, 1) if limit is not None and not filter else None,
        )
        count = 0
        for saved in found:
            metadata = json.loads(saved[2][4])
            if filter and any(metadata.get(k) != v for k, v in filter.items()):
                continue
            yield self._tuple(saved)
            count += 1
            if limit is not None and count >= limit:
                return

    # ----------------------------------------------------------------- writing
    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config.get("configurable") or {}
        thread_id = str(conf["thread_id"])
        ns = str(conf.get("checkpoint_ns", ""))
        type_, blob = self.serde.dumps_typed(checkpoint)
        row = (
            thread_id,
            ns,
            checkpoint["id"],
            conf.get("checkpoint_id"),
            type_,
            blob,
            _metadata_json(config, metadata),
        )
        store = self.store
        flusher = self._flusher_for(store)
        seen = flusher.seen() if flusher is not None else 0
        _tables.put_checkpoint(store, row, fence=self._fence(store))  # fence and upsert: one round trip
        if flusher is not None:
            flusher.covered(seen)  # its commit waited for the disk: the relaxed ones before it too
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        conf = config.get("configurable") or {}
        thread_id, ns, checkpoint_id = (
            str(conf["thread_id"]),
            str(conf.get("checkpoint_ns", "")),
            str(conf["checkpoint_id"]),
        )
        dumps = self.serde.dumps_typed
        rows: list[tuple[Any, ...]] = []
        reserved = False
        for i, (channel, value) in enumerate(writes):
            type_, blob = dumps(value)
            idx = WRITES_IDX_MAP.get(channel)
            if idx is None:
                idx = i
            else:
                reserved = True
            rows.append((thread_id, ns, checkpoint_id, task_id, idx, channel, type_, blob, task_path))
        store = self.store
        fence = self._fence(store)
        # Relaxed unless a reserved channel (error, interrupt, resume…): see "Durability of each write".
        flusher = self._flusher_for(store)
        if reserved:
            seen = flusher.seen() if flusher is not None else 0
            _tables.put_writes(store, rows, fence=fence)
            if flusher is not None:
                flusher.covered(seen)
            return
        _tables.put_writes(store, rows, fence=fence, relaxed=True)
        if flusher is not None:
            flusher.made_relaxed()

    def delete_thread(self, thread_id: str) -> None:
        store = self.store
        store.write(lambda cur: _tables.delete_thread(store, cur, str(thread_id)))

    def get_next_version(self, current: str | None, channel: None = None) -> str:
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(str(current).split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # ----------------------------------------------------------------- async twins
    # On the store's threads (``Store.off_loop``), not ``asyncio.to_thread``: inside a run, each
    # thread the run starts is one of its lanes, numbered in order (``wflo.engine``'s run
    # context), and a checkpoint write is no work of the run's to number. The store's threads
    # start no lane. Keyed by thread: one thread's writes keep their order.
    def _off(self, config: RunnableConfig | None, fn: Callable[..., Any], *args: Any) -> Any:
        key = ("wflo-lg", str(((config or {}).get("configurable") or {}).get("thread_id")))
        return self.store.off_loop(fn, *args, key=key)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found: CheckpointTuple | None = await self._off(config, self.get_tuple, config)
        return found

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await self._off(config, lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        saved: RunnableConfig = await self._off(config, self.put, config, checkpoint, metadata, new_versions)
        return saved

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._off(config, self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._off({"configurable": {"thread_id": thread_id}}, self.delete_thread, thread_id)
