"""CrewAI under wflo: ``wflo.wrap(crew, budget=..., guards=..., approvals=...)``.

Each ``kickoff`` of the wrapped crew is one durable wflo run:

* LLM calls: CrewAI's native OpenAI/Anthropic providers (and LiteLLM) send through ``httpx``,
  which wflo intercepts inside a run: budgeted, loop-guarded, journaled, replayed byte for
  byte after a crash.
* Tool calls: CrewAI's ``PRE_TOOL_CALL``/``POST_TOOL_CALL`` interception points, registered
  for the run's execution only (scoped hooks, not global ones), make every tool call a
  guarded call of kind ``tool``: loop guard, approval policy, journal. A finished tool call
  is not executed again on resume: the hook blocks it and hands CrewAI the recorded result
  (cache hits of CrewAI's tool cache are seen too, so a repeated call is counted).
* CrewAI swallows a hook's ordinary exceptions (fail-open). wflo's refusals (a loop stop, a
  rejected approval) are therefore carried through CrewAI as a ``BaseException`` and
  re-raised as the original error by ``kickoff``: the crew stops, nothing is swallowed.

Tested with crewai 1.15 (see ``docs/integrations-crewai-agents.md``).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
import uuid
from typing import Any

from .._errors import UserError, WfloError
from ..approvals import Approval
from ..engine import NOT_REPLAYED, Call, Outcome, Workflow, current_run, finish_call, start_call
from ._common import check_approvals

__all__ = ["WrappedCrew", "wrap"]

_OVERRIDE = "result_override"  # set by the approval guard for on_reject="return"


class _Abort(BaseException):
    """Carries a wflo refusal through CrewAI's ``except Exception`` handlers."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _hooks() -> Any:
    try:
        return importlib.import_module("crewai.hooks.dispatch")
    except ImportError as exc:  # pragma: no cover - depends on the installed CrewAI
        raise UserError(f"wflo's CrewAI integration needs crewai>=1.15 (pip install 'wflo[crewai]'): {exc}") from None


class _ToolBoundary:
    """The run's tool hooks: before opens a guarded call, after finishes it."""

    def __init__(self, approvals: dict[str, Approval]) -> None:
        self.approvals = approvals
        # Keyed by the identity of the tool-input dict: CrewAI passes the same dict to the
        # before and the after hook of one call (also for parallel calls in threads).
        self.open: dict[int, tuple[str, Any, float]] = {}
        self.lock = threading.Lock()

    def before(self, ctx: Any) -> Any:
        run = current_run()
        if run is None:
            return None
        tool_input = ctx.tool_input if isinstance(ctx.tool_input, dict) else {}
        call = Call(kind="tool", name=str(ctx.tool_name), args=(), kwargs=dict(tool_input), run=run)
        policy = self.approvals.get(call.name)
        if policy is not None:
            call.meta["approval"] = policy
        try:
            value = start_call(call)
            if value is NOT_REPLAYED and _OVERRIDE in call.meta:
                value = finish_call(call, Outcome(value=call.meta[_OVERRIDE]))
        except WfloError as exc:
            raise _Abort(exc) from None
        key = id(ctx.tool_input)
        if value is not NOT_REPLAYED:
            # Finished before (replay) or answered by a policy: the tool must not run.
            with self.lock:
                self.open[key] = ("done", value, 0.0)
            return False
        if isinstance(ctx.tool_input, dict) and call.kwargs != tool_input:
            ctx.tool_input.clear()  # an approver edited the arguments
            ctx.tool_input.update(call.kwargs)
        with self.lock:
            self.open[key] = ("open", call, time.perf_counter())
        return None

    def after(self, ctx: Any) -> Any:
        with self.lock:
            entry = self.open.pop(id(ctx.tool_input), None)
        if entry is None:
            return None
        state, value, t0 = entry
        if state == "done":
            return value if isinstance(value, str) else str(value)
        result = ctx.tool_result
        try:
            finish_call(value, Outcome(value=result, duration_ms=(time.perf_counter() - t0) * 1000))
        except WfloError as exc:
            raise _Abort(exc) from None
        return None


class WrappedCrew:
    """A CrewAI ``Crew`` under wflo. Same API; each ``kickoff`` is one durable wflo run.

    ``kickoff`` returns CrewAI's ``CrewOutput`` when the run executes in this process; a run
    that had already finished (same ``id``) returns its recorded output (``CrewOutput.raw``).
    """

    def __init__(
        self,
        crew: Any,
        *,
        budget: Any = None,
        guards: Any = None,
        name: str | None = None,
        tenant: str | None = None,
        approvals: dict[str, Approval] | None = None,
        run_id: str | None = None,
    ) -> None:
        approvals = check_approvals(approvals)
        self._crew = crew
        self._budget = budget
        self._guards = guards
        self._tenant = tenant
        self._approvals = dict(approvals or {})
        self._run_id = run_id
        self._outputs: dict[str, Any] = {}
        self._expected: set[str] = set()  # runs whose kickoff waits here for the CrewOutput
        self.workflow_name = name or f"crewai.{getattr(crew, 'name', None) or 'crew'}"
        extra: dict[str, Any] = {"budget": budget}
        if guards is not None:
            extra["guards"] = guards
        self.workflow: Workflow[..., Any] = Workflow(self._execute, name=self.workflow_name, **extra)

    # ------------------------------------------------------------------ the run
    def _execute(self, inputs: dict[str, Any] | None = None) -> Any:
        dispatch = _hooks()
        run = current_run()
        boundary = _ToolBoundary(self._approvals)
        with dispatch.scoped_hooks():
            dispatch.register_scoped(dispatch.InterceptionPoint.PRE_TOOL_CALL, boundary.before)
            dispatch.register_scoped(dispatch.InterceptionPoint.POST_TOOL_CALL, boundary.after)
            try:
                output = self._crew.kickoff(inputs=inputs)
            except _Abort as abort:
                raise abort.error from None
        if run is not None and run.run_id in self._expected:
            self._outputs[run.run_id] = output
        raw = getattr(output, "raw", output)
        return raw if isinstance(raw, str | int | float | bool | type(None)) else str(raw)

    # ------------------------------------------------------------------ the crew's API
    def options(self, *, id: str | None = None, tenant: str | None = None) -> WrappedCrew:
        """This crew with start options for the next kickoff: ``id`` (an idempotency key:
        the same id resumes or returns that run) and ``tenant``."""
        bound = WrappedCrew.__new__(WrappedCrew)
        bound.__dict__.update(self.__dict__)
        bound._run_id = id
        bound._tenant = tenant or self._tenant
        return bound

    def kickoff(self, inputs: dict[str, Any] | None = None) -> Any:
        """Run the crew as one wflo run (budgeted, guarded, journaled)."""
        run_id = self._run_id or str(uuid.uuid4())
        self._expected.add(run_id)
        try:
            raw = self.workflow.options(id=run_id, tenant=self._tenant).run(inputs)
        finally:
            self._expected.discard(run_id)
        return self._outputs.pop(run_id, raw)

    async def kickoff_async(self, inputs: dict[str, Any] | None = None) -> Any:
        """``kickoff`` in a worker thread (as CrewAI's own ``kickoff_async`` does)."""
        return await asyncio.to_thread(self.kickoff, inputs)

    def kickoff_for_each(self, inputs: list[dict[str, Any]]) -> list[Any]:
        """One run per input."""
        return [self.kickoff(item) for item in inputs]

    def start(self, inputs: dict[str, Any] | None = None) -> Any:
        """Enqueue the kickoff for a ``wflo.engine.Worker`` and return its ``RunHandle``."""
        return self.workflow.options(id=self._run_id, tenant=self._tenant).start(inputs)

    @property
    def crew(self) -> Any:
        """The wrapped crew."""
        return self._crew

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_crew",):
            raise AttributeError(name)
        return getattr(self._crew, name)

    def __repr__(self) -> str:
        return f"<wflo-wrapped {self._crew!r} as workflow {self.workflow_name!r}>"


def wrap(
    crew: Any,
    *,
    budget: Any = None,
    guards: Any = None,
    name: str | None = None,
    tenant: str | None = None,
    approvals: dict[str, Approval] | None = None,
) -> WrappedCrew:
    """Put a CrewAI ``Crew`` under wflo: ``wflo.wrap(crew, budget=wflo.Budget(usd="1"))``.

    Args:
        crew: a ``crewai.Crew``.
        budget: a ``wflo.Budget`` for each kickoff (run).
        guards: a ``wflo.LoopGuard`` (default: ``LoopGuard()``; ``False`` switches it off).
        name: the workflow name (default ``crewai.<crew.name>``); a worker resuming the run
            must have wrapped a crew under the same name.
        tenant: the tenant the runs' spend belongs to.
        approvals: ``{tool_name: wflo.Approval(...)}``: tool calls that need a human decision.
    """
    _hooks()
    return WrappedCrew(crew, budget=budget, guards=guards, name=name, tenant=tenant, approvals=approvals)
