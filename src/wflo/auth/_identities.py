"""People from OIDC claims: who may sign in, and which roles their groups give them.

The mapping is configuration, not code: ``role_map`` is ``group=role[@scope]`` pairs
separated by commas (``wflo-admins=admin, finance=approver@tenant:acme``). At each login the
user's ``oidc`` grants are replaced by what their groups map to now, so removing someone
from a group in the identity provider removes the role at their next login.

A person is ``user:<email>``, so the email must be one the provider has verified
(``email_verified``), and the principal is bound to the provider's account (issuer and
subject) at its first sign-in: another account that comes with the same address later (a
recycled mailbox, a second provider) is refused, and does not inherit the grants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .._errors import AuthenticationError, ConfigurationError
from ..store import NewEvent, now_iso
from ._access import Access
from ._roles import GLOBAL, ROLES, check_scope


@dataclass(frozen=True, slots=True)
class ClaimsPolicy:
    """Who may sign in and what their groups give them."""

    role_map: tuple[tuple[str, str, str], ...] = ()
    """``(group, role, scope)`` triples."""
    allowed_groups: frozenset[str] = frozenset()
    """If set, only members of one of these groups may sign in."""
    allowed_domains: frozenset[str] = frozenset()
    """If set, only verified emails of these domains may sign in."""
    groups_claim: str = "groups"
    require_email_verified: bool = True
    """An email must come with ``email_verified: true``; off, a missing claim is accepted (a
    provider that never sends it), an explicit ``false`` never is."""

    @classmethod
    def parse(
        cls, role_map: str = "", allowed_groups: str = "", allowed_domains: str = "", groups_claim: str = "groups",
        require_email_verified: bool = True,
    ) -> ClaimsPolicy:  # fmt: skip
        triples = []
        for item in filter(None, (p.strip() for p in role_map.split(","))):
            group, sep, rest = item.partition("=")
            role, _, scope = rest.partition("@")
            if not sep or not group.strip() or role.strip() not in ROLES:
                raise ConfigurationError(
                    f"oidc_role_map entry {item!r} must be GROUP=ROLE[@SCOPE] with ROLE one of {', '.join(ROLES)}"
                )
            triples.append((group.strip(), role.strip(), check_scope(scope.strip() or GLOBAL)))
        return cls(
            tuple(triples), _words(allowed_groups), _words(allowed_domains), groups_claim or "groups",
            require_email_verified,
        )  # fmt: skip

    def groups(self, claims: dict[str, Any]) -> list[str]:
        raw = claims.get(self.groups_claim) or []
        return [str(g) for g in (raw if isinstance(raw, list) else [raw])]

    def refusal(self, claims: dict[str, Any]) -> str | None:
        """Why these claims may not sign in, or ``None``."""
        email = str(claims.get("email") or "").lower()
        # The email names the principal (user:<email>): an address the provider does not say
        # it has verified could be someone else's, so it is refused outright.
        verified = claims.get("email_verified", None if not self.require_email_verified else False)
        if email and verified not in (True, "true", None):  # some providers send the text "true"
            return "email not verified by the provider"
        if self.allowed_domains and (not email or email.rsplit("@", 1)[-1] not in self.allowed_domains):
            return "email domain not allowed"
        if self.allowed_groups and not {g.lower() for g in self.groups(claims)} & self.allowed_groups:
            return "not in an allowed group"
        return None

    def grants(self, claims: dict[str, Any]) -> list[tuple[str, str]]:
        mine = set(self.groups(claims))
        return sorted({(role, scope) for group, role, scope in self.role_map if group in mine})


def _words(text: str) -> frozenset[str]:
    return frozenset(filter(None, (p.strip().lower() for p in text.split(","))))


def principal_id(claims: dict[str, Any]) -> str:
    """``user:<email>`` when the provider gives an email, else ``user:<issuer-subject>``."""
    email = claims.get("email")
    return f"user:{str(email).lower()}" if email else f"user:{claims['sub']}"


class Identities:
    """Users created and updated from claims at login."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.store = access.store

    def login(self, claims: dict[str, Any], policy: ClaimsPolicy, *, via: str, remote: str | None) -> str:
        """Create or update the user of ``claims``, sync their mapped roles; returns the principal."""
        pid = principal_id(claims)
        now = now_iso()
        groups = policy.groups(claims)
        mapped = policy.grants(claims)

        issuer, subject = claims.get("iss"), str(claims["sub"])

        def op(cur: Any) -> None:
            st = self.store
            st.execute(cur, "SELECT issuer, subject FROM identities WHERE id = ?", (pid,))
            bound = cur.fetchone()
            if bound and bound[1] is not None and (bound[1] != subject or bound[0] not in (None, issuer)):
                raise AuthenticationError(
                    detail=f"{pid} is bound to another account at the provider (another subject or issuer): "
                    "refused, so that this account does not take over its roles"
                )
            st.execute(
                cur,
                "INSERT INTO identities (id, kind, email, name, issuer, subject, groups, disabled, created_at, last_login_at) "
                "VALUES (?, 'user', ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (id) DO UPDATE SET email = excluded.email, "
                "name = excluded.name, groups = excluded.groups, last_login_at = excluded.last_login_at, "
                "issuer = COALESCE(identities.issuer, excluded.issuer), "
                "subject = COALESCE(identities.subject, excluded.subject)",
                (pid, claims.get("email"), claims.get("name"), issuer, subject, json.dumps(groups), now, now),
            )  # fmt: skip
            st.execute(cur, "DELETE FROM role_grants WHERE principal = ? AND source = 'oidc'", (pid,))
            for role, scope in mapped:
                st.execute(
                    cur, "DELETE FROM role_grants WHERE principal = ? AND role = ? AND scope = ?", (pid, role, scope)
                )
                st.execute(
                    cur,
                    "INSERT INTO role_grants (principal, role, scope, granted_by, via, source, granted_at) "
                    "VALUES (?, ?, ?, 'oidc', ?, 'oidc', ?)",
                    (pid, role, scope, via, now),
                )
            self.access._project(cur, pid)

        event = NewEvent(
            "auth.login",
            {"by": pid, "via": via, "remote": remote, "issuer": claims.get("iss"), "groups": groups,
             "roles": [f"{r}@{s}" for r, s in mapped]},
        )  # fmt: skip
        self.store.append_system([event], ops=[op])
        return pid
