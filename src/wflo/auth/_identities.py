"""People from OIDC claims: who may sign in, and which roles their groups give them.

The mapping is configuration, not code: ``role_map`` is ``group=role[@scope]`` pairs
separated by commas (``wflo-admins=admin, finance=approver@tenant:acme``). At each login the
user's ``oidc`` grants are replaced by what their groups map to now, so removing someone
from a group in the identity provider removes the role at their next login.

A person is ``user:<email>``, so the email must be one the provider has verified
(``email_verified``), and the principal is bound to the provider's account (issuer and
subject) at its first sign-in: another account that comes with the same address later (a
recycled mailbox, a second provider) is refused, and does not inherit the grants. An admin
releases that binding (``unbind``: after a provider change, or a mailbox deliberately given to
someone else); the next sign-in binds afresh.

Offboarding: ``disable`` ends a principal's sessions and revokes the tokens that act as it (a
person's personal CLI tokens; a service account's tokens) in one transaction, and from then on
refuses its OIDC sign-in, its device sign-in, its first-start link and its approval votes;
``enable`` lets it sign in again (with new sessions and tokens: nothing revoked comes back).
Tokens the person *made* for service accounts keep working (a deploy pipeline does not stop
because its maker left), and each answer and its ``principal.disabled`` event name them, so
the admin can review them. An admin may not disable themselves nor the last enabled admin.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import AccessDeniedError, AuthenticationError, ConfigurationError, StoreError, UserError
from ..store import Migration, NewEvent, now_iso
from ._access import Access, Principal, check_principal
from ._roles import GLOBAL, ROLES, check_scope, covers, role_allows
from ._tokens import _TOKEN_COLS, TokenInfo

# Who disabled a principal, when and why (the system chain has the same, this is for the list).
M028_IDENTITY_DISABLED = Migration.add_columns(
    "m028_identity_disabled", "identities", ("disabled_at", "disabled_by", "disabled_reason")
)

PERMISSION = "users:write"
"""The permission to disable, enable and unbind principals (``admin`` holds it)."""
_REASON_MAX = 500


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
            st.execute(cur, "SELECT issuer, subject, disabled FROM identities WHERE id = ?", (pid,))
            bound = cur.fetchone()
            if bound and bound[2]:
                raise AuthenticationError(detail=f"{pid} is disabled by an admin: sign-in refused")
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

    # ----------------------------------------------------------------- offboarding
    def known(self, principal: str) -> bool:
        """Whether the store knows ``principal``: signed in, holds a role, a token, a session or
        a first-start link."""
        return bool(
            self.store.read(
                "SELECT 1 FROM identities WHERE id = ? UNION ALL SELECT 1 FROM role_grants WHERE principal = ? "
                "UNION ALL SELECT 1 FROM api_tokens WHERE principal = ? UNION ALL SELECT 1 FROM sessions "
                "WHERE principal = ? UNION ALL SELECT 1 FROM signin_codes WHERE principal = ? LIMIT 1",
                (principal,) * 5,
            )
        )

    def is_disabled(self, principal: str) -> bool:
        return bool(self.store.read("SELECT 1 FROM identities WHERE id = ? AND disabled <> 0", (principal,)))

    def people(self) -> list[dict[str, Any]]:
        """Everyone the store knows: signed-in people (identities), grant holders, token owners,
        with their state (disabled, bound to a provider account) and live tokens and sessions."""
        st = self.store
        people: dict[str, dict[str, Any]] = {}

        def person(pid: str) -> dict[str, Any]:
            kind = pid.split(":", 1)[0] if ":" in pid else "user"
            return people.setdefault(pid, {
                "id": pid, "kind": kind, "email": None, "name": None, "issuer": None, "bound": False, "groups": [],
                "disabled": False, "disabled_at": None, "disabled_by": None, "disabled_reason": None,
                "created_at": None, "last_login_at": None, "grants": [], "tokens": 0, "sessions": 0,
            })  # fmt: skip

        cols = (
            "id, kind, email, name, issuer, groups, disabled, created_at, last_login_at, subject, disabled_at, "
            "disabled_by, disabled_reason"
        )
        for row in st.read(f"SELECT {cols} FROM identities ORDER BY id"):
            person(row[0]).update(
                kind=row[1], email=row[2], name=row[3], issuer=row[4], groups=json.loads(row[5] or "[]"),
                disabled=bool(row[6]), created_at=row[7], last_login_at=row[8], bound=row[9] is not None,
                disabled_at=row[10], disabled_by=row[11], disabled_reason=row[12],
            )  # fmt: skip
        for g in self.access.grants():
            person(g.principal)["grants"].append(
                {k: getattr(g, k) for k in ("principal", "role", "scope", "granted_by", "via", "source", "granted_at")}
            )
        now = st.now()  # tokens and sessions expire on the store's clock
        live_tokens = (
            "SELECT principal, COUNT(*) FROM api_tokens WHERE revoked_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > ?) GROUP BY principal"
        )
        for pid, n in st.read(live_tokens, (now,)):
            person(pid)["tokens"] = int(n)
        live_sessions = (
            "SELECT principal, COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > ? GROUP BY principal"
        )
        for pid, n in st.read(live_sessions, (now,)):
            person(pid)["sessions"] = int(n)
        return sorted(people.values(), key=lambda p: (p["kind"] != "user", p["id"]))

    def disable(self, principal: str, *, reason: str, who: Principal, remote: str | None = None) -> Offboarded:
        """Disable ``principal`` (``user:…`` or ``service:…``): in one transaction its sessions
        end, the tokens that act as it are revoked, its approved but uncollected device sign-ins
        are denied and its first-start links spent; its sign-ins and votes are refused from then
        on. Needs ``users:write`` (admin); not yourself, not the last enabled admin."""
        principal = self._target(principal, who, remote, verb="disable")
        reason = _reason(reason)
        st = self.store
        # The row exists before the disabling transaction, so a vote that reads it under its
        # lock (``wflo.approvals``) waits for that transaction and then sees the change.
        st.write(
            lambda cur: st.execute(
                cur,
                "INSERT INTO identities (id, kind, groups, disabled, created_at) VALUES (?, ?, '[]', 0, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (principal, principal.split(":", 1)[0], st.now(cur=cur)),
            )
        )

        def attempt() -> Offboarded:
            seen = _holdings(st.read, principal)
            live_sessions = _live_sessions(st.read, principal, st.now())

            def op(cur: Any) -> None:
                self._guard(cur, who)
                st.execute(cur, "SELECT disabled FROM identities WHERE id = ?" + st.for_update, (principal,))
                row = cur.fetchone()
                if row is None or row[0]:
                    raise UserError(f"{principal} is disabled already (wflo users enable {principal} to undo)")
                self._keep_an_admin(cur, principal, "disable")
                if _holdings(_reader(st, cur), principal) != seen:
                    raise _Raced
                now = st.now(cur=cur)
                st.execute(
                    cur, "UPDATE identities SET disabled = 1, disabled_at = ?, disabled_by = ?, disabled_reason = ? "
                    "WHERE id = ?", (now, who.id, reason, principal),
                )  # fmt: skip
                _sign_out(st, cur, principal, now)
                # An approved sign-in whose token the CLI has not collected yet: it gets none.
                st.execute(
                    cur, "UPDATE device_requests SET status = 'denied', sealed_token = NULL, decided_at = ? "
                    "WHERE principal = ? AND status = 'approved'", (now, principal),
                )  # fmt: skip
                st.execute(
                    cur, "UPDATE signin_codes SET used_at = ? WHERE principal = ? AND used_at IS NULL", (now, principal)
                )

            done = Offboarded(
                principal,
                "disabled",
                reason,
                sessions_ended=live_sessions,
                tokens_revoked=seen.own,
                tokens_made=seen.made,
            )
            st.append_system([NewEvent("principal.disabled", Access._who(who, remote) | done.record())], ops=[op])
            return done

        return self._retry(attempt, who, remote)

    def enable(self, principal: str, *, reason: str = "", who: Principal, remote: str | None = None) -> Offboarded:
        """Let a disabled ``principal`` sign in again (its revoked sessions and tokens stay
        revoked: it signs in afresh). Needs ``users:write`` (admin)."""
        principal = self._target(principal, who, remote, verb="enable")
        reason = _reason(reason, required=False)
        st = self.store

        def attempt() -> Offboarded:
            def op(cur: Any) -> None:
                self._guard(cur, who)
                st.execute(cur, "SELECT disabled FROM identities WHERE id = ?" + st.for_update, (principal,))
                row = cur.fetchone()
                if row is None or not row[0]:
                    raise UserError(f"{principal} is not disabled")
                st.execute(
                    cur, "UPDATE identities SET disabled = 0, disabled_at = NULL, disabled_by = NULL, "
                    "disabled_reason = NULL WHERE id = ?", (principal,),
                )  # fmt: skip

            done = Offboarded(principal, "enabled", reason)
            st.append_system([NewEvent("principal.enabled", Access._who(who, remote) | done.record())], ops=[op])
            return done

        return self._retry(attempt, who, remote)

    def unbind(
        self, principal: str, *, reason: str, who: Principal, remote: str | None = None, remove_grants: bool = False
    ) -> Offboarded:
        """Release ``principal``'s binding to its provider account (issuer, subject): the next
        sign-in with its email binds afresh. Its sessions and personal tokens end (they were
        the old account's). ``remove_grants``: also remove every role it holds, for a mailbox
        given to someone else, who must not inherit them. Needs ``users:write`` (admin)."""
        principal = self._target(principal, who, remote, verb="unbind", self_ok=True)
        if not principal.startswith("user:"):
            raise UserError(f"only a person (user:…) is bound to a provider account, not {principal}")
        reason = _reason(reason)
        st = self.store

        def attempt() -> Offboarded:
            rows = st.read("SELECT issuer, subject FROM identities WHERE id = ?", (principal,))
            if not rows or rows[0][1] is None:
                raise UserError(f"{principal} is not bound to a provider account (it binds at its next sign-in)")
            bound = (rows[0][0], rows[0][1])
            seen = _holdings(st.read, principal)
            live_sessions = _live_sessions(st.read, principal, st.now())
            grants = tuple((g.role, g.scope) for g in self.access.grants(principal)) if remove_grants else ()

            def op(cur: Any) -> None:
                self._guard(cur, who)
                st.execute(cur, "SELECT issuer, subject FROM identities WHERE id = ?" + st.for_update, (principal,))
                row = cur.fetchone()
                if row is None or (row[0], row[1]) != bound or _holdings(_reader(st, cur), principal) != seen:
                    raise _Raced
                if remove_grants:
                    self._keep_an_admin(cur, principal, "remove the roles of")
                    if tuple(self.access._grants_in(cur, principal)) != grants:
                        raise _Raced
                    st.execute(cur, "DELETE FROM role_grants WHERE principal = ?", (principal,))
                    self.access._project(cur, principal)
                st.execute(cur, "UPDATE identities SET issuer = NULL, subject = NULL WHERE id = ?", (principal,))
                _sign_out(st, cur, principal, st.now(cur=cur))

            done = Offboarded(
                principal, "unbound", reason, sessions_ended=live_sessions, tokens_revoked=seen.own,
                grants_removed=grants, unbound_from=bound,
            )  # fmt: skip
            st.append_system([NewEvent("principal.unbound", Access._who(who, remote) | done.record())], ops=[op])
            return done

        return self._retry(attempt, who, remote)

    # ----------------------------------------------------------------- inside
    def _target(self, principal: str, who: Principal, remote: str | None, *, verb: str, self_ok: bool = False) -> str:
        principal = check_principal((principal or "").strip())
        if principal.startswith("group:"):
            raise UserError(f"only a person (user:…) or a service account (service:…) can be {verb}d, not a group")
        self.access._local_allowed(who, PERMISSION, GLOBAL, remote)
        self.access.authorize(who, PERMISSION, GLOBAL, remote=remote)
        if principal == who.id and not self_ok:
            raise UserError(f"you may not {verb} yourself ({who.id}): another admin can")
        if not self.known(principal):
            raise UserError(f"no principal {principal!r} is known here (wflo users list)")
        return principal

    def _guard(self, cur: Any, who: Principal) -> None:
        """Inside the transaction: ``who`` still holds the permission (a removal that committed
        a moment ago counts; a token is limited to its own role) and is not disabled."""
        st = self.store
        held = who.grants if who.token_id else tuple(self.access._grants_in(cur, who.id))
        if not any(covers(s, GLOBAL) and role_allows(r, PERMISSION) for r, s in held):
            raise AccessDeniedError(principal=who.id, permission=PERMISSION, scope=GLOBAL, detail="needs admin")
        st.execute(cur, "SELECT disabled FROM identities WHERE id = ?", (who.id,))
        row = cur.fetchone()
        if row is not None and row[0]:
            raise AccessDeniedError(
                principal=who.id, permission=PERMISSION, scope=GLOBAL, detail=f"{who.id} is disabled"
            )

    def _keep_an_admin(self, cur: Any, principal: str, verb: str) -> None:
        """Refuse to take away the last enabled global admin (nobody could undo it)."""
        st = self.store
        st.execute(
            cur, "SELECT 1 FROM role_grants WHERE principal = ? AND role = 'admin' AND scope = ?", (principal, GLOBAL)
        )
        if cur.fetchone() is None:
            return
        st.execute(
            cur, "SELECT COUNT(DISTINCT g.principal) FROM role_grants g LEFT JOIN identities i ON i.id = g.principal "
            "WHERE g.role = 'admin' AND g.scope = ? AND g.principal <> ? AND COALESCE(i.disabled, 0) = 0",
            (GLOBAL, principal),
        )  # fmt: skip
        row = cur.fetchone()
        if not row or not int(row[0]):
            raise UserError(f"{principal} is the last enabled admin: grant admin to someone else before you {verb} it")

    def _retry(self, attempt: Callable[[], Offboarded], who: Principal, remote: str | None) -> Offboarded:
        for _ in range(5):
            try:
                return attempt()
            except _Raced:  # a session or token came or went between the read and the write
                continue
            except AccessDeniedError as exc:
                raise self.access.refuse(who, PERMISSION, GLOBAL, str(exc.detail or ""), remote=remote) from None
        raise StoreError("the principal kept changing while it was being changed: try again")


@dataclass(frozen=True, slots=True)
class Offboarded:
    """What disabling, enabling or unbinding a principal did (the event records the same)."""

    principal: str
    action: str
    """``disabled``, ``enabled`` or ``unbound``."""
    reason: str
    sessions_ended: int = 0
    tokens_revoked: tuple[TokenInfo, ...] = ()
    """The tokens that acted as the principal (a person's personal CLI tokens), now revoked."""
    tokens_made: tuple[TokenInfo, ...] = ()
    """Unrevoked tokens the principal made for other principals (service accounts): they keep
    working; review them (``wflo tokens revoke``)."""
    grants_removed: tuple[tuple[str, str], ...] = ()
    """``(role, scope)`` of each role removed by ``unbind(remove_grants=True)``."""
    unbound_from: tuple[str | None, str | None] | None = None
    """``(issuer, subject)`` the principal was bound to, for ``unbound``."""

    def record(self) -> dict[str, Any]:
        """The fields of this change as its event and the API give them."""
        out: dict[str, Any] = {"principal": self.principal, "reason": self.reason}
        if self.action != "enabled":
            out["sessions_ended"] = self.sessions_ended
            out["tokens_revoked"] = [_brief(t) for t in self.tokens_revoked]
        if self.action == "disabled":
            out["tokens_made"] = [_brief(t) for t in self.tokens_made]
        if self.action == "unbound":
            out["issuer"], out["subject"] = self.unbound_from or (None, None)
            out["grants_removed"] = [{"role": r, "scope": s} for r, s in self.grants_removed]
        return out


class _Raced(Exception):
    """What the transaction found differs from what was read to record it: read again."""


@dataclass(frozen=True, slots=True)
class _Holdings:
    own: tuple[TokenInfo, ...]
    made: tuple[TokenInfo, ...]
    sessions: frozenset[str]


Reader = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def _reader(store: Any, cur: Any) -> Reader:
    def read(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        store.execute(cur, sql, params)
        return list(cur.fetchall())

    return read


def _holdings(read: Reader, principal: str) -> _Holdings:
    """The unrevoked tokens acting as ``principal``, those it made for others, and the digests
    of its unrevoked sessions."""
    own = read(
        f"SELECT {_TOKEN_COLS} FROM api_tokens WHERE principal = ? AND revoked_at IS NULL ORDER BY id", (principal,)
    )
    made = read(
        f"SELECT {_TOKEN_COLS} FROM api_tokens WHERE created_by = ? AND principal <> ? AND revoked_at IS NULL ORDER BY id",
        (principal, principal),
    )
    sessions = read("SELECT digest FROM sessions WHERE principal = ? AND revoked_at IS NULL", (principal,))
    return _Holdings(
        tuple(TokenInfo(*r) for r in own), tuple(TokenInfo(*r) for r in made), frozenset(str(r[0]) for r in sessions)
    )


def _live_sessions(read: Reader, principal: str, now: str) -> int:
    rows = read(
        "SELECT COUNT(*) FROM sessions WHERE principal = ? AND revoked_at IS NULL AND expires_at > ?", (principal, now)
    )
    return int(rows[0][0])


def _sign_out(store: Any, cur: Any, principal: str, now: str) -> None:
    """End every session of ``principal`` and revoke every token that acts as it."""
    store.execute(
        cur, "UPDATE sessions SET revoked_at = ? WHERE principal = ? AND revoked_at IS NULL", (now, principal)
    )
    store.execute(
        cur, "UPDATE api_tokens SET revoked_at = ? WHERE principal = ? AND revoked_at IS NULL", (now, principal)
    )


def _brief(t: TokenInfo) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "prefix": t.prefix, "principal": t.principal, "role": t.role, "scope": t.scope}


def _reason(reason: str | None, *, required: bool = True) -> str:
    text = " ".join((reason or "").split())
    if required and not text:
        raise UserError("give a reason (--reason): it is recorded with the change")
    if len(text) > _REASON_MAX:
        raise UserError(f"a reason is at most {_REASON_MAX} characters, got {len(text)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UserError("a reason may not hold control characters")
    return text
