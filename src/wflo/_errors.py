"""Every error wflo raises, in one tree.

Errors are split three ways, as in pydantic-ai: misuse (``UserError``), failures of a run or
an operation (the other ``WfloError`` subclasses), and control-flow signals that agent code
must not be able to swallow with ``except Exception`` (``WfloInterrupt``, a ``BaseException``).

::

    WfloError (Exception)
    ├── UserError                      bad arguments, configuration or input: fix the call
    │   ├── ConfigurationError
    │   ├── OptionError                an unknown or mistyped decorator option (also a TypeError)
    │   ├── SerializationError         a step input/output that cannot be stored
    │   └── UnknownWorkflowError       no workflow of that name is registered here
    ├── StoreError                     the database could not be used
    │   ├── StoreUnavailableError      cannot connect
    │   ├── StoreNotFoundError         a read-only use named a store that does not exist
    │   ├── StoreCorruptError          the SQLite file is damaged or not a database
    │   └── SchemaVersionError         the schema is older/newer than this wflo
    ├── RunNotFoundError
    ├── RunFailedError                 handle.result() of a run that failed
    ├── ResultTimeoutError             handle.result(timeout=...) elapsed (also a TimeoutError)
    ├── NonDeterminismError            replay reached a different call than the journal holds
    ├── StepFailedError                a recorded step error whose class cannot be rebuilt
    ├── AtMostOnceError                an at-most-once step was in flight when the run died
    ├── RunEndedError                  a call from a thread or task of a run that already ended
    ├── BudgetError
    │   ├── BudgetExceededError        a call would take a scope past its limit
    │   ├── UnknownPriceError          no price known for a model: refused (fail closed)
    │   ├── UnboundedRequestError      an LLM request whose cost wflo cannot bound: refused
    │   └── EgressRefusedError         an LLM request wflo does not understand: not sent
    ├── LoopDetectedError              a runaway detector or cap fired; the run is stopped
    ├── ApprovalError
    │   ├── ApprovalRejected           a human said no (carries the reason)
    │   ├── ApprovalNotFoundError
    │   ├── ApprovalClosedError        already decided or expired
    │   ├── ApprovalForbiddenError     wrong person/role, or the requester deciding
    │   └── ActionMismatchError        the decision is for another action hash
    ├── GuardError
    │   ├── CircuitOpenError
    │   └── RateLimitedError
    ├── SandboxError
    │   ├── SandboxUnavailableError    the isolation asked for is not available here
    │   └── SandboxSetupError
    ├── ToolDeniedError                a secure tool refused its input (SQL write, SSRF, …)
    ├── AccessError
    │   ├── AuthenticationError        no valid credentials (bad, expired or revoked token/session)
    │   └── AccessDeniedError          authenticated, but the role does not give the permission
    └── AuditError
        ├── ChainBrokenError
        └── RetentionError             a prune that would delete records still under retention

    WfloInterrupt (BaseException)      control flow; never caught by ``except Exception``
    ├── RunCancelled                   the run was cancelled; it stops at the next step boundary
    ├── LeaseLost                      another worker owns this run now; stop touching it
    ├── RunSuspended                   the run waits (approval, timer); the worker lets it go
    ├── RunReleased                    a stopping worker hands the run back at a call boundary
    └── RunStopped                     a guarded call after a loop stop: the run is over

Each error keeps its domain values as attributes, builds its own message, pickles cleanly
(errors cross process boundaries) and has a stable ``code`` used for the CLI's exit status
and the API's JSON.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

__all__ = [
    "AccessDeniedError",
    "AccessError",
    "ActionMismatchError",
    "ApprovalClosedError",
    "ApprovalError",
    "ApprovalForbiddenError",
    "ApprovalNotFoundError",
    "ApprovalRejected",
    "AtMostOnceError",
    "AuditError",
    "AuthenticationError",
    "BudgetError",
    "BudgetExceededError",
    "ChainBrokenError",
    "CircuitOpenError",
    "ConfigurationError",
    "EgressRefusedError",
    "GuardError",
    "LeaseLost",
    "LoopDetectedError",
    "NonDeterminismError",
    "OptionError",
    "RateLimitedError",
    "ResultTimeoutError",
    "RetentionError",
    "RunCancelled",
    "RunEndedError",
    "RunFailedError",
    "RunNotFoundError",
    "RunStopped",
    "RunSuspended",
    "SandboxError",
    "SandboxSetupError",
    "SandboxUnavailableError",
    "SchemaVersionError",
    "SerializationError",
    "StepFailedError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "ToolDeniedError",
    "UnboundedRequestError",
    "UnknownPriceError",
    "UnknownWorkflowError",
    "UserError",
    "WfloError",
    "WfloInterrupt",
    "exit_code_for",
]


def _rebuild(cls: type[BaseException], kwargs: dict[str, Any]) -> BaseException:
    return cls(**kwargs)


class _Structured:
    """Mixin: keyword fields become attributes, the message is built from them, pickle works."""

    code: ClassVar[str] = "error"
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        for name in self._fields:
            setattr(self, name, fields.pop(name, None))
        if fields:
            raise TypeError(f"{type(self).__name__} got unexpected fields: {sorted(fields)}")
        self._explicit = message
        super().__init__(message if message is not None else self._message())  # type: ignore[call-arg]

    def _message(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-ready data (used by the journal, the CLI and the API)."""
        data: dict[str, Any] = {"code": self.code, "type": type(self).__name__, "message": str(self)}
        for name in self._fields:
            value = getattr(self, name)
            data[name] = str(value) if isinstance(value, Decimal) else value
        return data

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {name: getattr(self, name) for name in self._fields}
        if self._explicit is not None:
            kwargs["message"] = self._explicit
        # An error re-raised through a provider SDK is a private subclass; it pickles as itself.
        return (_rebuild, (getattr(self, "_wflo_class", type(self)), kwargs))


class WfloError(_Structured, Exception):
    """Base of every error wflo raises (except the ``WfloInterrupt`` signals)."""

    code = "error"

    def _message(self) -> str:
        return "wflo error"


class UserError(WfloError):
    """The call, configuration or input is wrong; the message says how to fix it."""

    code = "user_error"


class ConfigurationError(UserError):
    code = "configuration_error"


class OptionError(UserError, TypeError):
    """``@wflo.workflow``, ``@wflo.step`` or ``@wflo.tool`` got an option it does not know, or a
    value of the wrong type: refused when the decorator runs, not silently ignored."""

    code = "option_error"
    _fields = ("option", "of")
    option: Any
    of: Any

    def _message(self) -> str:
        return f"@wflo.{self.of}() got a bad option {self.option!r}"


class SerializationError(UserError):
    """A value crossing the journal cannot be serialized (or read back)."""

    code = "serialization_error"
    _fields = ("step", "what", "detail")
    step: Any
    what: Any
    detail: Any

    def _message(self) -> str:
        return (
            f"cannot serialize the {self.what} of step {self.step!r}: {self.detail}. "
            "Return plain JSON data (dict, list, str, int, float, bool, None), "
            "or declare the step with serializer='pickle'."
        )


class UnknownWorkflowError(UserError):
    code = "unknown_workflow"
    _fields = ("name", "known")
    name: Any
    known: Any

    def _message(self) -> str:
        known = ", ".join(sorted(self.known or [])) or "none"
        return (
            f"no workflow named {self.name!r} is registered in this process "
            f"(known: {known}); import the module that defines it: --import MODULE or --import path/to/file.py "
            "(wflo runs resume, wflo worker)"
        )


class StoreError(WfloError):
    code = "store_error"


class StoreUnavailableError(StoreError):
    code = "store_unavailable"
    _fields = ("url", "detail")
    url: Any
    detail: Any

    def _message(self) -> str:
        return f"cannot open the wflo store at {self.url}: {self.detail}"


class StoreNotFoundError(StoreError):
    """A read-only use (listing runs, showing one) named a store that does not exist.

    Refused rather than created: a typo in the URL must not leave an empty database (and its
    directories) behind and answer "no runs"."""

    code = "store_not_found"
    _fields = ("url", "path")
    url: Any
    path: Any

    def _message(self) -> str:
        return (
            f"no wflo store at {self.path} (from {self.url}): check WFLO_DATABASE_URL / --database, "
            "or create it with `wflo db migrate`"
        )


class StoreCorruptError(StoreError):
    """The SQLite file is damaged or is not a SQLite database at all."""

    code = "store_corrupt"
    _fields = ("path", "detail")
    path: Any
    detail: Any

    def _message(self) -> str:
        return (
            f"the wflo store {self.path} is damaged ({self.detail}): restore it from a backup, or move it "
            f"aside to start a new one (`sqlite3 {self.path} .recover` may rescue its rows)"
        )


class SchemaVersionError(StoreError):
    code = "schema_version"
    _fields = ("url", "found", "expected")
    url: Any
    found: Any
    expected: Any

    def _message(self) -> str:
        if (self.found or 0) > (self.expected or 0):
            fix = "upgrade wflo (pip install -U wflo)"
        else:
            fix = "run `wflo db migrate`"
        return f"the store at {self.url} has schema version {self.found}, this wflo needs {self.expected}: {fix}"


class RunNotFoundError(WfloError):
    code = "not_found"
    _fields = ("run_id",)
    run_id: Any

    def _message(self) -> str:
        return f"no run with id {self.run_id!r}"


class RunFailedError(WfloError):
    code = "run_failed"
    _fields = ("run_id", "status", "error")
    run_id: Any
    status: Any
    error: Any

    def _message(self) -> str:
        err = self.error or {}
        detail = f"{err.get('type', 'error')}: {err.get('message', '')}" if err else ""
        return f"run {self.run_id} ended {self.status}" + (f" ({detail})" if detail else "")


class ResultTimeoutError(WfloError, TimeoutError):
    code = "timeout"
    _fields = ("run_id", "timeout", "status")
    run_id: Any
    timeout: Any
    status: Any

    def _message(self) -> str:
        return f"run {self.run_id} still {self.status} after {self.timeout}s"


class NonDeterminismError(WfloError):
    code = "non_determinism"
    _fields = ("run_id", "call_id", "expected", "found")
    run_id: Any
    call_id: Any
    expected: Any
    found: Any

    def _message(self) -> str:
        return (
            f"run {self.run_id} is not deterministic at call {self.call_id}: the journal holds "
            f"{self.expected!r} but the code now calls {self.found!r}. The run is left blocked, not "
            f"failed: resume it with the code version that started it (wflo runs resume {self.run_id} "
            "--import MODULE_OR_FILE), or cancel it."
        )


class StepFailedError(WfloError):
    code = "step_failed"
    _fields = ("step", "error_type", "detail")
    step: Any
    error_type: Any
    detail: Any

    def _message(self) -> str:
        return f"step {self.step!r} failed: {self.error_type}: {self.detail}"


class AtMostOnceError(WfloError):
    code = "at_most_once"
    _fields = ("run_id", "step", "call_id")
    run_id: Any
    step: Any
    call_id: Any

    def _message(self) -> str:
        return (
            f"step {self.step!r} (call {self.call_id}) of run {self.run_id} is at-most-once and "
            "was in flight when the run was interrupted; it is not run again. Check its effect "
            "by hand, then cancel or restart the run."
        )


class RunEndedError(WfloError):
    code = "run_ended"
    _fields = ("run_id", "name")
    run_id: Any
    name: Any

    def _message(self) -> str:
        return (
            f"call {self.name!r} refused: it comes from a thread or task of run {self.run_id}, which "
            "already ended. Wait for the threads a workflow starts (join them, or leave the executor's "
            "`with` block) before it returns."
        )


class BudgetError(WfloError):
    code = "budget"


class BudgetExceededError(BudgetError):
    """A call would take a budget scope past its limit; it was refused before it was made."""

    code = "budget_exceeded"
    _fields = ("scope", "limit", "spent", "reserved", "requested")
    scope: Any
    limit: Any
    spent: Any
    reserved: Any
    requested: Any

    def _message(self) -> str:
        return (
            f"budget {self.scope} would be exceeded: limit ${self.limit}, spent ${self.spent}, "
            f"reserved ${self.reserved}, this call needs ${self.requested}"
        )


class UnknownPriceError(BudgetError):
    code = "unknown_price"
    _fields = ("model", "provider")
    model: Any
    provider: Any

    def _message(self) -> str:
        where = f" (provider {self.provider})" if self.provider else ""
        return (
            f"no price is known for model {self.model!r}{where}, so its cost cannot be bounded "
            f"and the call was refused. Set one: wflo.cost.prices.set({self.model!r}, "
            "input_per_mtok=..., output_per_mtok=...) or configure a fallback price."
        )


class UnboundedRequestError(BudgetError):
    """An LLM request of a known API whose worst-case cost wflo cannot bound (server-side state
    it has no record of, a billed built-in tool, a media part on a model of unknown context
    window): refused before it is sent while a budget applies."""

    code = "unbounded_request"
    _fields = ("api", "model", "reason")
    api: Any
    model: Any
    reason: Any

    def _message(self) -> str:
        return (
            f"wflo cannot bound the cost of this {self.api} request to {self.model!r}: {self.reason}. "
            "It was not sent (a budget applies, and a budget only holds for calls it can bound)."
        )


class EgressRefusedError(BudgetError):
    """Inside a guarded run, a request to an LLM provider that wflo does not understand
    (another HTTP client, an endpoint it cannot price): refused before it is sent."""

    code = "egress_refused"
    _fields = ("client", "method", "host", "path", "reason")
    client: Any
    method: Any
    host: Any
    path: Any
    reason: Any

    def _message(self) -> str:
        return (
            f"wflo refused {self.client} {self.method} {self.host}{self.path} before sending it: {self.reason}. "
            "Inside a guarded run every request to an LLM provider must be one wflo can price and bound "
            "(see docs/budgets.md, 'Coverage'). To let this host through unguarded, opt it out: "
            f"wflo.egress.allow({self.host!r}, reason=...) or WFLO_EGRESS_ALLOW={self.host} (recorded on the run)."
        )


class LoopDetectedError(WfloError):
    """A runaway detector or cap fired. The run is stopped; later guarded calls fail too."""

    code = "loop_detected"
    _fields = ("detector", "evidence", "run_id")
    detector: Any
    evidence: Any
    run_id: Any

    def _message(self) -> str:
        ev = self.evidence or {}
        summary = ev.get("summary") if isinstance(ev, dict) else None
        return f"runaway stopped by {self.detector}" + (f": {summary}" if summary else "")


class ApprovalError(WfloError):
    code = "approval"


class ApprovalRejected(ApprovalError):
    code = "approval_rejected"
    _fields = ("approval_id", "reason", "decided_by")
    approval_id: Any
    reason: Any
    decided_by: Any

    def _message(self) -> str:
        who = f" by {self.decided_by}" if self.decided_by else ""
        return f"approval {self.approval_id} rejected{who}: {self.reason or 'no reason given'}"


class ApprovalNotFoundError(ApprovalError):
    code = "not_found"
    _fields = ("approval_id",)
    approval_id: Any

    def _message(self) -> str:
        return f"no approval request with id {self.approval_id!r}"


class ApprovalClosedError(ApprovalError):
    code = "approval_closed"
    _fields = ("approval_id", "status")
    approval_id: Any
    status: Any

    def _message(self) -> str:
        return f"approval {self.approval_id} is already {self.status}"


class ApprovalForbiddenError(ApprovalError):
    code = "forbidden"
    _fields = ("approval_id", "principal", "detail")
    approval_id: Any
    principal: Any
    detail: Any

    def _message(self) -> str:
        return f"{self.principal} may not decide approval {self.approval_id}: {self.detail}"


class ActionMismatchError(ApprovalError):
    code = "action_mismatch"
    _fields = ("approval_id", "expected", "found")
    approval_id: Any
    expected: Any
    found: Any

    def _message(self) -> str:
        return (
            f"approval {self.approval_id} is for action {self.expected}, not {self.found}; "
            "a decision binds to the exact action it was shown"
        )


class AccessError(WfloError):
    code = "access"


class AuthenticationError(AccessError):
    """No valid credentials: the token or session is unknown, expired or revoked."""

    code = "unauthenticated"
    _fields = ("detail",)
    detail: Any

    def _message(self) -> str:
        return f"not authenticated: {self.detail}"


class AccessDeniedError(AccessError):
    """The principal lacks the permission in that scope (recorded as ``access.refused``)."""

    code = "forbidden"
    _fields = ("principal", "permission", "scope", "detail")
    principal: Any
    permission: Any
    scope: Any
    detail: Any

    def _message(self) -> str:
        where = f" on {self.scope}" if self.scope and self.scope != "*" else ""
        return f"{self.principal} may not {self.permission}{where}" + (f": {self.detail}" if self.detail else "")


class GuardError(WfloError):
    code = "guard"


class CircuitOpenError(GuardError):
    code = "circuit_open"
    _fields = ("key", "retry_at")
    key: Any
    retry_at: Any

    def _message(self) -> str:
        return f"circuit {self.key} is open (failing); next probe at {self.retry_at}"


class RateLimitedError(GuardError):
    code = "rate_limited"
    _fields = ("key", "limit", "retry_after")
    key: Any
    limit: Any
    retry_after: Any

    def _message(self) -> str:
        return f"rate limit {self.limit} for {self.key} reached; retry after {self.retry_after}s"


class SandboxError(WfloError):
    code = "sandbox"


class SandboxUnavailableError(SandboxError):
    code = "sandbox_unavailable"
    _fields = ("backend", "detail", "hint")
    backend: Any
    detail: Any
    hint: Any

    def _message(self) -> str:
        hint = f" {self.hint}" if self.hint else ""
        return f"sandbox backend {self.backend!r} cannot run here: {self.detail}.{hint}"


class SandboxSetupError(SandboxError):
    code = "sandbox_setup"
    _fields = ("backend", "detail")
    backend: Any
    detail: Any

    def _message(self) -> str:
        return f"sandbox backend {self.backend!r} failed to start: {self.detail}"


class ToolDeniedError(WfloError):
    code = "tool_denied"
    _fields = ("tool", "reason")
    tool: Any
    reason: Any

    def _message(self) -> str:
        return f"tool {self.tool!r} refused the call: {self.reason}"


class AuditError(WfloError):
    code = "audit"


class ChainBrokenError(AuditError):
    code = "chain_broken"
    _fields = ("chain", "seq", "expected", "found", "kind")
    chain: Any
    seq: Any
    expected: Any
    found: Any
    kind: Any

    def _message(self) -> str:
        return (
            f"audit chain {self.chain} broken at seq {self.seq} ({self.kind}): "
            f"expected {self.expected}, found {self.found}"
        )


class RetentionError(AuditError):
    """A prune cut-off inside the retention period (``Settings.retention_days``)."""

    code = "retention"
    _fields = ("before", "earliest", "days")
    before: Any
    earliest: Any
    days: Any

    def _message(self) -> str:
        return (
            f"pruning before {self.before} would delete records younger than the {self.days}-day retention "
            f"period (the earliest cut-off allowed now is {self.earliest}); to override, pass a reason "
            "(wflo audit prune --override-retention REASON), which is recorded"
        )


class WfloInterrupt(_Structured, BaseException):
    """Control-flow signal; derives from BaseException so ``except Exception`` can't eat it."""

    code = "interrupt"


class RunCancelled(WfloInterrupt):
    code = "cancelled"
    _fields = ("run_id",)
    run_id: Any

    def _message(self) -> str:
        return f"run {self.run_id} was cancelled"


class LeaseLost(WfloInterrupt):
    code = "lease_lost"
    _fields = ("run_id", "owner")
    run_id: Any
    owner: Any

    def _message(self) -> str:
        return f"this worker ({self.owner}) no longer holds run {self.run_id}; it stops here"


class RunSuspended(WfloInterrupt):
    code = "suspended"
    _fields = ("run_id", "reason", "wait")
    run_id: Any
    reason: Any
    wait: Any

    def _message(self) -> str:
        return f"run {self.run_id} is waiting: {self.reason}"


class RunReleased(WfloInterrupt):
    """A stopping worker handed the run back at a call boundary (``Worker.stop(hand_back=True)``):
    its lease is released, so any worker resumes it at once from its journal."""

    code = "released"
    _fields = ("run_id", "owner")
    run_id: Any
    owner: Any

    def _message(self) -> str:
        return f"worker {self.owner} is stopping: run {self.run_id} was handed back for another worker to resume"


class RunStopped(WfloInterrupt):
    """Raised by every guarded call after a runaway stop was caught by the agent's code.

    The first stop is a ``LoopDetectedError`` (an ``Exception``, so clean-up code can see it);
    if the code swallows it and carries on, its next guarded call raises this
    ``BaseException``, which ``except Exception`` cannot catch, and the run ends.
    """

    code = "stopped"
    _fields = ("run_id", "detector")
    run_id: Any
    detector: Any

    def _message(self) -> str:
        return f"run {self.run_id} was stopped by {self.detector} and makes no more calls"


_EXIT_CODES = {
    "user_error": 2,
    "configuration_error": 2,
    "option_error": 2,
    "serialization_error": 2,
    "unknown_workflow": 2,
    "not_found": 3,
    "store_error": 4,
    "store_unavailable": 4,
    "store_not_found": 4,
    "store_corrupt": 4,
    "schema_version": 5,
    "run_failed": 6,
    "budget_exceeded": 7,
    "unknown_price": 7,
    "unbounded_request": 7,
    "egress_refused": 7,
    "loop_detected": 8,
    "approval_rejected": 9,
    "chain_broken": 10,
    "suspended": 11,
    "non_determinism": 12,
    "retention": 2,
}


def exit_code_for(error: BaseException | type[BaseException]) -> int:
    """The CLI exit status for an error (or an error class): stable per ``code``, 1 for anything
    else (``docs/cli.md`` lists them, generated from this table)."""
    code = getattr(error, "code", None)
    return _EXIT_CODES.get(code, 1) if isinstance(code, str) else 1
