"""What the framework adapters share: JSON views of framework values, option checks."""

from __future__ import annotations

from typing import Any

from .._errors import UserError
from ..approvals import Approval


def jsonable(value: Any) -> Any:
    """A JSON view of a framework value for the run record (messages, models, dataclasses)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(mode="json"))
        except Exception:
            pass
    try:
        import pydantic_core

        return pydantic_core.to_jsonable_python(value, fallback=repr)
    except Exception:
        return repr(value)


def check_approvals(approvals: dict[str, Approval] | None) -> dict[str, Approval]:
    """``approvals={tool_name: wflo.Approval(...)}``, checked."""
    if approvals is None:
        return {}
    if not isinstance(approvals, dict):
        raise UserError(f"approvals= takes {{tool name: wflo.Approval(...)}}, got {type(approvals).__name__}")
    for name, policy in approvals.items():
        if not isinstance(policy, Approval):
            raise UserError(f"approvals[{name!r}] must be a wflo.Approval(...), got {type(policy).__name__}")
    return dict(approvals)
