"""API tokens (service accounts) and browser sessions, stored as digests only.

A token is ``wflo_<prefix>_<secret>``: 8 visible characters to tell tokens apart in lists
and logs, then 32 random bytes. The store keeps its SHA-256 digest (a token is 256 bits of
randomness, so a slow password hash would add nothing), looks the row up by digest, and
compares digests in constant time. A token acts as ``service:<name>`` with exactly the role
and scope written on it, until it expires or is revoked. Sessions work the same way: the
cookie holds a random id, the store its digest, with an expiry and a revocation time.

Expiry is set and judged on the store's clock (``Store.now``), never a process's own: a
server replica whose clock runs slow would otherwise accept a token or a session that has
expired, and one whose clock runs fast would hand out longer ones.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .._config import CENTURY_DAYS
from .._errors import AuthenticationError, UserError
from ..store import NewEvent, StoreOp, now_iso
from ._access import Access, Principal
from ._roles import GLOBAL, ROLES, check_scope

PERSONAL = "personal"
"""The role of a personal CLI token: it acts as its owner, with the owner's current grants."""
TOKEN_RE = re.compile(r"^wflo_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{43})$")
_TOKEN_COLS = "id, name, principal, prefix, role, scope, created_by, created_at, expires_at, revoked_at, last_used_at"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_LONGEST = timedelta(days=CENTURY_DAYS)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` as a duration (a ``UserError`` otherwise)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not m or int(m.group(1)) <= 0:
        raise UserError(f"a duration looks like 30d, 12h, 90m or 3600s, got {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
    try:
        duration: timedelta | None = timedelta(**{unit: int(m.group(1))})
    except OverflowError:
        duration = None
    if duration is None or duration > _LONGEST:  # later than any date can be written
        raise UserError(f"a duration is at most {_LONGEST.days} days ('never' for no end), got {text!r}")
    return duration


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as listed (never its secret)."""

    id: str
    name: str
    principal: str
    prefix: str
    role: str
    scope: str
    created_by: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at < now_iso():
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class Session:
    principal: str
    csrf_digest: str
    expires_at: str


class Tokens:
    """API tokens and sessions of one store (authorization through ``Access``)."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.store = access.store

    # ----------------------------------------------------------------- tokens
    def create(
        self,
        name: str,
        role: str,
        scope: str = GLOBAL,
        *,
        expires: str | None = "90d",
        who: Principal,
        remote: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """Create a token; returns it and its secret (shown once, never stored)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name or ""):
            raise UserError(f"a token name is letters, digits, '.', '_' or '-', got {name!r}")
        if role not in ROLES:
            raise UserError(f"a token's role is one of {', '.join(ROLES)}, got {role!r}")
        scope = check_scope(scope)
        # Creating a token is handing out a role: the same permission as granting it.
        self.access._local_allowed(who, "tokens:write", scope, remote)
        self.access.authorize(who, "tokens:write", scope, remote=remote)
        expires_at = self._expires_at(expires) if expires else None
        prefix = secrets.token_hex(4)
        secret = f"wflo_{prefix}_{secrets.token_urlsafe(32)}"
        info = TokenInfo(
            id=str(uuid.uuid4()), name=name, principal=f"service:{name}", prefix=prefix, role=role, scope=scope,
            created_by=who.id, created_at=self.store.now(), expires_at=expires_at, revoked_at=None, last_used_at=None,
        )  # fmt: skip

        def op(cur: Any) -> None:
            self._refuse_disabled(cur, info.principal, f"{info.principal} is disabled: no new token acts as it")
            self.store.execute(
                cur,
                f"INSERT INTO api_tokens ({_TOKEN_COLS}, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (info.id, name, info.principal, prefix, role, scope, who.id, info.created_at, expires_at, None, None,
                 digest(secret)),
            )  # fmt: skip

        data = Access._who(who, remote) | {
            "token_id": info.id, "name": name, "prefix": prefix, "principal": info.principal, "role": role,
            "scope": scope, "expires_at": expires_at,
        }  # fmt: skip
        data["by_token"] = who.token_id  # the creator's own token, if any (``token_id`` names the new one)
        self.store.append_system([NewEvent("token.created", data)], ops=[op])
        return info, secret

    def create_personal(
        self, who: Principal, *, expires: str = "30d", remote: str | None = None
    ) -> tuple[TokenInfo, str]:
        """A token for the CLI that acts as ``who`` itself, with their roles *at each use*
        (role ``personal``): it can never do more than its owner can right now. Needs a
        signed-in person (``via: panel``)."""
        info, secret, op, event = self._personal(who, expires=expires, remote=remote)
        self.store.append_system([event], ops=[op])
        return info, secret

    def _personal(
        self, who: Principal, *, expires: str = "30d", remote: str | None = None
    ) -> tuple[TokenInfo, str, StoreOp, NewEvent]:
        """A personal token not yet written: its insert and its ``token.created`` event, for a
        caller that writes them in its own transaction (a device sign-in's approval)."""
        if who.via != "panel" or not who.id.startswith("user:"):
            raise UserError("a personal CLI token is created by a signed-in person in the browser")
        expires_at = self._expires_at(expires)
        prefix = secrets.token_hex(4)
        secret = f"wflo_{prefix}_{secrets.token_urlsafe(32)}"
        info = TokenInfo(
            id=str(uuid.uuid4()), name=f"cli-{who.id[5:]}"[:60], principal=who.id, prefix=prefix, role=PERSONAL,
            scope=GLOBAL, created_by=who.id, created_at=self.store.now(), expires_at=expires_at, revoked_at=None,
            last_used_at=None,
        )  # fmt: skip

        def op(cur: Any) -> None:
            self._refuse_disabled(cur, who.id, f"{who.id} is disabled")
            self.store.execute(
                cur,
                f"INSERT INTO api_tokens ({_TOKEN_COLS}, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (info.id, info.name, who.id, prefix, PERSONAL, GLOBAL, who.id, info.created_at, expires_at, None, None,
                 digest(secret)),
            )  # fmt: skip

        data = Access._who(who, remote) | {
            "token_id": info.id, "name": info.name, "prefix": prefix, "principal": who.id, "role": PERSONAL,
            "scope": GLOBAL, "expires_at": expires_at,
        }  # fmt: skip
        return info, secret, op, NewEvent("token.created", data)

    def _refuse_disabled(self, cur: Any, principal: str, why: str) -> None:
        """Inside a token's insert: refused for a disabled principal (read in the transaction,
        so a disable that committed first counts)."""
        self.store.execute(cur, "SELECT disabled FROM identities WHERE id = ?", (principal,))
        row = cur.fetchone()
        if row is not None and row[0]:
            raise UserError(why)

    def _expires_at(self, expires: str) -> str:
        """Now plus ``expires`` (``30d``) on the store's clock (``parse_duration`` caps it well
        before the year 9999)."""
        return self.store.now(parse_duration(expires).total_seconds())

    def list(self) -> list[TokenInfo]:
        rows = self.store.read(f"SELECT {_TOKEN_COLS} FROM api_tokens ORDER BY created_at")
        return [TokenInfo(*r) for r in rows]

    def get(self, token_id: str) -> TokenInfo | None:
        """The token with this id; None when there is none."""
        rows = self.store.read(f"SELECT {_TOKEN_COLS} FROM api_tokens WHERE id = ?", (token_id,))
        return TokenInfo(*rows[0]) if rows else None

    def find(self, ref: str) -> TokenInfo:
        """A token by id, prefix or name (only an unambiguous match)."""
        rows = self.store.read(
            f"SELECT {_TOKEN_COLS} FROM api_tokens WHERE id = ? OR prefix = ? OR name = ?", (ref, ref, ref)
        )
        # An id is exact: another token named (or prefixed) like it must not make it ambiguous.
        rows = [r for r in rows if r[0] == ref] or rows
        if len(rows) != 1:
            raise UserError(
                f"no token {ref!r} (wflo tokens list)" if not rows else f"{ref!r} names several tokens: use its id"
            )
        return TokenInfo(*rows[0])

    def revoke(self, ref: str, *, who: Principal, remote: str | None = None) -> TokenInfo:
        tok = self.find(ref)
        self.access._local_allowed(who, "tokens:write", tok.scope, remote)
        if tok.principal != who.id:  # anyone may revoke their own token
            self.access.authorize(who, "tokens:write", tok.scope, remote=remote)
        now = now_iso()

        def op(cur: Any) -> None:
            self.store.execute(
                cur, "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, tok.id)
            )

        data = Access._who(who, remote) | {"token_id": tok.id, "name": tok.name, "prefix": tok.prefix}
        self.store.append_system([NewEvent("token.revoked", data)], ops=[op])
        return self.find(tok.id)

    def authenticate(self, secret: str, *, via: str = "api", remote: str | None = None) -> Principal:
        """The principal a bearer token speaks for; ``AuthenticationError`` (recorded) otherwise."""
        m = TOKEN_RE.match(secret or "")
        row = None
        if m:
            want = digest(secret)
            rows = self.store.read(
                "SELECT id, principal, role, scope, expires_at, revoked_at, digest, prefix FROM api_tokens "
                "WHERE digest = ?",
                (want,),
            )
            # The lookup is by digest; the comparison is constant-time all the same.
            row = rows[0] if rows and hmac.compare_digest(rows[0][6], want) else None
        problem = "unknown token" if row is None else "token revoked" if row[5] else None
        if row is not None and problem is None:
            problem = self._use(row[0])
        if problem or row is None:
            data: dict[str, Any] = {"via": via, "reason": problem or "unknown token", "remote": remote}
            if m:
                data["prefix"] = m.group(1)  # the visible part only: never the secret
            self.store.append_system([NewEvent("auth.failed", data)])
            raise AuthenticationError(detail=problem or "unknown token")
        if row[2] == PERSONAL:  # its owner's roles as they are now
            grants = tuple((g.role, g.scope) for g in self.access.grants(row[1]))
            return Principal(id=row[1], via=via, grants=grants, token_id=row[0])
        return Principal(id=row[1], via=via, grants=((row[2], row[3]),), token_id=row[0])

    def _use(self, token_id: str) -> str | None:
        """Mark the token used, if it is live by the store's clock; else why not. Judged in the
        write itself: a revocation that commits first is seen, and no process's clock counts."""
        st = self.store

        def go(cur: Any) -> str | None:
            now = st.now(cur=cur)
            st.execute(
                cur, "UPDATE api_tokens SET last_used_at = ? WHERE id = ? AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?) AND NOT EXISTS (SELECT 1 FROM identities i "
                "WHERE i.id = api_tokens.principal AND i.disabled <> 0)", (now, token_id, now),
            )  # fmt: skip
            if cur.rowcount == 1:
                return None
            st.execute(
                cur, "SELECT t.revoked_at, i.disabled FROM api_tokens t LEFT JOIN identities i ON i.id = t.principal "
                "WHERE t.id = ?", (token_id,),
            )  # fmt: skip
            found = cur.fetchone()
            if found is not None and found[1]:  # made while its principal was being disabled
                return "token's principal is disabled"
            return "token revoked" if found is None or found[0] else "token expired"

        return st.write(go)

    # ----------------------------------------------------------------- sessions
    def open_session(self, principal: str, *, ttl: timedelta, remote: str | None = None) -> tuple[str, str]:
        """A new server-side session: returns its id (the cookie) and its CSRF token."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        st = self.store
        st.write(
            lambda cur: st.execute(
                cur,
                "INSERT INTO sessions (digest, principal, csrf_digest, created_at, expires_at, revoked_at, remote) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (digest(sid), principal, digest(csrf), st.now(cur=cur), st.now(ttl.total_seconds(), cur=cur), remote),
            )
        )
        return sid, csrf

    def session(self, sid: str) -> Session:
        """The live session of a cookie value; ``AuthenticationError`` when unknown, expired or revoked."""
        want = digest(sid or "")
        rows = self.store.read(
            "SELECT s.digest, s.principal, s.csrf_digest, s.expires_at, s.revoked_at, i.disabled FROM sessions s "
            "LEFT JOIN identities i ON i.id = s.principal WHERE s.digest = ?",
            (want,),
        )
        if not rows or not hmac.compare_digest(rows[0][0], want):
            raise AuthenticationError(detail="no session")
        if rows[0][4]:
            raise AuthenticationError(detail="session revoked (signed out)")
        if rows[0][5]:  # a session opened while its principal was being disabled
            raise AuthenticationError(detail=f"{rows[0][1]} is disabled")
        if rows[0][3] <= self.store.now():  # the store's clock: every replica judges alike
            raise AuthenticationError(detail="session expired")
        return Session(principal=rows[0][1], csrf_digest=rows[0][2], expires_at=rows[0][3])

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf_digest, digest(token or ""))

    def end_session(self, sid: str) -> None:
        self.store.write(
            lambda cur: self.store.execute(
                cur,
                "UPDATE sessions SET revoked_at = ? WHERE digest = ? AND revoked_at IS NULL",
                (now_iso(), digest(sid)),
            )
        )

    def end_sessions_of(self, principal: str) -> None:
        """Sign a principal out everywhere (server-side revocation)."""
        self.store.write(
            lambda cur: self.store.execute(
                cur,
                "UPDATE sessions SET revoked_at = ? WHERE principal = ? AND revoked_at IS NULL",
                (now_iso(), principal),
            )
        )
