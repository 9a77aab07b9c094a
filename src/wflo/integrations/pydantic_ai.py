"""pydantic-ai under wflo: ``wflo.wrap(agent)``.

``wrap(agent)`` returns an object with the agent's API (``run``, ``run_sync``,
``run_stream_events``, every other attribute passed through) where each run is one wflo run:

* the model's requests go through the ``openai``/``anthropic`` SDKs, which wflo intercepts at
  the HTTP layer: budgeted, loop-guarded, journaled and replayed byte for byte on resume;
* each tool call is a journaled wflo call of kind ``tool`` (through a pydantic-ai capability
  whose ``wrap_tool_execute`` hook runs the tool inside wflo's call boundary): the loop guard
  sees it, ``approvals={"tool_name": wflo.Approval(...)}`` pauses the run durably until a
  person decides, and a resumed run returns the recorded result instead of running it again;
* ``run_id=`` (pydantic-ai's own run id) is also the wflo run id: running again with the same
  ``run_id`` after a crash (or while an approval is pending) resumes that run.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import pickle
from dataclasses import dataclass
from typing import Any

try:  # one line naming the extra, not a ModuleNotFoundError from inside
    import pydantic_ai  # noqa: F401
except ModuleNotFoundError as exc:
    from .._extras import missing_extra

    raise (missing_extra(exc, "wflo.integrations.pydantic_ai") or exc) from None

from pydantic_ai.capabilities import AbstractCapability

from .._config import get_store
from .._errors import ApprovalRejected, RunNotFoundError, UserError
from ..approvals import Approval
from ..engine import BoundWorkflow, Call, Workflow, aguarded_call, current_run
from ..engine._attempts import off_loop
from ..store import new_id
from ._common import check_approvals, jsonable

__all__ = ["WfloCapability", "WrappedAgent", "wrap"]

_PICKLED = "__wflo_pickle__"

RESUME = (
    "a wrapped pydantic-ai run resumes when the agent is run again with the same run_id, in the "
    "program that wraps it; it cannot be resumed by a worker or `wflo runs resume`"
)
"""How a wrapped run resumes (``Workflow.resumes_only_in_process``)."""


def wrap(
    agent: Any,
    *,
    budget: Any = None,
    guards: Any = None,
    name: str | None = None,
    tenant: str | None = None,
    approvals: dict[str, Approval] | None = None,
) -> WrappedAgent:
    """Put a pydantic-ai ``Agent`` under wflo (see the module docs)."""
    return WrappedAgent(agent, budget=budget, guards=guards, name=name, tenant=tenant, approvals=approvals)


async def _arun(bound: BoundWorkflow[..., Any], request: Any) -> Any:
    """``bound.arun`` (which waits in-process for a pending approval, as ``run`` does)."""
    return await bound.arun(request)


def _pack(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return {_PICKLED: base64.b64encode(pickle.dumps(value)).decode()}


def _unpack(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {_PICKLED}:
        return pickle.loads(base64.b64decode(value[_PICKLED]))
    return value


@dataclass(init=False)
class WfloCapability(AbstractCapability[Any]):
    """Runs each tool call of an agent run inside wflo's call boundary (journal, loop guard,
    approvals). Outside a wflo run it does nothing."""

    approvals: dict[str, Approval]

    def __init__(self, approvals: dict[str, Approval] | None = None) -> None:
        self.approvals = dict(approvals or {})

    async def wrap_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any) -> Any:
        run = current_run()
        if run is None:
            return await handler(args)
        kwargs = dict(args) if isinstance(args, dict) else {"args": jsonable(args)}
        meta: dict[str, Any] = {"framework": "pydantic-ai"}
        policy = self.approvals.get(call.tool_name)
        if policy is not None and getattr(tool_def, "kind", None) != "unapproved":
            meta["approval"] = policy  # (a requires_approval tool was decided before it got here)
        guarded = Call(kind="tool", name=str(call.tool_name), args=(), kwargs=kwargs, run=run, meta=meta)

        async def execute(**given: Any) -> Any:
            return _pack(await handler(given if isinstance(args, dict) else args))

        return _unpack(await aguarded_call(guarded, execute))


class WrappedAgent:
    """A pydantic-ai agent whose runs are wflo runs (made by :func:`wrap`)."""

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
        if isinstance(agent, WrappedAgent):
            agent = agent.agent
        if not callable(getattr(agent, "run", None)):
            raise UserError(f"wflo.wrap expects a pydantic-ai Agent (with .run), got {type(agent).__name__}")
        approvals = check_approvals(approvals)
        self.agent: Any = agent
        self.tenant = tenant
        self.capability = WfloCapability(approvals)
        self._jobs: dict[str, tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]] = {}
        extra: dict[str, Any] = {}
        if budget is not None:
            extra["budget"] = budget
        if guards is not None:
            extra["guards"] = guards
        agent_name = getattr(agent, "name", None) or "agent"
        self.workflow: Workflow[..., Any] = Workflow(
            self._body, name=name or f"pydantic-ai.{agent_name}", agent=agent_name, **extra
        )
        self.workflow.resumes_only_in_process = RESUME

    def __getattr__(self, item: str) -> Any:
        return getattr(self.agent, item)

    def __repr__(self) -> str:
        return f"<wflo.wrap {self.workflow.name} of {self.agent!r}>"

    async def _body(self, request: dict[str, Any]) -> Any:
        ctx = current_run()
        job = self._jobs.get(ctx.run_id) if ctx is not None else None
        if ctx is None or job is None:
            raise UserError(RESUME)
        args, given, holder = job
        kwargs = dict(given)  # a copy: a resumed execution sees the caller's arguments again
        capabilities = [*(kwargs.pop("capabilities", None) or ()), self.capability]
        result = await self.agent.run(*args, capabilities=capabilities, **kwargs)
        result = await self._decide_deferred(result, capabilities, kwargs)
        holder["result"] = result
        return {"output": jsonable(getattr(result, "output", result))}

    async def _decide_deferred(self, result: Any, capabilities: list[Any], kwargs: dict[str, Any]) -> Any:
        """pydantic-ai's own approval flow, made durable: tools declared with
        ``requires_approval=True`` (or raising ``ApprovalRequired``) end an agent run with
        ``DeferredToolRequests``; each requested approval becomes a wflo approval (the run waits,
        no process held), and the agent goes on with the decisions: approved (with the
        arguments as the approver may have edited them) or denied with the reason. Deferred
        *external* calls (``calls``) are returned to you as pydantic-ai returns them."""
        from pydantic_ai import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied

        from ..approvals import approval

        extra = {
            k: v
            for k, v in kwargs.items()
            if k not in ("user_prompt", "message_history", "deferred_tool_results", "run_id")
        }
        while (
            isinstance(getattr(result, "output", None), DeferredToolRequests)
            and result.output.approvals
            and not result.output.calls
        ):
            decisions: dict[str, Any] = {}
            for part in result.output.approvals:
                policy = self.capability.approvals.get(part.tool_name) or Approval()
                requested = part.args_as_dict()
                try:
                    # The approval's journal and inbox work runs on the store's threads, not the loop.
                    decision = await off_loop(functools.partial(
                        approval,
                        f"{part.tool_name}({part.args_as_json_str()})", data=requested, approvers=policy.approvers,
                        quorum=policy.quorum, timeout=policy.timeout_seconds, on_timeout=policy.on_timeout,
                        escalate_to=policy.escalate_to,
                    ))  # fmt: skip
                    edited = decision.data if isinstance(decision.data, dict) and decision.data != requested else None
                    decisions[part.tool_call_id] = ToolApproved(override_args=edited)
                except ApprovalRejected as rejected:
                    decisions[part.tool_call_id] = ToolDenied(f"Denied by {rejected.decided_by}: {rejected.reason}")
            result = await self.agent.run(
                message_history=result.all_messages(), deferred_tool_results=DeferredToolResults(approvals=decisions),
                capabilities=capabilities, **extra,
            )  # fmt: skip
        return result

    def _prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[BoundWorkflow[..., Any], str, dict[str, Any], dict[str, Any]]:
        run_id = str(kwargs.get("run_id") or new_id())
        if kwargs.get("run_id"):
            try:
                record = get_store().get_run(run_id)
            except RunNotFoundError:
                record = None
            if record is not None and record.done:
                raise UserError(
                    f"run {run_id!r} already ended ({record.status}); read it with wflo.RunHandle({run_id!r}).result(), "
                    "or give a new run_id"
                )
        holder: dict[str, Any] = {}
        self._jobs[run_id] = (args, dict(kwargs), holder)
        prompt = args[0] if args else kwargs.get("user_prompt")
        request = {"user_prompt": jsonable(prompt)}
        return self.workflow.options(id=run_id, tenant=self.tenant), run_id, holder, request

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        """``agent.run`` as one wflo run; returns the agent's ``AgentRunResult``."""
        if kwargs.get("run_id"):  # looks the run up: on the store's threads, not the loop
            bound, run_id, holder, request = await asyncio.to_thread(self._prepare, args, kwargs)
        else:
            bound, run_id, holder, request = self._prepare(args, kwargs)
        try:
            value = await _arun(bound, request)
        finally:
            self._jobs.pop(run_id, None)
        return holder.get("result", value)

    def run_stream_events(self, *args: Any, **kwargs: Any) -> Any:
        """``agent.run_stream_events`` as one wflo run: ``async with wrapped.run_stream_events(...)
        as events: async for event in events``, the events as they come, ending with the
        ``AgentRunResultEvent``. The run's model requests are streamed (pydantic-ai's
        ``event_stream_handler``), each budgeted and journaled as any other.
        """
        try:  # pydantic-ai's own context and iterator, over a run of ours
            from pydantic_ai.agent.abstract import _RunStreamEventsContext
        except ImportError:  # pragma: no cover - depends on the installed pydantic-ai
            raise UserError(
                "run_stream_events under wflo.wrap needs pydantic-ai-slim 2.x with AgentRunEvents "
                "(pip install -U 'wflo[pydantic-ai]'); use run or run_sync"
            ) from None
        return _RunStreamEventsContext(lambda handler: self.run(*args, event_stream_handler=handler, **kwargs))

    def run_sync(self, *args: Any, **kwargs: Any) -> Any:
        """``agent.run_sync`` as one wflo run (waits in-process for a pending approval).

        Like pydantic-ai's own ``run_sync``, it drives :meth:`run` on the thread's event loop.
        """
        try:
            from pydantic_ai._utils import run_until_complete
        except ImportError:  # pragma: no cover - older pydantic-ai
            return asyncio.run(self.run(*args, **kwargs))
        return run_until_complete(self.run(*args, **kwargs))
