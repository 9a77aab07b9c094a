"""The OpenAI Agents SDK under wflo: ``wflo.wrap(agent, budget=..., guards=..., approvals=...)``.

Each ``run`` / ``run_sync`` / ``run_streamed`` of the wrapped agent is one durable wflo run:

* LLM calls: the SDK's OpenAI models (Responses and Chat Completions) and its LiteLLM model
  send through ``httpx``, which wflo intercepts inside a run: budgeted, loop-guarded,
  journaled, replayed byte for byte after a crash.
* Function tools: the wrapped agent is a clone whose ``FunctionTool``s invoke through wflo's
  call boundary (kind ``tool``): loop guard, approval policy, journal. A finished tool call
  is not executed again on resume. Agents reachable by handoff are wrapped the same way.
* ``needs_approval`` tools become wflo approvals: instead of the SDK's in-memory
  interruption (``RunResult.interruptions``), the run waits durably for a recorded decision
  (``wflo approve ID``) and resumes on any worker. ``approvals={tool: wflo.Approval(...)}``
  sets the policy (approvers, quorum, timeout); ``needs_approval=True`` alone means
  ``wflo.Approval()``; a ``needs_approval`` callable is asked per call.
* The SDK handles a tool's ordinary exceptions (returns them to the model, or fails the run
  in its own error type). wflo's refusals (a loop stop, a rejected approval) are carried
  through the SDK as a ``BaseException`` and re-raised as the original error by ``run``.

Tracing: the SDK's tracing exports to OpenAI's servers by default; call
``agents.set_tracing_disabled(True)`` when that must not happen (wflo does not change it).

Tested with openai-agents 0.20 and 0.24 (see ``docs/integrations.md``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

from .._errors import UserError, WfloError
from ..approvals import Approval
from ..engine import Call, Workflow, aguarded_call, current_run
from ..engine._executor import loop_running
from ..store import canonical_json
from ._common import check_approvals

__all__ = ["WrappedAgent", "wrap"]


class _Abort(BaseException):
    """Carries a wflo refusal through the SDK's ``except Exception`` handlers."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _sdk() -> Any:
    try:
        import agents
    except ImportError as exc:  # pragma: no cover - depends on the installed SDK
        raise UserError(
            f"wflo's Agents SDK integration needs openai-agents (pip install 'wflo[agents]'): {exc}"
        ) from None
    return agents


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop, made (and set) when it has none or it was closed, as
    ``Runner.run_sync`` finds it."""
    policy = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():  # the implicit loop of an older Python warns
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = policy.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        loop = policy.new_event_loop()
        policy.set_event_loop(loop)
    return loop


def _jsonable(value: Any) -> Any:
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def _unwrap(exc: BaseException) -> BaseException | None:
    """The wflo error inside ``exc`` (carried, chained or grouped), if any."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, _Abort):
            return cur.error
        if isinstance(cur, WfloError):
            return cur
        if isinstance(cur, BaseExceptionGroup):
            stack.extend(cur.exceptions)
        for linked in (cur.__cause__, cur.__context__):
            if linked is not None:
                stack.append(linked)
    return None


class _Tools:
    """Clones an agent graph so that every function tool goes through wflo."""

    def __init__(self, approvals: dict[str, Approval]) -> None:
        self.approvals = approvals
        self.done: dict[int, Any] = {}

    def agent(self, agent: Any) -> Any:
        if id(agent) in self.done:
            return self.done[id(agent)]
        sdk = _sdk()
        clone = agent.clone()
        self.done[id(agent)] = clone  # before recursing: handoff cycles
        changes: dict[str, Any] = {}
        if getattr(agent, "tools", None):
            changes["tools"] = [self.tool(t) if isinstance(t, sdk.FunctionTool) else t for t in agent.tools]
        if getattr(agent, "handoffs", None):
            changes["handoffs"] = [self.agent(h) if isinstance(h, sdk.Agent) else h for h in agent.handoffs]
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone

    def tool(self, tool: Any) -> Any:
        original = tool.on_invoke_tool
        needs = tool.needs_approval
        policy = self.approvals.get(tool.name)
        if policy is None and needs is True:
            policy = Approval()
        name = tool.name

        async def on_invoke_tool(ctx: Any, input_json: str) -> Any:
            run = current_run()
            if run is None:
                return await original(ctx, input_json)
            try:
                kwargs = json.loads(input_json) if input_json else {}
            except ValueError:
                return await original(ctx, input_json)  # the SDK reports bad JSON to the model
            if not isinstance(kwargs, dict):
                return await original(ctx, input_json)
            call = Call(kind="tool", name=name, args=(), kwargs=kwargs, run=run)
            applies = policy
            if callable(needs) and name not in self.approvals:
                applies = Approval() if await needs(ctx, kwargs, getattr(ctx, "tool_call_id", "")) else None
            if applies is not None:
                call.meta["approval"] = applies

            async def invoke(**arguments: Any) -> Any:
                return _jsonable(await original(ctx, json.dumps(arguments)))

            try:
                return await aguarded_call(call, invoke)
            except WfloError as exc:
                raise _Abort(exc) from None

        return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool, needs_approval=False)


class WrappedAgent:
    """An Agents SDK ``Agent`` under wflo: ``await wrapped.run(input)``, ``wrapped.run_sync(input)``,
    ``wrapped.run_streamed(input)``; each is one durable wflo run.

    ``run`` returns the SDK's ``RunResult`` when the run executes in this process; a run that
    had already finished (same ``id``) returns its recorded ``final_output``.
    """

    def __init__(
        self,
        agent: Any,
        *,
        budget: Any = None,
        guards: Any = None,
        name: str | None = None,
        tenant: str | None = None,
        approvals: dict[str, Approval] | None = None,
    ) -> None:
        approvals = check_approvals(approvals)
        sdk = _sdk()
        if not isinstance(agent, sdk.Agent):
            raise UserError(f"wflo.wrap takes an agents.Agent, got {type(agent).__qualname__}")
        self._agent = agent
        self._wrapped = _Tools(dict(approvals or {})).agent(agent)
        self._tenant = tenant
        self._run_id: str | None = None
        self._local: dict[str, dict[str, Any]] = {}  # run id -> in-process options and result
        self.workflow_name = name or f"agents.{getattr(agent, 'name', None) or 'agent'}"
        extra: dict[str, Any] = {"budget": budget, "agent": getattr(agent, "name", None) or "agent"}
        if guards is not None:
            extra["guards"] = guards
        self.workflow: Workflow[..., Any] = Workflow(self._execute, name=self.workflow_name, **extra)

    # ------------------------------------------------------------------ the run
    async def _execute(self, input: Any, max_turns: int | None = None) -> Any:
        sdk = _sdk()
        run = current_run()
        local = self._local.get(run.run_id, {}) if run is not None else {}
        options: dict[str, Any] = dict(local.get("options", {}))
        if max_turns is not None:
            options["max_turns"] = max_turns
        try:
            if local.get("stream") is not None:
                result = sdk.Runner.run_streamed(self._wrapped, input, **options)
                queue = local["stream"]
                async for event in result.stream_events():
                    await queue.put(event)
            else:
                result = await sdk.Runner.run(self._wrapped, input, **options)
        except BaseException as exc:
            carried = _unwrap(exc)
            if carried is not None and carried is not exc:
                raise carried from None
            raise
        if "options" in local:
            local["result"] = result
        return _jsonable(result.final_output)

    # ------------------------------------------------------------------ the Runner's API
    def options(self, *, id: str | None = None, tenant: str | None = None) -> WrappedAgent:
        """This agent with start options for the next run: ``id`` (an idempotency key: the same
        id resumes or returns that run) and ``tenant``."""
        bound = WrappedAgent.__new__(WrappedAgent)
        bound.__dict__.update(self.__dict__)
        bound._run_id = id
        bound._tenant = tenant or self._tenant
        return bound

    def _begin(self, options: dict[str, Any], stream: Any = None) -> tuple[str, int | None]:
        run_id = self._run_id or str(uuid.uuid4())
        max_turns = options.pop("max_turns", None)
        self._local[run_id] = {"options": options, "stream": stream}
        return run_id, max_turns

    async def run(self, input: Any, **options: Any) -> Any:
        """``Runner.run(agent, input, **options)`` as one wflo run."""
        run_id, max_turns = self._begin(options)
        try:
            final = await self.workflow.options(id=run_id, tenant=self._tenant).arun(input, max_turns)
            return self._local.get(run_id, {}).get("result", final)
        finally:
            self._local.pop(run_id, None)

    def run_sync(self, input: Any, **options: Any) -> Any:
        """``Runner.run_sync``: ``run`` from synchronous code (waits in-process for approvals).

        Like ``Runner.run_sync``, it drives :meth:`run` on this thread's event loop, which stays
        open between calls: a client shared by the runs (the SDK's default one) keeps its
        connections bound to the loop that opened them, and one closed after each run would
        fail the next. Called where a loop already runs, the run goes on a thread of its own.
        """
        if not loop_running():
            return _thread_loop().run_until_complete(self.run(input, **options))
        run_id, max_turns = self._begin(options)
        try:
            final = self.workflow.options(id=run_id, tenant=self._tenant).run(input, max_turns)
            return self._local.get(run_id, {}).get("result", final)
        finally:
            self._local.pop(run_id, None)

    async def run_streamed(self, input: Any, **options: Any) -> AsyncIterator[Any]:
        """The SDK's stream events of the run, as they come (an async iterator).

        Unlike ``Runner.run_streamed`` this is an async generator of the events themselves
        (``async for event in wrapped.run_streamed(...)``); the run is one wflo run.
        """
        queue: asyncio.Queue[Any] = asyncio.Queue()
        run_id, max_turns = self._begin(options, stream=queue)
        done = object()

        async def drive() -> None:
            try:
                await self.workflow.options(id=run_id, tenant=self._tenant).arun(input, max_turns)
            finally:
                await queue.put(done)

        task = asyncio.create_task(drive())
        try:
            while True:
                event = await queue.get()
                if event is done:
                    break
                yield event
            await task
        finally:
            if not task.done():
                task.cancel()
            self._local.pop(run_id, None)

    def start(self, input: Any, max_turns: int | None = None) -> Any:
        """Enqueue the run for a ``wflo.engine.Worker`` and return its ``RunHandle``."""
        return self.workflow.options(id=self._run_id, tenant=self._tenant).start(input, max_turns)

    @property
    def agent(self) -> Any:
        """The wrapped agent (its tools as given; runs use a clone whose tools go through wflo)."""
        return self._agent

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_agent",):
            raise AttributeError(name)
        return getattr(self._agent, name)

    def __repr__(self) -> str:
        return f"<wflo-wrapped agent {getattr(self._agent, 'name', '?')!r} as workflow {self.workflow_name!r}>"


def wrap(
    agent: Any,
    *,
    budget: Any = None,
    guards: Any = None,
    name: str | None = None,
    tenant: str | None = None,
    approvals: dict[str, Approval] | None = None,
) -> WrappedAgent:
    """Put an Agents SDK ``Agent`` under wflo: ``wflo.wrap(agent, budget=wflo.Budget(usd="1"))``.

    Args:
        agent: an ``agents.Agent`` (the starting agent; handoff agents are wrapped too).
        budget: a ``wflo.Budget`` for each run.
        guards: a ``wflo.LoopGuard`` (default: ``LoopGuard()``; ``False`` switches it off).
        name: the workflow name (default ``agents.<agent.name>``); a worker resuming the run
            must have wrapped an agent under the same name.
        tenant: the tenant the runs' spend belongs to.
        approvals: ``{tool_name: wflo.Approval(...)}``: tool calls that need a human decision
            (tools with ``needs_approval`` need one even without an entry).
    """
    return WrappedAgent(agent, budget=budget, guards=guards, name=name, tenant=tenant, approvals=approvals)
