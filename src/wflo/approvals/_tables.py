"""The approvals tables: their DDL and every query on them.

``approvals`` holds the requests, ``approval_votes`` one vote per principal and request, and
``principals`` the role names approval routing reads (a projection ``wflo.auth`` keeps in step
with its grants). The migrations that create them were released in the store's list and are
kept here verbatim (same name, same SQL); ``wflo.store._migrations.MIGRATIONS`` still decides
their order, naming them ``"wflo.approvals._tables:NAME"``.

Each query is a function of the store (a read) or of the store and the cursor of a transaction
the caller holds (a write, or a read under the row lock), on the store's public interface only.
Rows come back as tuples in :data:`COLUMNS` order; ``ApprovalRequest.from_row`` reads them.
Two queries read the store's ``runs`` table, under its lock where a decision needs it: the run
a request belongs to decides whether it may still be decided, and its tenant who may decide.
Two read ``wflo.auth``'s ``api_tokens``: who made a service account's tokens answers for it.
Two read its ``identities``: a disabled principal may not decide.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..store import Migration, Store

M003_APPROVALS = Migration(
    "m003_approvals",
    """
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    message TEXT NOT NULL,
    action TEXT NOT NULL,
    action_hash TEXT NOT NULL,
    approvers TEXT NOT NULL,
    quorum INTEGER NOT NULL,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL,
    decision_action TEXT,
    decision_hash TEXT,
    reason TEXT,
    decided_by TEXT,
    decided_at TEXT,
    via TEXT,
    timeout_at TEXT,
    on_timeout TEXT NOT NULL,
    escalate_to TEXT,
    escalations INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX approvals_status ON approvals (status, created_at);
CREATE INDEX approvals_run ON approvals (run_id);
CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT,
    action_hash TEXT NOT NULL,
    via TEXT NOT NULL,
    shown TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (approval_id, principal)
);
CREATE TABLE principals (
    id TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
""",
)

# An approval request keeps the tool's parameters (JSON schema, to validate an approver's edits
# from any process) and the request it replaced when the action changed before it ran.
M006_APPROVALS_BIND = Migration(
    "m006_approvals_bind",
    """
ALTER TABLE approvals ADD COLUMN params TEXT;
ALTER TABLE approvals ADD COLUMN supersedes TEXT
""",
)


COLUMNS = (
    "id, run_id, call_id, tool, message, action, action_hash, approvers, quorum, requested_by, status, "
    "decision_action, decision_hash, reason, decided_by, decided_at, via, timeout_at, on_timeout, "
    "escalate_to, escalations, created_at, updated_at, params, supersedes"
)
"""The columns of a request, in the order ``ApprovalRequest.from_row`` reads them."""

Row = tuple[Any, ...]


# --------------------------------------------------------------------------- reads
def request(store: Store, approval_id: str) -> Row | None:
    """The request with exactly this id."""
    return store.read_one(f"SELECT {COLUMNS} FROM approvals WHERE id = ?", (approval_id,))


def requests_by_prefix(store: Store, prefix: str) -> list[Row]:
    """At most two requests whose id starts with ``prefix`` (two: the prefix is ambiguous).

    ``prefix`` is text, not a pattern: ``%`` and ``_`` in it match only themselves (a bare
    ``%%%%`` would otherwise name the only request there is). The range keeps the match exact
    where SQLite's LIKE ignores case, and lets it use the primary key's order.
    """
    if not prefix:
        return []
    like = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
    return store.read(
        f"SELECT {COLUMNS} FROM approvals WHERE id >= ? AND id < ? AND id LIKE ? ESCAPE '!' LIMIT 2",
        (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), like),
    )


def requests_for_call(store: Store, run_id: str, call_id: str) -> list[Row]:
    """Every request filed for one call of a run, oldest first."""
    return store.read(
        f"SELECT {COLUMNS} FROM approvals WHERE run_id = ? AND call_id = ? ORDER BY created_at, id", (run_id, call_id)
    )


def requests(store: Store, *, status: str | None, run_id: str | None, limit: int) -> list[Row]:
    """Requests newest first, optionally of one status and one run."""
    sql = f"SELECT {COLUMNS} FROM approvals"
    params: list[Any] = []
    where: list[str] = []
    if status:
        where.append("status = ?")
        params.append(status)
    if run_id:
        where.append("run_id = ?")
        params.append(run_id)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC LIMIT ?"
    params.append(limit)
    return store.read(sql, params)


def requests_with_runs(store: Store, *, status: str | None, tenant: str | None, limit: int) -> list[Row]:
    """Requests newest first, each row followed by its run's tenant and workflow (``None``
    for a run that is gone); ``tenant``: only requests of that tenant's runs."""
    sql = f"SELECT {COLUMNS}, (SELECT tenant FROM runs r WHERE r.id = approvals.run_id), "
    sql += "(SELECT workflow FROM runs r WHERE r.id = approvals.run_id) FROM approvals"
    where: list[str] = []
    params: list[Any] = []
    if status:
        where.append("status = ?")
        params.append(status)
    if tenant:
        where.append("run_id IN (SELECT id FROM runs WHERE tenant = ?)")
        params.append(tenant)
    sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at DESC LIMIT ?"
    params.append(limit)
    return store.read(sql, params)


def tenant_of_request(store: Store, approval_id: str) -> str | None:
    """The tenant of the run a request belongs to (``None``: no tenant, or no such request)."""
    row = store.read_one(
        "SELECT r.tenant FROM approvals a LEFT JOIN runs r ON r.id = a.run_id WHERE a.id = ?", (approval_id,)
    )
    return row[0] if row else None


def summaries(store: Store, ids: Sequence[str]) -> list[tuple[str, str, str, str, str | None]]:
    """``(id, run_id, status, tool, tenant)`` of each request in ``ids`` that exists."""
    if not ids:
        return []
    rows = store.read(
        "SELECT a.id, a.run_id, a.status, a.tool, r.tenant FROM approvals a LEFT JOIN runs r ON r.id = a.run_id "
        f"WHERE a.id IN ({', '.join('?' * len(ids))})",
        list(ids),
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def pending_by_tool(store: Store) -> dict[str, int]:
    """How many requests wait for a decision, by tool."""
    rows = store.read("SELECT tool, COUNT(*) FROM approvals WHERE status = 'pending' GROUP BY tool")
    return {str(tool): int(count) for tool, count in rows}


def requests_created(store: Store, since: str, until: str) -> list[Row]:
    """``(id, run, tool, message, status, requested_by, decided_by, created, decided, reason,
    via)`` of the requests created in ``[since, until)``, oldest first."""
    return store.read(
        "SELECT id, run_id, tool, message, status, requested_by, decided_by, created_at, decided_at, reason, via "
        "FROM approvals WHERE created_at >= ? AND created_at < ? ORDER BY created_at, id",
        (since, until),
    )


def votes_on_requests_created(store: Store, since: str, until: str) -> list[Row]:
    """``(approval_id, principal, decision, reason, via, at)`` of the votes on the requests
    created in ``[since, until)``, oldest first."""
    return store.read(
        "SELECT v.approval_id, v.principal, v.decision, v.reason, v.via, v.at FROM approval_votes v "
        "JOIN approvals a ON a.id = v.approval_id WHERE a.created_at >= ? AND a.created_at < ? ORDER BY v.at",
        (since, until),
    )


def votes(store: Store, approval_id: str) -> list[Row]:
    """``(principal, decision, reason, action_hash, via, at)`` of each vote, oldest first."""
    return store.read(
        "SELECT principal, decision, reason, action_hash, via, at FROM approval_votes WHERE approval_id = ? ORDER BY at",
        (approval_id,),
    )


def roles_of(store: Store, principal: str) -> set[str]:
    """The role names ``principals`` holds for ``principal`` (empty: none)."""
    row = store.read_one("SELECT roles FROM principals WHERE id = ?", (principal,))
    return set(json.loads(row[0])) if row else set()


def principals(store: Store) -> list[tuple[str, list[str], str, str]]:
    """``(id, role names, created_at, updated_at)`` of every principal, by id."""
    rows = store.read("SELECT id, roles, created_at, updated_at FROM principals ORDER BY id")
    return [(r[0], json.loads(r[1]) if r[1] else [], r[2], r[3]) for r in rows]


_MAKERS = """
WITH RECURSIVE makers (principal, person) AS (
    SELECT principal, created_by FROM api_tokens
    WHERE principal IN (SELECT principal FROM approval_votes WHERE approval_id = ?) OR principal IN ({marks})
    UNION
    SELECT m.principal, t.created_by FROM makers m JOIN api_tokens t ON t.principal = m.person
)
SELECT principal, person FROM makers"""


def token_makers(store: Store, approval_id: str, principals: Sequence[str]) -> list[tuple[str, str]]:
    """Who made the API tokens of each of ``principals`` and of the request's voters (the
    makers of the tokens that made those, and so on): ``(principal, maker)`` pairs, only for
    principals that have tokens. Reads ``wflo.auth``'s ``api_tokens``: a service account acts
    for whoever made its tokens, so a decision counts them as the same person."""
    marks = ", ".join("?" for _ in principals) or "NULL"
    return [(r[0], r[1]) for r in store.read(_MAKERS.format(marks=marks), (approval_id, *principals))]


def run_tenant(store: Store, run_id: str) -> str | None:
    """The tenant of a run (``None``: no tenant, or no such run)."""
    row = store.read_one("SELECT tenant FROM runs WHERE id = ?", (run_id,))
    return row[0] if row else None


# --------------------------------------------------------------------------- writes (in the caller's transaction)
def supersede_pending(store: Store, cur: Any, run_id: str, call_id: str, *, keep: str, now: str) -> int:
    """Close a call's pending requests other than ``keep`` as ``superseded``; returns how many."""
    store.execute(
        cur,
        "UPDATE approvals SET status = 'superseded', updated_at = ? WHERE run_id = ? AND call_id = ? "
        "AND status = 'pending' AND id <> ?",
        (now, run_id, call_id, keep),
    )
    return int(cur.rowcount)


def reopen(store: Store, cur: Any, approval_id: str, *, now: str) -> bool:
    """Make a ``superseded`` request pending again (its action is wanted once more)."""
    store.execute(
        cur, "UPDATE approvals SET status = 'pending', updated_at = ? WHERE id = ? AND status = 'superseded'",
        (now, approval_id),
    )  # fmt: skip
    return bool(cur.rowcount)


def exists(store: Store, cur: Any, approval_id: str) -> bool:
    store.execute(cur, "SELECT 1 FROM approvals WHERE id = ?", (approval_id,))
    return cur.fetchone() is not None


def insert(
    store: Store, cur: Any, *, approval_id: str, run_id: str, call_id: str, tool: str, message: str, action: str,
    action_hash: str, approvers: list[str], quorum: int, requested_by: str, timeout_at: str | None,
    on_timeout: str, escalate_to: list[str], params: str | None, supersedes: str | None, now: str,
) -> None:  # fmt: skip
    """A new pending request (``action``, ``params`` and ``supersedes`` as canonical JSON)."""
    store.execute(
        cur,
        f"INSERT INTO approvals ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', NULL, NULL, NULL, NULL, NULL, NULL, ?, ?, ?, 0, ?, ?, ?, ?)",
        (approval_id, run_id, call_id, tool, message, action, action_hash, json.dumps(approvers), quorum,
         requested_by, timeout_at, on_timeout, json.dumps(escalate_to), now, now, params, supersedes),
    )  # fmt: skip


def disabled(store: Store, principal: str) -> bool:
    """Whether an admin disabled ``principal`` (``wflo.auth``'s ``identities``)."""
    return store.read_one("SELECT 1 FROM identities WHERE id = ? AND disabled <> 0", (principal,)) is not None


def lock_for_decision(
    store: Store, cur: Any, run_id: str, approval_id: str, principals: Sequence[str] = ()
) -> tuple[tuple[str, bool] | None, Row | None, list[tuple[str, str, str]], str, list[tuple[str, str]], bool]:
    """For a decision: ``(status, cancel_requested)`` of the run (``None``: no such run), the
    request, its votes so far (``(principal, decision, action_hash)`` each), now by the
    store's clock, the token makers of ``principals`` and of the voters (as
    :func:`token_makers`), and whether the decider (``principals[0]``) is disabled; both rows
    locked until the transaction ends, and the decider's identity row too: a disable that is
    being written is waited for and then seen (``wflo.auth`` writes that row before it disables).

    The run's row is locked before the request's: the order every writer of both rows uses,
    so a cancel that committed first is seen, and one that comes after waits for the
    decision. The votes and the clock are read once the request's lock is held (statements
    run in order), so no other vote on it can come in between, and a decision that waited
    for the lock is judged on the time it got it. Sent together: one round trip.
    """

    def ask(sql: str, params: Sequence[Any]) -> Callable[[], list[tuple[Any, ...]]]:
        # Sent on a cursor of its own (each answer outlives the statements sent after it);
        # what it returns reads the rows.
        own = cur.connection.cursor()
        store.execute(own, sql, params)

        def answer() -> list[tuple[Any, ...]]:
            try:
                return list(own.fetchall())
            finally:
                own.close()

        return answer

    run = ask(f"SELECT status, cancel_requested FROM runs WHERE id = ?{store.for_update}", (run_id,))
    request = ask(f"SELECT {COLUMNS} FROM approvals WHERE id = ?{store.for_update}", (approval_id,))
    votes = ask("SELECT principal, decision, action_hash FROM approval_votes WHERE approval_id = ?", (approval_id,))
    makers = ask(_MAKERS.format(marks=", ".join("?" for _ in principals) or "NULL"), (approval_id, *principals))
    off = ask(f"SELECT disabled FROM identities WHERE id = ?{store.for_update}", (principals[0] if principals else "",))
    clock = store.ask_now(cur)
    # The last answer first: once it is in, so are the others (one wait, not one per answer).
    now = clock()
    run_rows, request_rows, vote_rows = run(), request(), votes()
    return (
        (run_rows[0][0], bool(run_rows[0][1])) if run_rows else None,
        request_rows[0] if request_rows else None,
        [(r[0], r[1], r[2]) for r in vote_rows],
        now,
        [(r[0], r[1]) for r in makers()],
        any(r[0] for r in off()),
    )


def insert_vote(
    store: Store, cur: Any, approval_id: str, principal: str, *, decision: str, reason: str | None,
    action_hash: str, via: str, shown: str | None, at: str,
) -> None:  # fmt: skip
    """One principal's vote; the key ``(approval_id, principal)`` refuses a second."""
    store.execute(
        cur,
        "INSERT INTO approval_votes (approval_id, principal, decision, reason, action_hash, via, shown, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (approval_id, principal, decision, reason, action_hash, via, shown, at),
    )


def settle(
    store: Store, cur: Any, approval_id: str, *, status: str, decision_action: str | None, decision_hash: str,
    reason: str | None, by: str, via: str, at: str,
) -> None:  # fmt: skip
    """Record the decision on the (locked) request."""
    store.execute(
        cur,
        "UPDATE approvals SET status = ?, decision_action = ?, decision_hash = ?, reason = ?, decided_by = ?, "
        "decided_at = ?, via = ?, updated_at = ? WHERE id = ?",
        (status, decision_action, decision_hash, reason, by, at, via, at, approval_id),
    )


def cancel_pending(store: Store, cur: Any, ids: Sequence[str], *, reason: str, by: str, at: str) -> int:
    """Close those of ``ids`` still pending as ``cancelled``; returns how many were."""
    marks = ", ".join("?" for _ in ids)
    store.execute(
        cur,
        "UPDATE approvals SET status = 'cancelled', reason = ?, decided_by = ?, decided_at = ?, "
        f"via = 'run', updated_at = ? WHERE status = 'pending' AND id IN ({marks})",
        (reason, by, at, at, *ids),
    )
    return int(cur.rowcount)


def close_due(store: Store, cur: Any, approval_id: str, *, status: str, reason: str, by: str, now: str) -> bool:
    """Close a pending request whose timeout is at or before ``now`` (the store's clock)."""
    store.execute(
        cur,
        "UPDATE approvals SET status = ?, reason = ?, decided_by = ?, decided_at = ?, via = 'policy', updated_at = ? "
        "WHERE id = ? AND status = 'pending' AND timeout_at IS NOT NULL AND timeout_at <= ?",
        (status, reason, by, now, now, approval_id, now),
    )
    return bool(cur.rowcount)


def escalate(
    store: Store, cur: Any, approval_id: str, *, approvers: list[str], timeout_at: str | None, now: str
) -> bool:
    """Hand a pending request to new approvers with a new deadline."""
    store.execute(
        cur,
        "UPDATE approvals SET approvers = ?, timeout_at = ?, escalations = escalations + 1, updated_at = ? WHERE id = ? AND status = 'pending'",
        (json.dumps(approvers), timeout_at, now, approval_id),
    )
    return bool(cur.rowcount)


def set_roles(store: Store, cur: Any, principal: str, roles: Sequence[str], *, now: str) -> None:
    """Write ``principal``'s role names (creating the row), under its row lock."""
    store.execute(
        cur, "INSERT INTO principals (id, roles, created_at, updated_at) VALUES (?, '[]', ?, ?) ON CONFLICT (id) DO NOTHING",
        (principal, now, now),
    )  # fmt: skip
    store.execute(cur, f"SELECT roles FROM principals WHERE id = ?{store.for_update}", (principal,))
    store.execute(
        cur, "UPDATE principals SET roles = ?, updated_at = ? WHERE id = ?", (json.dumps(sorted(roles)), now, principal)
    )
