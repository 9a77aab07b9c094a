"""Roles, permissions and scopes: what each built-in role may do, and where.

A permission is ``<area>:<verb>`` (``runs:read``, ``approvals:decide``). A role is a fixed set
of permissions; ``admin`` holds ``admin:*``, which covers every permission. A grant gives a
principal a role in a *scope*: ``*`` (everywhere), ``tenant:acme`` or
``tenant:acme/project:etl``; a grant covers its scope and everything below it.

Roles that are not built in (``finance``, ``dba``) carry no permission: they route approval
requests (``approvers=["role:finance"]``) and are granted the same way.
"""

from __future__ import annotations

from .._errors import UserError

PERMISSIONS: dict[str, str] = {
    "runs:read": "see runs, their journals and costs",
    "runs:cancel": "cancel a run",
    "runs:resume": "resume or retry a run",
    "approvals:read": "see approval requests",
    "approvals:decide": "approve or reject requests routed to you",
    "budgets:read": "see budgets and prices",
    "budgets:write": "set budgets and prices",
    "tools:read": "see tools and their grants",
    "tools:write": "grant and revoke tools, trust tool publishers",
    "audit:read": "verify chains, export evidence, read reports",
    "grants:read": "see who holds which role",
    "grants:write": "grant and remove roles",
    "tokens:read": "list API tokens",
    "tokens:write": "create and revoke API tokens",
    "sessions:write": "revoke other people's sessions",
    "users:write": "disable and enable people and service accounts, release a person's sign-in binding",
    "settings:write": "change deployment settings",
    "admin:*": "everything",
}

_READ = frozenset({"runs:read", "approvals:read", "budgets:read", "tools:read"})

ROLES: dict[str, frozenset[str]] = {
    "viewer": _READ,
    "operator": _READ | {"runs:cancel", "runs:resume"},
    "approver": _READ | {"approvals:decide"},
    "budget-admin": _READ | {"budgets:write"},
    "auditor": _READ | {"audit:read", "grants:read", "tokens:read"},
    "admin": frozenset({"admin:*"}),
}
"""The built-in roles and their permissions (``admin`` holds every permission)."""

GLOBAL = "*"


def role_allows(role: str, permission: str) -> bool:
    """Whether ``role`` gives ``permission`` (custom roles give none)."""
    perms = ROLES.get(role, frozenset())
    return "admin:*" in perms or permission in perms


def check_scope(scope: str) -> str:
    """A valid scope (``*``, ``tenant:acme``, ``tenant:acme/project:etl``) or a ``UserError``."""
    scope = (scope or GLOBAL).strip()
    if scope == GLOBAL:
        return scope
    parts = scope.split("/")
    kinds = [p.split(":", 1)[0] for p in parts]
    ok = kinds in (["tenant"], ["tenant", "project"]) and all(
        len(p.split(":", 1)) == 2 and p.split(":", 1)[1] and "*" not in p for p in parts
    )
    if not ok:
        raise UserError(f"scope must be '*', 'tenant:NAME' or 'tenant:NAME/project:NAME', got {scope!r}")
    return scope


def tenant_scope(tenant: str | None) -> str:
    """The scope of a resource of ``tenant`` (``*`` for a resource without one)."""
    return f"tenant:{tenant}" if tenant else GLOBAL


def covers(grant_scope: str, resource_scope: str) -> bool:
    """Whether a grant in ``grant_scope`` reaches a resource in ``resource_scope``.

    A resource without a tenant (``*``) is reachable only by global grants: a tenant's
    operator does not see runs that belong to no tenant. Below a tenant there are only its
    projects: ``tenant:acme`` reaches ``tenant:acme/project:etl``, never ``tenant:acme/x``,
    the scope of a tenant named ``acme/x`` (new tenant names may not hold a ``/``; one stored
    before that rule is reachable by global grants only).
    """
    if grant_scope == GLOBAL:
        return True
    if resource_scope == grant_scope:
        return True
    project = resource_scope.removeprefix(grant_scope + "/project:")
    return "/" not in grant_scope and project != resource_scope and bool(project) and "/" not in project
