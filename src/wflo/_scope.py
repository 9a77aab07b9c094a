"""``wflo.scope(tenant=..., agent=...)``: attribute calls to budget scopes."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from ._errors import UserError

_scope: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("wflo_scope", default={})  # noqa: B039 - never mutated; replaced per `with`

SCOPE_KEYS = ("tenant", "agent", "project", "user")
MAX_NAME = 255
"""The longest tenant, agent, project or user name, and run id (as the server's ``Idempotency-Key``)."""


def check_name(value: object, what: str, *, colon: bool = False) -> str:
    """``value`` if it is a name wflo can store and show: non-empty text of at most
    ``MAX_NAME`` printable characters (no NUL, which PostgreSQL cannot store, no line breaks
    or bidi controls, which would disguise it in the panel and the CLI), without ``:`` (the
    separator of budget scopes) unless ``colon``; else ``UserError`` naming ``what``."""
    if not isinstance(value, str) or not value:
        raise UserError(f"{what} must be a non-empty name, got {value!r}")
    if len(value) > MAX_NAME:
        raise UserError(f"{what} must be at most {MAX_NAME} characters, got {len(value)} ({value[:20]!r}...)")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise UserError(f"{what} must be printable text, got {value!r} (it contains {bad!r})")
    if value != value.strip():
        raise UserError(f"{what} must not begin or end with spaces, got {value!r}")
    if not colon and ":" in value:
        raise UserError(f"{what} must be a name without ':', got {value!r}")
    return value


def check_tenant(value: object, what: str) -> str:
    """``value`` if it can name a tenant: a name (``check_name``) without ``/``, which separates
    a tenant from its project in access scopes (``tenant:acme/project:etl``): a tenant named
    ``acme/x`` would read as something below ``acme``."""
    name = check_name(value, what)
    if "/" in name:
        raise UserError(f"{what} must be a name without '/' (it separates a tenant from its project), got {name!r}")
    return name


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
        (check_tenant if key == "tenant" else check_name)(value, f"scope {key}")
    merged = {**_scope.get(), **names}
    token = _scope.set(merged)
    try:
        yield merged
    finally:
        _scope.reset(token)


def current_scope() -> dict[str, str]:
    """The scope names in effect here (may be empty)."""
    return _scope.get()
