"""Approval policies: when an operation needs a human, who may decide, and what a timeout does."""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import inspect
import linecache
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import UserError
from ..store import canonical_json

ON_TIMEOUT = ("reject", "approve", "escalate")
ON_REJECT = ("raise", "return")
ON_CHANGE = ("ask", "stop")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d|w)?\s*$")
_UNITS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_duration(value: Any, what: str = "duration") -> float:
    """Seconds from ``30``, ``"90s"``, ``"15m"``, ``"4h"``, ``"2d"``, ``"1w"``, ``"500ms"``."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a duration like '4h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise UserError(f"{what} must be a duration like '90s', '15m', '4h' or '2d', got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:  # NaN would pass "<= 0": the request would never expire
        raise UserError(f"{what} must be a positive, finite duration (None: no timeout), got {value!r}")
    return seconds


def _check_approvers(approvers: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(approvers, str):
        approvers = [approvers]
    out = []
    for entry in approvers:
        if not isinstance(entry, str) or ":" not in entry or not entry.split(":", 1)[1]:
            raise UserError(f"{what} entries look like 'role:finance' or 'user:alice', got {entry!r}")
        out.append(entry)
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class Approval:
    """When a tool call needs a human decision, and how that decision is made.

    ``@wflo.tool(approval=wflo.Approval(when=lambda amount, **_: amount > 100, approvers=["role:finance"]))``
    """

    when: Callable[..., bool] | None = None
    """Risk rule on the call's arguments (called with them as keywords); ``None``: always."""
    approvers: Sequence[str] = ()
    """Who may decide: ``role:NAME`` or ``user:NAME`` entries. Empty: anyone but the requester."""
    quorum: int = 1
    """Distinct approvers needed (four-eyes: 2). One rejection rejects."""
    timeout: float | str | None = "24h"
    """How long to wait for a decision (``None``: forever)."""
    on_timeout: str = "reject"
    """``"reject"`` (default), ``"approve"`` or ``"escalate"`` (to ``escalate_to``, one more ``timeout``)."""
    escalate_to: Sequence[str] = ()
    """Approvers who take over when the request escalates."""
    on_reject: str = "raise"
    """``"raise"``: the call raises ``ApprovalRejected``; ``"return"``: it returns the reason as
    text (for tools an LLM calls, so the model reads why it was refused)."""
    message: str | None = None
    """What the approver is shown (default: the tool and its arguments)."""
    on_change: str = "ask"
    """When the action about to run is not the one decided (the code or its inputs changed
    while the run waited): ``"ask"`` files a new request showing both actions; ``"stop"``
    ends the run as ``stopped``. Either way the decision is not used and the journal says
    which (``approval.action_changed``)."""
    timeout_seconds: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "approvers", _check_approvers(self.approvers, "approvers"))
        object.__setattr__(self, "escalate_to", _check_approvers(self.escalate_to, "escalate_to"))
        if not isinstance(self.quorum, int) or isinstance(self.quorum, bool) or self.quorum < 1:
            raise UserError(f"quorum must be a positive integer, got {self.quorum!r}")
        users = set(self.approvers)
        if users and all(a.startswith("user:") for a in users) and self.quorum > len(users):
            # Only named people may decide and there are fewer of them than the quorum: the
            # request could never be approved (a role may have any number of holders).
            raise UserError(
                f"quorum={self.quorum} needs {self.quorum} distinct approvers, but approvers names only "
                f"{len(users)} ({', '.join(sorted(users))}); add approvers (or a role:NAME), or lower the quorum"
            )
        if self.message is not None and not isinstance(self.message, str):
            raise UserError(f"message must be text, got {self.message!r}")
        if self.on_timeout not in ON_TIMEOUT:
            raise UserError(f"on_timeout must be one of {', '.join(ON_TIMEOUT)}, got {self.on_timeout!r}")
        if self.on_timeout == "escalate" and not self.escalate_to:
            raise UserError("on_timeout='escalate' needs escalate_to=[...] approvers")
        if self.on_reject not in ON_REJECT:
            raise UserError(f"on_reject must be 'raise' or 'return', got {self.on_reject!r}")
        if self.on_change not in ON_CHANGE:
            raise UserError(f"on_change must be 'ask' or 'stop', got {self.on_change!r}")
        if self.when is not None and not callable(self.when):
            raise UserError("when must be a callable taking the call's arguments as keywords")
        seconds = None if self.timeout is None else parse_duration(self.timeout, "timeout")
        object.__setattr__(self, "timeout_seconds", seconds)

    def applies(self, fn: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this call needs a decision (the ``when`` rule on its arguments)."""
        if self.when is None:
            return True
        named = dict(kwargs)
        if fn is not None and args:
            with contextlib.suppress(TypeError):
                named = dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)
        return bool(self.when(**named))


def action_of(tool: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The exact action a decision binds to."""
    return {"tool": tool, "args": list(args), "kwargs": kwargs}


def action_hash(action: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of an action."""
    return hashlib.sha256(canonical_json(action).encode()).hexdigest()


def describe_rule(policy: Approval) -> str:
    """The risk rule as its author wrote it (``amount > 100``), for the approver to read.

    A lambda is shown as its source text, a named function by its name and the first line
    of its docstring; ``always`` when the policy has no ``when``."""
    when = policy.when
    if when is None:
        return "always"
    code = getattr(when, "__code__", None)
    if code is not None and when.__name__ == "<lambda>":
        text = _lambda_source(code.co_filename, code.co_firstlineno, code.co_varnames[: code.co_argcount])
        if text:
            return text
    name = getattr(when, "__qualname__", None) or type(when).__name__
    doc = (inspect.getdoc(when) or "").strip().splitlines()
    return f"{name}()" + (f": {doc[0]}" if doc else "")


@functools.lru_cache(maxsize=256)
def _lambda_source(filename: str, line: int, args: tuple[str, ...]) -> str | None:
    source = "".join(linecache.getlines(filename))
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        named = isinstance(node, ast.Lambda) and node.lineno == line
        if named and tuple(a.arg for a in node.args.posonlyargs + node.args.args) == args:  # type: ignore[attr-defined]
            segment = ast.get_source_segment(source, node)
            text = " ".join(segment.split()) if segment else ""
            return (text[:497] + "...") if len(text) > 500 else text or None
    return None
