"""Who holds which role where, and every authorization decision on the system chain.

A grant is ``(principal, role, scope)`` plus who granted it and from where. Granting (and
removing) needs ``admin`` in the grant's scope; the check runs inside the transaction that
writes the grant, under the system chain's lock, so two processes cannot both pass a check
that only one of them should. Refusals are recorded as ``access.refused`` events.

Bootstrap (the first admin): a store with no admin at all accepts one ``bootstrap`` grant of
``admin`` (``wflo admin bootstrap``), and in local single-user mode (``require_auth`` unset)
the first local grant makes its granter the admin first. Once an admin exists every grant
needs one.
"""

from __future__ import annotations

import getpass
import os
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from .._config import settings
from .._errors import AccessDeniedError, UserError
from ..store import NewEvent, Store, now_iso
from ._roles import GLOBAL, ROLES, check_scope, covers, role_allows

VIA = ("local", "api", "panel", "cli")


def os_user() -> str:
    """The operating system's login name (what ``via: local`` records next to the principal)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment (some containers)
        return f"uid:{os.getuid()}"


def check_principal(principal: str) -> str:
    kind, _, name = principal.partition(":")
    if kind not in ("user", "service", "group") or not name or any(c.isspace() for c in principal):
        raise UserError(f"principal must look like 'user:alice' or 'service:ci', got {principal!r}")
    return principal


@dataclass(frozen=True, slots=True)
class Grant:
    """One role held by one principal in one scope."""

    principal: str
    role: str
    scope: str
    granted_by: str
    via: str
    source: str
    """``manual`` (a grant), ``bootstrap`` (the first admin) or ``oidc`` (mapped from claims)."""
    granted_at: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Someone authenticated (or, locally, who the process says it is)."""

    id: str
    via: str
    """``local`` (direct store access), ``api`` (bearer token) or ``panel`` (browser session)."""
    grants: tuple[tuple[str, str], ...] = ()
    """``(role, scope)`` pairs this principal holds *for this request* (a token: only its own)."""
    token_id: str | None = None
    os_user: str | None = None
    email: str | None = None

    def allowed(self, permission: str, scope: str = GLOBAL) -> bool:
        return any(covers(s, scope) and role_allows(r, permission) for r, s in self.grants)


_GRANT_COLS = "principal, role, scope, granted_by, via, source, granted_at"


class Access:
    """Grants and authorization decisions of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ----------------------------------------------------------------- reading
    def grants(self, principal: str | None = None) -> list[Grant]:
        sql = f"SELECT {_GRANT_COLS} FROM role_grants"
        rows = (
            self.store.read(sql + " WHERE principal = ? ORDER BY role, scope", (principal,))
            if principal
            else self.store.read(sql + " ORDER BY principal, role, scope")
        )
        return [Grant(*r) for r in rows]

    def has_admin(self) -> bool:
        return bool(self.store.read("SELECT 1 FROM role_grants WHERE role = 'admin' LIMIT 1"))

    def local(self, principal: str | None = None) -> Principal:
        """The principal of this process in local mode (``WFLO_PRINCIPAL``), with its grants."""
        pid = principal or settings().principal
        return Principal(
            id=pid, via="local", grants=tuple((g.role, g.scope) for g in self.grants(pid)), os_user=os_user()
        )

    def of(self, principal: str, via: str) -> Principal:
        return Principal(id=principal, via=via, grants=tuple((g.role, g.scope) for g in self.grants(principal)))

    # ----------------------------------------------------------------- deciding
    def refuse(
        self, who: Principal, permission: str, scope: str, detail: str = "", *, remote: str | None = None
    ) -> AccessDeniedError:
        """Record a refused action on the system chain and return the error to raise."""
        self.record("access.refused", who, remote=remote, permission=permission, scope=scope, detail=detail)
        return AccessDeniedError(principal=who.id, permission=permission, scope=scope, detail=detail or None)

    def authorize(self, who: Principal, permission: str, scope: str = GLOBAL, *, remote: str | None = None) -> None:
        """Raise ``AccessDeniedError`` (recorded) unless ``who`` has ``permission`` in ``scope``."""
        if not who.allowed(permission, scope):
            raise self.refuse(who, permission, scope, remote=remote)

    def require_local(self, permission: str, scope: str = GLOBAL) -> Principal:
        """The local principal, refused (and recorded) when ``require_auth`` is set."""
        who = self.local()
        self._local_allowed(who, permission, scope, None)
        return who

    def _local_allowed(self, who: Principal, permission: str, scope: str, remote: str | None) -> None:
        """Every local change is refused under ``require_auth``, whichever entry point it took."""
        if who.via == "local" and settings().require_auth:
            raise self.refuse(
                who, permission, scope, "local changes are off where authentication is required (require_auth)",
                remote=remote,
            )  # fmt: skip

    def record(self, kind: str, who: Principal, *, remote: str | None = None, **data: Any) -> None:
        """One authorization fact on the system chain: who, what, from where."""
        self.store.append_system([NewEvent(kind, self._who(who, remote) | data)])

    @staticmethod
    def _who(who: Principal, remote: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"by": who.id, "via": who.via}
        if who.os_user:
            out["os_user"] = who.os_user
        if who.token_id:
            out["token_id"] = who.token_id
        if remote:
            out["remote"] = remote
        return out

    # ----------------------------------------------------------------- granting
    def bootstrap(self, principal: str, *, who: Principal) -> Grant:
        """Make ``principal`` the first admin; refused once any admin exists."""
        check_principal(principal)

        def guard(cur: Any) -> None:
            self.store.execute(cur, "SELECT 1 FROM role_grants WHERE role = 'admin' LIMIT 1")
            if cur.fetchone():
                raise AccessDeniedError(
                    principal=who.id, permission="admin:*", scope=GLOBAL,
                    detail="an admin exists already; ask them to grant roles (wflo grant)",
                )  # fmt: skip

        return self._write_grant(principal, "admin", GLOBAL, who=who, source="bootstrap", guard=guard)

    def grant(
        self, principal: str, role: str, scope: str = GLOBAL, *, who: Principal, remote: str | None = None
    ) -> Grant:
        """Give ``principal`` the ``role`` in ``scope``; ``who`` needs ``admin`` there.

        In local mode on a store with no admin yet, ``who`` becomes the admin first (the
        first-run rule; recorded as its own ``principal.granted`` with ``source: bootstrap``).
        """
        check_principal(principal)
        self._local_allowed(who, "grants:write", scope, remote)
        role = role.removeprefix("role:").strip()
        if not role or any(c.isspace() or c in ":/*" for c in role):
            raise UserError(f"role must be a single word such as 'approver' or 'finance', got {role!r}")
        scope = check_scope(scope)
        first_run = who.via == "local" and not settings().require_auth and not self.has_admin()
        if first_run:
            # Another process may bootstrap meanwhile: then the normal check below decides.
            with suppress(AccessDeniedError):
                self.bootstrap(who.id, who=who)
            who = self.local(who.id) if who.via == "local" else who

        def guard(cur: Any) -> None:
            # Re-read the granter's grants inside the transaction: a removal that committed a
            # moment ago counts, and a token's principal is limited to the token's own role.
            rows = self._grants_in(cur, who.id)
            held = who.grants if who.token_id else tuple(rows)
            if not any(covers(s, scope) and role_allows(r, "grants:write") for r, s in held):
                raise AccessDeniedError(
                    principal=who.id, permission="grants:write", scope=scope, detail="granting a role needs admin"
                )

        try:
            return self._write_grant(principal, role, scope, who=who, source="manual", guard=guard, remote=remote)
        except AccessDeniedError as exc:
            raise self.refuse(who, "grants:write", scope, str(exc.detail or ""), remote=remote) from None

    def revoke(
        self, principal: str, role: str, scope: str = GLOBAL, *, who: Principal, remote: str | None = None
    ) -> bool:
        """Remove a grant (needs ``admin`` in its scope); True when one was removed."""
        role = role.removeprefix("role:")
        scope = check_scope(scope)
        self._local_allowed(who, "grants:write", scope, remote)
        if not who.allowed("grants:write", scope):
            raise self.refuse(who, "grants:write", scope, "removing a role needs admin", remote=remote)
        removed: list[int] = []

        def op(cur: Any) -> None:
            st = self.store
            st.execute(
                cur, "DELETE FROM role_grants WHERE principal = ? AND role = ? AND scope = ?", (principal, role, scope)
            )
            removed.append(cur.rowcount)
            self._project(cur, principal)

        event = NewEvent(
            "principal.revoked", self._who(who, remote) | {"principal": principal, "role": role, "scope": scope}
        )
        self.store.append_system([event], ops=[op])
        return bool(removed and removed[0])

    def _grants_in(self, cur: Any, principal: str) -> list[tuple[str, str]]:
        self.store.execute(cur, "SELECT role, scope FROM role_grants WHERE principal = ?", (principal,))
        return [(r[0], r[1]) for r in cur.fetchall()]

    def _project(self, cur: Any, principal: str) -> None:
        """Keep ``principals.roles`` (the role names approval routing reads) in step."""
        # The table is the approvals package's; writing it is this module's alone (each grant is
        # checked and recorded on the system chain here), so the write is not on Inbox's public
        # face, where it would hand out approval rights unrecorded.
        from ..approvals._tables import set_roles  # imported here: wflo.approvals imports wflo.auth

        self.store.execute(cur, "SELECT DISTINCT role FROM role_grants WHERE principal = ?", (principal,))
        set_roles(self.store, cur, principal, sorted({r[0] for r in cur.fetchall()}), now=now_iso())

    def _write_grant(
        self,
        principal: str,
        role: str,
        scope: str,
        *,
        who: Principal,
        source: str,
        guard: Any,
        remote: str | None = None,
    ) -> Grant:
        now = now_iso()
        grant = Grant(principal, role, scope, who.id, who.via, source, now)

        def op(cur: Any) -> None:
            guard(cur)
            st = self.store
            st.execute(
                cur, "DELETE FROM role_grants WHERE principal = ? AND role = ? AND scope = ?", (principal, role, scope)
            )
            st.execute(
                cur,
                f"INSERT INTO role_grants ({_GRANT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (principal, role, scope, who.id, who.via, source, now),
            )
            self._project(cur, principal)

        # ``principal.granted`` keeps its fields (principal, role, by) for readers of the chain.
        data = self._who(who, remote) | {"principal": principal, "role": role, "scope": scope, "source": source}
        if role == "admin":
            data["admin"] = True
        self.store.append_system([NewEvent("principal.granted", data)], ops=[op])
        return grant

    # ----------------------------------------------------------------- approvals
    def qualifying_grants(self, principal: str, roles: set[str], scope: str) -> list[Grant]:
        """``principal``'s grants of any of ``roles`` that reach ``scope``."""
        return [g for g in self.grants(principal) if g.role in roles and covers(g.scope, scope)]


def builtin_role(role: str) -> bool:
    return role in ROLES
