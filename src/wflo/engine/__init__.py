"""The durable engine: workflows, steps, the call boundary, replay, leases and workers."""

from ._boundary import NOT_REPLAYED, Call, Guard, Outcome, aguarded_call, finish_call, guarded_call, start_call
from ._context import JournalEntry, RunContext, current_run
from ._executor import add_finish_op, add_guard_factory, add_resume_hook, process_owner
from ._queues import Queue, declared_queues
from ._worker import Worker
from ._workflow import (
    BoundWorkflow,
    RunHandle,
    RunOptions,
    Step,
    Workflow,
    add_cancel_hook,
    get_workflow,
    registered_workflows,
    resume,
    step,
    workflow,
)

__all__ = [
    "BoundWorkflow",
    "Call",
    "Guard",
    "JournalEntry",
    "NOT_REPLAYED",
    "Outcome",
    "Queue",
    "RunContext",
    "RunHandle",
    "RunOptions",
    "Step",
    "Worker",
    "Workflow",
    "add_cancel_hook",
    "add_finish_op",
    "add_guard_factory",
    "add_resume_hook",
    "aguarded_call",
    "current_run",
    "declared_queues",
    "finish_call",
    "get_workflow",
    "guarded_call",
    "process_owner",
    "registered_workflows",
    "resume",
    "start_call",
    "step",
    "workflow",
]
