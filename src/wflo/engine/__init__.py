"""The durable engine: workflows, steps, the call boundary, replay, leases and workers."""

from ._boundary import NOT_REPLAYED, Call, Guard, Outcome, aguarded_call, finish_call, guarded_call, start_call
from ._context import JournalEntry, RunContext, current_run
from ._executor import add_finish_op, add_guard_factory, add_resume_hook, owner_is_dead_here, process_owner
from ._options import StepOptions, ToolOptions, WorkflowOptions, check_options
from ._queues import Queue, declared_queues
from ._tables import WorkerInfo, registered_workers
from ._worker import Worker
from ._workflow import (
    BoundWorkflow,
    RunHandle,
    RunOptions,
    Step,
    Workflow,
    add_cancel_hook,
    get_workflow,
    module_for_file,
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
    "StepOptions",
    "ToolOptions",
    "Worker",
    "WorkerInfo",
    "Workflow",
    "WorkflowOptions",
    "add_cancel_hook",
    "add_finish_op",
    "add_guard_factory",
    "add_resume_hook",
    "aguarded_call",
    "check_options",
    "current_run",
    "declared_queues",
    "finish_call",
    "get_workflow",
    "guarded_call",
    "module_for_file",
    "owner_is_dead_here",
    "process_owner",
    "registered_workers",
    "registered_workflows",
    "resume",
    "start_call",
    "step",
    "workflow",
]
