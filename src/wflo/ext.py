"""``wflo.ext``: the interface for integration, guard and tool authors.

Everything guarded passes one call boundary (see docs/architecture.md). An integration turns
what it sees (an LLM request, a framework's tool call) into a :class:`Call` and runs it with
:func:`guarded_call` / :func:`aguarded_call`, or, when it must hold the request between the
two halves (an HTTP transport, a stream), with :func:`start_call` and :func:`finish_call`:
``start_call`` returns the journaled result on replay (else :data:`NOT_REPLAYED`) after every
guard's ``before``, and ``finish_call`` records the :class:`Outcome` after every guard's
``after``. A guard is a :class:`Guard` subclass; :func:`add_guard_factory` adds guards to
every run. A tool author builds on :class:`Tool` (a journaled :class:`Step` with a
manifest) and checks its own options with :func:`check_options`.

These names are kept stable for extensions; the rest of ``wflo.engine`` may change.
"""

from .engine import (
    NOT_REPLAYED,
    BoundWorkflow,
    Call,
    Guard,
    JournalEntry,
    Outcome,
    RunContext,
    Step,
    StepOptions,
    ToolOptions,
    Workflow,
    WorkflowOptions,
    add_cancel_hook,
    add_finish_op,
    add_guard_factory,
    add_resume_hook,
    aguarded_call,
    check_options,
    current_run,
    finish_call,
    guarded_call,
    start_call,
)
from .tools import Tool

__all__ = [
    "BoundWorkflow",
    "Call",
    "Guard",
    "JournalEntry",
    "NOT_REPLAYED",
    "Outcome",
    "RunContext",
    "Step",
    "StepOptions",
    "Tool",
    "ToolOptions",
    "Workflow",
    "WorkflowOptions",
    "add_cancel_hook",
    "add_finish_op",
    "add_guard_factory",
    "add_resume_hook",
    "aguarded_call",
    "check_options",
    "current_run",
    "finish_call",
    "guarded_call",
    "start_call",
]
