"""wflo: the production chassis for AI agents.

Budgets that hold, runaway protection, crash recovery, sandboxed code, human approval and a
tamper-evident record, added to the agent code you already have.
"""

from ._config import Settings, configure, settings
from ._errors import (
    ApprovalRejected,
    AtMostOnceError,
    BudgetExceededError,
    ConfigurationError,
    LoopDetectedError,
    NonDeterminismError,
    ResultTimeoutError,
    RunCancelled,
    RunFailedError,
    RunNotFoundError,
    SerializationError,
    UnknownPriceError,
    UserError,
    WfloError,
)
from .engine import RunHandle, Step, Worker, Workflow, current_run, resume, step, workflow

__version__ = "0.1.0.dev0"

__all__ = [
    "ApprovalRejected",
    "AtMostOnceError",
    "BudgetExceededError",
    "ConfigurationError",
    "LoopDetectedError",
    "NonDeterminismError",
    "ResultTimeoutError",
    "RunCancelled",
    "RunFailedError",
    "RunHandle",
    "RunNotFoundError",
    "SerializationError",
    "Settings",
    "Step",
    "UnknownPriceError",
    "UserError",
    "WfloError",
    "Worker",
    "Workflow",
    "configure",
    "current_run",
    "resume",
    "settings",
    "step",
    "workflow",
]
