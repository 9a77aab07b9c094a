"""wflo: the production chassis for AI agents.

Budgets that hold, runaway protection, crash recovery, sandboxed code, human approval and a
tamper-evident record, added to the agent code you already have.

The top level holds the names you type; the rest is one package away: every error in
``wflo.errors``, settings in ``wflo.config``, the engine (``Workflow``, ``Worker``) in
``wflo.engine``, and the interface for integration, guard and tool authors in ``wflo.ext``.
"""

from . import _entry  # noqa: F401  first: a Ctrl-C during the imports below  # isort: skip
from . import config as config  # wflo.config.settings()
from . import cost as cost  # wflo.cost.ledger(), wflo.cost.prices
from . import errors as errors  # wflo.errors.RunCancelled, …
from ._config import configure
from ._errors import (
    ApprovalRejected,
    BudgetExceededError,
    LoopDetectedError,
    RunFailedError,
    UserError,
    WfloError,
)
from ._init import init
from ._scope import scope
from .approvals import Approval, aapproval, approval, approvals
from .cost import Budget, budgets
from .engine import Queue, RunHandle, resume, step, workflow
from .guards import LoopGuard, RetryPolicy, policies
from .integrations import egress, wrap
from .sandbox import Sandbox
from .tools import tool

__version__ = "0.1.0.dev0"

__all__ = [
    "Approval",
    "ApprovalRejected",
    "Budget",
    "BudgetExceededError",
    "LoopDetectedError",
    "LoopGuard",
    "Queue",
    "RetryPolicy",
    "RunFailedError",
    "RunHandle",
    "Sandbox",
    "UserError",
    "WfloError",
    "aapproval",
    "approval",
    "approvals",
    "budgets",
    "configure",
    "egress",
    "init",
    "policies",
    "resume",
    "scope",
    "step",
    "tool",
    "workflow",
    "wrap",
]
