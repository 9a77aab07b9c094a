"""wflo: the production chassis for AI agents.

Budgets that hold, runaway protection, crash recovery, sandboxed code, human approval and a
tamper-evident record, added to the agent code you already have.
"""

from . import _wiring  # noqa: F401  connects the layers (guards, HTTP interception)
from . import cost as cost  # wflo.cost.ledger(), wflo.cost.prices
from ._config import Settings, configure, settings
from ._errors import (
    ApprovalRejected,
    AtMostOnceError,
    BudgetExceededError,
    CircuitOpenError,
    ConfigurationError,
    EgressRefusedError,
    LoopDetectedError,
    NonDeterminismError,
    RateLimitedError,
    ResultTimeoutError,
    RunCancelled,
    RunEndedError,
    RunFailedError,
    RunNotFoundError,
    RunStopped,
    SerializationError,
    UnboundedRequestError,
    UnknownPriceError,
    UserError,
    WfloError,
)
from ._init import init
from ._scope import scope
from .approvals import Approval, approval, approvals
from .audit._content import add_redactor
from .cost._api import budgets
from .cost._ledger import Budget
from .cost._prices import prices
from .engine import Queue, RunHandle, Step, Worker, Workflow, current_run, resume, step, workflow
from .guards import LoopGuard, RetryPolicy
from .guards._policies import policies
from .integrations._egress import egress
from .integrations._http import fallback
from .integrations._wrap import wrap
from .sandbox import Sandbox
from .tools import Tool, tool

__version__ = "0.1.0.dev0"

__all__ = [
    "Approval",
    "ApprovalRejected",
    "AtMostOnceError",
    "Budget",
    "BudgetExceededError",
    "CircuitOpenError",
    "ConfigurationError",
    "EgressRefusedError",
    "LoopDetectedError",
    "LoopGuard",
    "NonDeterminismError",
    "Queue",
    "RateLimitedError",
    "ResultTimeoutError",
    "RetryPolicy",
    "RunCancelled",
    "RunEndedError",
    "RunFailedError",
    "RunHandle",
    "RunNotFoundError",
    "RunStopped",
    "Sandbox",
    "SerializationError",
    "Settings",
    "Step",
    "Tool",
    "UnboundedRequestError",
    "UnknownPriceError",
    "UserError",
    "WfloError",
    "Worker",
    "Workflow",
    "add_redactor",
    "approval",
    "approvals",
    "budgets",
    "configure",
    "current_run",
    "egress",
    "fallback",
    "init",
    "policies",
    "prices",
    "resume",
    "scope",
    "settings",
    "step",
    "tool",
    "workflow",
    "wrap",
]
