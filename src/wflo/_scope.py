"""``wflo.scope(tenant=..., agent=...)``: attribute calls to budget scopes."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from ._errors import UserError

_scope: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("wflo_scope", default={})  # noqa: B039 - never mutated; replaced per `with`

SCOPE_KEYS = ("tenant", "agent", "project", "user")


@contextmanager
def scope(**names: str) -> Iterator[dict[str, str]]:
    """Attribute the LLM and tool calls made inside the block to budget scopes.

    ``with wflo.scope(tenant="acme", agent="researcher"): ...`` makes each call count
    against ``tenant:acme`` and ``agent:researcher`` (where limits are set with
    ``wflo.budgets.set``), as well as the run's own budget. Blocks nest; inner names win.
    """
    bad = sorted(set(names) - set(SCOPE_KEYS))
    if bad:
        raise UserError(f"unknown scope key(s) {', '.join(bad)}; use {', '.join(SCOPE_KEYS)}")
    for key, value in names.items():
        if not isinstance(value, str) or not value or ":" in value:
            raise UserError(f"scope {key} must be a non-empty name without ':', got {value!r}")
    merged = {**_scope.get(), **names}
    token = _scope.set(merged)
    try:
        yield merged
    finally:
        _scope.reset(token)


def current_scope() -> dict[str, str]:
    """The scope names in effect here (may be empty)."""
    return _scope.get()
