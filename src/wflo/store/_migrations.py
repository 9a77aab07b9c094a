"""Named, append-only schema migrations shared by both stores.

A migration is never edited once released: a change is a new entry at the end. Each entry
holds portable SQL (statements separated by ``;\\n``) and optional per-dialect statements (for
example the PostgreSQL trigger that refuses UPDATE and DELETE on events).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str
    dialect_sql: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def statements(self, dialect: str) -> list[str]:
        portable = [s.strip() for s in self.sql.split(";\n") if s.strip()]
        return portable + [s.strip() for s in self.dialect_sql.get(dialect, ())]


M001_INITIAL = Migration(
    "m001_initial",
    """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    parent_id TEXT,
    tenant TEXT,
    options TEXT,
    lease_owner TEXT,
    lease_expires_at TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    wake_at TEXT,
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX runs_claim ON runs (status, created_at);
CREATE INDEX runs_workflow ON runs (workflow, created_at);
CREATE INDEX runs_parent ON runs (parent_id);
CREATE TABLE events (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX events_at ON events (at);
CREATE TABLE chain_heads (
    chain TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL
)
""",
    {
        "postgresql": (
            """
CREATE OR REPLACE FUNCTION wflo_events_append_only() RETURNS trigger AS $$
BEGIN
    IF current_setting('wflo.prune', true) = 'on' AND TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'wflo events are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql""",
            """
CREATE TRIGGER wflo_events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION wflo_events_append_only()""",
        )
    },
)

M002_BUDGETS = Migration(
    "m002_budgets",
    """
CREATE TABLE budget_limits (
    scope TEXT PRIMARY KEY,
    limit_usd TEXT NOT NULL,
    period TEXT NOT NULL,
    max_reservation_usd TEXT,
    alerts TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE budget_usage (
    scope TEXT NOT NULL,
    period_start TEXT NOT NULL,
    limit_usd TEXT NOT NULL,
    spent_usd TEXT NOT NULL,
    reserved_usd TEXT NOT NULL,
    alerted TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (scope, period_start)
);
CREATE TABLE reservations (
    id TEXT PRIMARY KEY,
    run_id TEXT,
    scopes TEXT NOT NULL,
    amount_usd TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX reservations_expiry ON reservations (expires_at)
""",
)

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

M004_RATE_LIMITS = Migration(
    "m004_rate_limits",
    """
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)
""",
)

M005_PAYLOADS = Migration(
    "m005_payloads",
    """
CREATE TABLE payloads (
    run_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, call_id)
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

# Identity and access (issue 16): who holds which role where (and who granted it), people and
# service accounts, API tokens and browser sessions. Tokens and session ids are stored only as
# SHA-256 digests (they are 256-bit random values, so a slow hash adds nothing); ``prefix`` is
# the visible, non-secret start of a token.
M007_IDENTITY = Migration(
    "m007_identity_access",
    """
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    email TEXT,
    name TEXT,
    issuer TEXT,
    subject TEXT,
    groups TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    last_login_at TEXT
);
CREATE TABLE role_grants (
    principal TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    via TEXT NOT NULL,
    source TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    PRIMARY KEY (principal, role, scope)
);
CREATE INDEX role_grants_role ON role_grants (role);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    principal TEXT NOT NULL,
    prefix TEXT NOT NULL,
    digest TEXT NOT NULL,
    role TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    last_used_at TEXT
);
CREATE UNIQUE INDEX api_tokens_digest ON api_tokens (digest);
CREATE TABLE sessions (
    digest TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    csrf_digest TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT,
    remote TEXT
)
""",
)

MIGRATIONS: tuple[Migration, ...] = (
    M001_INITIAL,
    M002_BUDGETS,
    M003_APPROVALS,
    M004_RATE_LIMITS,
    M005_PAYLOADS,
    M006_APPROVALS_BIND,
    M007_IDENTITY,
)
SCHEMA_VERSION = len(MIGRATIONS)
