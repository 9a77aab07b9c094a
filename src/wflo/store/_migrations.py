"""Named, append-only schema migrations shared by both stores.

A migration is never edited once released: a change is a new entry at the end. Each entry
holds portable SQL (statements separated by ``;\\n``) and optional per-dialect statements (for
example the PostgreSQL trigger that refuses UPDATE and DELETE on events).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload


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

M007_AUDIT_ROLES = Migration(
    "m007_store_audit_roles",
    "",
    {
        # The append-only trigger no longer trusts a setting any role can make: a DELETE
        # passes only when it runs as the table's owner with ``wflo.prune`` set, which in
        # practice means inside ``wflo_prune_chain`` (SECURITY DEFINER, owned by the owner,
        # executable only by the roles it is granted to: the auditor). The application role,
        # which does not own the table, cannot delete, update, truncate or disable anything.
        "postgresql": (
            """
CREATE OR REPLACE FUNCTION wflo_events_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('wflo.prune', true) = 'on'
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'wflo events are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql""",
            """
CREATE TRIGGER wflo_events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION wflo_events_append_only()""",
            """
CREATE OR REPLACE FUNCTION wflo_prune_chain(p_chain text, p_count bigint, p_head text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r record;
    n bigint;
BEGIN
    SELECT status, last_seq, last_hash INTO r FROM runs WHERE id = p_chain FOR UPDATE;
    IF NOT FOUND OR r.last_seq <> p_count OR r.last_hash <> p_head THEN
        RAISE EXCEPTION 'wflo prune: run % changed while it was being pruned', p_chain USING ERRCODE = 'WF001';
    END IF;
    IF r.status NOT IN ('succeeded', 'failed', 'cancelled', 'stopped') THEN
        RAISE EXCEPTION 'wflo prune: run % is not finished', p_chain USING ERRCODE = 'WF001';
    END IF;
    PERFORM set_config('wflo.prune', 'on', true);
    DELETE FROM events WHERE chain = p_chain AND seq <= p_count;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('wflo.prune', 'off', true);
    IF n <> p_count THEN
        RAISE EXCEPTION 'wflo prune: run % changed while it was being pruned', p_chain USING ERRCODE = 'WF001';
    END IF;
    DELETE FROM payloads WHERE run_id = p_chain;
    RETURN n;
END;
$$""",
            # Resolve names in this schema only: a caller's search_path must not point the
            # function at look-alike tables.
            """
DO $$ BEGIN
    EXECUTE format('ALTER FUNCTION wflo_prune_chain(text, bigint, text) SET search_path = %I, pg_temp',
                   current_schema());
END $$""",
            "REVOKE ALL ON FUNCTION wflo_prune_chain(text, bigint, text) FROM PUBLIC",
        )
    },
)

# The budget ledger's reserve and settle as one statement each on PostgreSQL (one round trip
# instead of six, and one statement in the journal's transaction instead of three). The same
# rules as the portable path in wflo/cost/_ledger.py, which SQLite uses; both are tested alike.
_PG_RESERVE = """
CREATE OR REPLACE FUNCTION wflo_reserve(
    p_id text, p_run text, p_call text, p_model text, p_names text[], p_extra jsonb,
    p_input numeric, p_out_price numeric, p_cap integer, p_min integer,
    p_day text, p_month text, p_now text, p_expires text
) RETURNS TABLE (status text, amount text, cap integer, clamped boolean, scopes text,
                 b_scope text, b_limit text, b_spent text, b_reserved text)
LANGUAGE plpgsql AS $$
DECLARE
    lim record;
    v_start text;
    v_spent numeric;
    v_reserved numeric;
    v_avail numeric;
    v_room numeric := NULL;
    v_needed numeric;
    v_cap integer := p_cap;
    v_clamped boolean := false;
    v_tokens numeric;
    v_keys text[] := '{}';
    v_starts text[] := '{}';
    v_reserveds numeric[] := '{}';
    v_scopes jsonb := '[]'::jsonb;
    b record;
    i integer;
BEGIN
    IF EXISTS (SELECT 1 FROM reservations r WHERE r.id = p_id) THEN
        -- The same reservation sent again after a lost connection: it is already held.
        RETURN QUERY SELECT 'ok'::text, r.amount_usd, p_cap, false, r.scopes, NULL::text, NULL::text, NULL::text, NULL::text
            FROM reservations r WHERE r.id = p_id;
        RETURN;
    END IF;
    FOR lim IN
        SELECT x.scope, x.limit_usd, x.period, x.max_res FROM (
            SELECT e->>'scope' AS scope, (e->>'limit')::numeric AS limit_usd, e->>'period' AS period,
                   (e->>'max_res')::numeric AS max_res
              FROM jsonb_array_elements(p_extra) e
            UNION ALL
            SELECT l.scope, l.limit_usd::numeric, l.period, l.max_reservation_usd::numeric
              FROM budget_limits l
             WHERE l.scope = ANY(p_names)
               AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_extra) e WHERE e->>'scope' = l.scope)
        ) x ORDER BY x.scope COLLATE "C"
    LOOP
        v_start := CASE lim.period WHEN 'day' THEN p_day WHEN 'month' THEN p_month ELSE '' END;
        SELECT u.spent_usd::numeric, u.reserved_usd::numeric INTO v_spent, v_reserved
          FROM budget_usage u WHERE u.scope = lim.scope AND u.period_start = v_start FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO budget_usage (scope, period_start, limit_usd, spent_usd, reserved_usd, alerted, updated_at)
                VALUES (lim.scope, v_start, trim_scale(lim.limit_usd)::text, '0', '0', '[]', p_now)
                ON CONFLICT (scope, period_start) DO NOTHING;
            SELECT u.spent_usd::numeric, u.reserved_usd::numeric INTO v_spent, v_reserved
              FROM budget_usage u WHERE u.scope = lim.scope AND u.period_start = v_start FOR UPDATE;
        END IF;
        v_avail := lim.limit_usd - v_spent - v_reserved;
        IF lim.max_res IS NOT NULL AND lim.max_res < v_avail THEN
            v_avail := lim.max_res;
        END IF;
        IF v_room IS NULL OR v_avail < v_room THEN
            v_room := v_avail;
            SELECT lim.scope AS scope, lim.limit_usd AS limit_usd, v_spent AS spent, v_reserved AS reserved INTO b;
        END IF;
        v_keys := v_keys || lim.scope;
        v_starts := v_starts || v_start;
        v_reserveds := v_reserveds || v_reserved;
        v_scopes := v_scopes || jsonb_build_array(jsonb_build_array(lim.scope, v_start));
    END LOOP;
    IF v_room IS NULL THEN
        RETURN QUERY SELECT 'none'::text, NULL::text, p_cap, false, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    v_needed := p_input + p_out_price * coalesce(p_cap, 0);
    IF v_needed > v_room THEN
        v_tokens := 0;
        IF p_out_price > 0 THEN
            v_tokens := greatest(floor((v_room - p_input) / p_out_price), 0);
        END IF;
        IF p_cap IS NOT NULL AND p_out_price > 0 AND v_tokens >= p_min THEN
            v_cap := v_tokens::integer;
            v_clamped := true;
            v_needed := p_input + p_out_price * v_cap;
        ELSE
            RETURN QUERY SELECT 'refused'::text, trim_scale(v_needed)::text, p_cap, false, NULL::text,
                b.scope, trim_scale(b.limit_usd)::text, trim_scale(b.spent)::text, trim_scale(b.reserved)::text;
            RETURN;
        END IF;
    END IF;
    FOR i IN 1 .. coalesce(array_length(v_keys, 1), 0) LOOP
        UPDATE budget_usage SET reserved_usd = trim_scale(v_reserveds[i] + v_needed)::text, updated_at = p_now
         WHERE scope = v_keys[i] AND period_start = v_starts[i];
    END LOOP;
    INSERT INTO reservations (id, run_id, scopes, amount_usd, expires_at, created_at, call_id, model)
        VALUES (p_id, p_run, v_scopes::text, trim_scale(v_needed)::text, p_expires, p_now, p_call, p_model);
    RETURN QUERY SELECT 'ok'::text, trim_scale(v_needed)::text, v_cap, v_clamped, v_scopes::text,
        NULL::text, NULL::text, NULL::text, NULL::text;
END
$$"""

_PG_SETTLE = """
CREATE OR REPLACE FUNCTION wflo_settle(p_id text, p_actual numeric, p_amount numeric, p_scopes text, p_now text)
RETURNS TABLE (scope text, percent integer, spent text, limit_usd text)
LANGUAGE plpgsql AS $$
DECLARE
    v_spend numeric := p_actual;
    v_release numeric := 0;
    v_prior text;
    s jsonb;
    u record;
    v_new numeric;
    v_alerted jsonb;
    v_pct integer;
BEGIN
    DELETE FROM reservations r WHERE r.id = p_id;
    IF FOUND THEN
        v_release := p_amount;
    ELSE
        SELECT bu.amount_usd INTO v_prior FROM budget_unknown bu WHERE bu.id = p_id AND bu.actual_usd IS NULL;
        IF FOUND THEN
            -- Charged at its reservation when it expired; the real cost is known now.
            UPDATE budget_unknown SET actual_usd = trim_scale(p_actual)::text, resolved_at = p_now WHERE id = p_id;
            v_spend := p_actual - v_prior::numeric;
        END IF;
    END IF;
    FOR s IN SELECT e FROM jsonb_array_elements(p_scopes::jsonb) e ORDER BY (e->>0) COLLATE "C", (e->>1) COLLATE "C" LOOP
        SELECT bu.limit_usd::numeric AS lim, bu.spent_usd::numeric AS spent, bu.reserved_usd::numeric AS reserved,
               bu.alerted::jsonb AS alerted, coalesce(l.alerts, '[50, 80, 100]')::jsonb AS alerts
          INTO u
          FROM budget_usage bu LEFT JOIN budget_limits l ON l.scope = bu.scope
         WHERE bu.scope = s->>0 AND bu.period_start = s->>1
           FOR UPDATE OF bu;
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        v_new := u.spent + v_spend;
        v_alerted := u.alerted;
        FOR v_pct IN SELECT a::integer FROM jsonb_array_elements_text(u.alerts) a LOOP
            IF NOT v_alerted @> to_jsonb(v_pct) AND u.lim > 0 AND v_new * 100 >= u.lim * v_pct THEN
                v_alerted := v_alerted || to_jsonb(v_pct);
                scope := s->>0; percent := v_pct; spent := trim_scale(v_new)::text; limit_usd := trim_scale(u.lim)::text;
                RETURN NEXT;
            END IF;
        END LOOP;
        UPDATE budget_usage bu SET spent_usd = trim_scale(v_new)::text,
               reserved_usd = trim_scale(greatest(u.reserved - v_release, 0))::text,
               alerted = (SELECT coalesce(jsonb_agg(x ORDER BY x::integer), '[]'::jsonb)::text
                            FROM jsonb_array_elements(v_alerted) x),
               updated_at = p_now
         WHERE bu.scope = s->>0 AND bu.period_start = s->>1;
    END LOOP;
END
$$"""

M008_UNKNOWN_OUTCOMES = Migration(
    "m008_budgetctx_unknown_outcomes",
    """
ALTER TABLE reservations ADD COLUMN call_id TEXT;
ALTER TABLE reservations ADD COLUMN model TEXT;
CREATE INDEX reservations_run ON reservations (run_id);
CREATE TABLE budget_unknown (
    id TEXT PRIMARY KEY,
    run_id TEXT,
    call_id TEXT,
    model TEXT,
    scopes TEXT NOT NULL,
    amount_usd TEXT NOT NULL,
    reason TEXT NOT NULL,
    actual_usd TEXT,
    recorded INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    resolved_at TEXT
);
CREATE INDEX budget_unknown_run ON budget_unknown (run_id)
""",
    {"postgresql": (_PG_RESERVE, _PG_SETTLE)},
)

# Identity and access (issue 16): who holds which role where (and who granted it), people and
# service accounts, API tokens and browser sessions. Tokens and session ids are stored only as
# SHA-256 digests (they are 256-bit random values, so a slow hash adds nothing); ``prefix`` is
# the visible, non-secret start of a token.
M009_IDENTITY = Migration(
    "m009_identity_access",
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

# The runs list (issue 17): newest first, optionally filtered by status, workflow or tenant,
# paged by keyset on (created_at, id). Each index ends with (created_at, id) so that a filtered
# page is one index range read in order, never a sort of every matching run.
M010_RUNS_LIST_INDEXES = Migration(
    "m010_runs_list_indexes",
    """
CREATE INDEX runs_list_created ON runs (created_at, id);
CREATE INDEX runs_list_status ON runs (status, created_at, id);
CREATE INDEX runs_list_workflow ON runs (workflow, created_at, id);
CREATE INDEX runs_list_tenant ON runs (tenant, created_at, id)
""",
)

# The control plane reads events by type in a time window (spend, budget alerts, checkpoints):
# without this index each such read scans every event of every run.
M011_DECISIONS_EVENT_TYPE = Migration(
    "m011_decisions_event_type",
    """
CREATE INDEX events_type_at ON events (type, at)
""",
)

# The server's operations (issue 17): ``Idempotency-Key`` answers kept per (principal, key) for
# 24 h, so a retried POST/PUT/DELETE is answered once; ``status`` is NULL while the first request
# runs. ``signin_codes`` holds the one-time first-start admin sign-in codes, as digests only.
M012_ADMIN = Migration(
    "m012_admin_idempotency",
    """
CREATE TABLE idempotency_keys (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    content_type TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
CREATE TABLE signin_codes (
    digest TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
)
""",
)

M013_TOOL_GRANTS = Migration(
    "m013_marketplace_tool_grants",
    """
CREATE TABLE tool_grants (
    tool TEXT NOT NULL,
    principal TEXT NOT NULL,
    approval TEXT,
    max_calls INTEGER,
    budget_usd TEXT,
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    PRIMARY KEY (tool, principal)
);
CREATE TABLE tool_trust (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    name TEXT NOT NULL,
    trusted_by TEXT NOT NULL,
    trusted_at TEXT NOT NULL
)
""",
)

# Several server processes behind a load balancer (issue 17) share the sign-in state that was
# in each process: an OIDC sign-in between the redirect and the callback (keyed by the SHA-256
# digest of ``state``, never the value itself), and the failed attempts per client address that
# the server's rate limits count (a sliding log: one row per attempt, epoch seconds on the
# store's clock). Both are short-lived; expired rows are swept as new ones arrive.
M014_REPLICAS_SIGNIN_STATE = Migration(
    "m014_replicas_signin_state",
    """
CREATE TABLE signin_pending (
    digest TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    next_path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX signin_pending_expires ON signin_pending (expires_at);
CREATE TABLE signin_attempts (
    key TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX signin_attempts_key_at ON signin_attempts (key, at);
CREATE INDEX signin_attempts_at ON signin_attempts (at)
""",
)

# Fewer round trips on PostgreSQL (issue 20): ``wflo_append`` is a run's fenced append in one
# statement: the head moves only if ``p_owner`` still holds the lease and the head is still
# ``p_head`` (else SQLSTATE WF001, which the store raises as ``LeaseLost``), the events are
# inserted from arrays, and waiting workers are told.
_PG_APPEND = """
CREATE OR REPLACE FUNCTION wflo_append(
    p_run text, p_head bigint, p_owner text, p_seq bigint, p_hash text, p_now text,
    p_status text, p_finish boolean, p_output text, p_error text, p_release boolean, p_wake_at text,
    p_channel text, p_seqs bigint[], p_types text[], p_ats text[], p_data text[], p_prev text[], p_hashes text[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_cancel integer;
BEGIN
    UPDATE runs SET last_seq = p_seq, last_hash = p_hash, updated_at = p_now,
           status = coalesce(p_status, status),
           output = CASE WHEN p_finish THEN p_output ELSE output END,
           error = CASE WHEN p_finish THEN p_error ELSE error END,
           finished_at = CASE WHEN p_finish THEN p_now ELSE finished_at END,
           wake_at = CASE WHEN p_finish THEN NULL
                          WHEN p_wake_at IS NULL THEN wake_at
                          WHEN wake_at IS NOT NULL AND wake_at < p_wake_at THEN wake_at
                          ELSE p_wake_at END,
           lease_owner = CASE WHEN p_finish OR p_release THEN NULL ELSE lease_owner END,
           lease_expires_at = CASE WHEN p_finish OR p_release THEN NULL ELSE lease_expires_at END
     WHERE id = p_run AND last_seq = p_head AND lease_owner IS NOT DISTINCT FROM p_owner
    RETURNING cancel_requested INTO v_cancel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'wflo: the lease of run % was lost', p_run USING ERRCODE = 'WF001';
    END IF;
    INSERT INTO events (chain, seq, type, at, data, prev_hash, hash)
    SELECT p_run, u.seq, u.type, u.at, u.data, u.prev, u.hash
      FROM unnest(p_seqs, p_types, p_ats, p_data, p_prev, p_hashes) AS u(seq, type, at, data, prev, hash);
    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_run);
    END IF;
    RETURN v_cancel;
END
$$"""

# Counting runs by status without reading every run: ``run_counts`` holds the number of runs
# in each status, kept by triggers on ``runs`` in the transaction that changes them. On
# PostgreSQL each status has 16 rows (a run counts in the row of its id's hash), so workers
# changing statuses at once rarely wait on the same row, and a change updates its two rows
# in status order, so two changes never wait on each other in a cycle.
_PG_RUN_COUNTS = """
CREATE OR REPLACE FUNCTION wflo_run_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_shard integer;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status = OLD.status THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        v_shard := hashtext(NEW.id) & 15;
        INSERT INTO run_counts (status, shard, n) VALUES (NEW.status, v_shard, 1)
            ON CONFLICT (status, shard) DO UPDATE SET n = run_counts.n + 1;
    ELSIF TG_OP = 'DELETE' THEN
        v_shard := hashtext(OLD.id) & 15;
        UPDATE run_counts SET n = n - 1 WHERE status = OLD.status AND shard = v_shard;
    ELSE
        v_shard := hashtext(NEW.id) & 15;
        IF OLD.status < NEW.status THEN
            UPDATE run_counts SET n = n - 1 WHERE status = OLD.status AND shard = v_shard;
        END IF;
        INSERT INTO run_counts (status, shard, n) VALUES (NEW.status, v_shard, 1)
            ON CONFLICT (status, shard) DO UPDATE SET n = run_counts.n + 1;
        IF OLD.status > NEW.status THEN
            UPDATE run_counts SET n = n - 1 WHERE status = OLD.status AND shard = v_shard;
        END IF;
    END IF;
    RETURN NULL;
END
$$"""

# A lease check that raises instead of answering (SQLSTATE WF001, raised by the store as
# ``LeaseLost``): a fenced write then needs no answer before its commit and is pipelined.
_PG_FENCE = """
CREATE OR REPLACE FUNCTION wflo_fence(p_run text, p_owner text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs WHERE id = p_run AND lease_owner = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'wflo: the lease of run % was lost', p_run USING ERRCODE = 'WF001';
    END IF;
END
$$"""

M015_PERFSTORE = Migration(
    "m015_perfstore_indexes",
    """
CREATE TABLE run_counts (
    status TEXT NOT NULL,
    shard INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (status, shard)
);
INSERT INTO run_counts (status, shard, n) SELECT status, 0, COUNT(*) FROM runs GROUP BY status
""",
    {
        "postgresql": (
            _PG_APPEND,
            _PG_FENCE,
            _PG_RUN_COUNTS,
            # Every status change updates a counter row: room on each page for the new row
            # versions (HOT updates), and a vacuum after every thousand dead ones, so the
            # table stays a few pages however many runs pass through it.
            "ALTER TABLE run_counts SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, "
            "autovacuum_vacuum_threshold = 1000, autovacuum_analyze_threshold = 1000)",
            """
CREATE TRIGGER wflo_run_counts AFTER INSERT OR DELETE OR UPDATE OF status ON runs
    FOR EACH ROW EXECUTE FUNCTION wflo_run_counts()""",
            # A run by id prefix (the CLI's short ids): LIKE 'prefix%' uses this index
            # whatever the database's collation.
            "CREATE INDEX runs_perfstore_id_prefix ON runs (id text_pattern_ops)",
        ),
        "sqlite": (
            """
CREATE TRIGGER run_counts_insert AFTER INSERT ON runs BEGIN
    INSERT INTO run_counts (status, shard, n) VALUES (NEW.status, 0, 1)
        ON CONFLICT (status, shard) DO UPDATE SET n = n + 1;
END""",
            """
CREATE TRIGGER run_counts_update AFTER UPDATE OF status ON runs WHEN NEW.status <> OLD.status BEGIN
    UPDATE run_counts SET n = n - 1 WHERE status = OLD.status AND shard = 0;
    INSERT INTO run_counts (status, shard, n) VALUES (NEW.status, 0, 1)
        ON CONFLICT (status, shard) DO UPDATE SET n = n + 1;
END""",
            """
CREATE TRIGGER run_counts_delete AFTER DELETE ON runs BEGIN
    UPDATE run_counts SET n = n - 1 WHERE status = OLD.status AND shard = 0;
END""",
        ),
    },
)

# Queues and claiming (issue 20): a run may belong to a named queue, with a priority and a
# partition key; ``started_at`` is when a worker first took it (rate limits, enqueue→start).
# Partial indexes hold only active runs, so claiming costs the same with a million finished
# runs as with a thousand.
M016_QUEUES_CLAIM = Migration(
    "m016_queues_claim",
    """
ALTER TABLE runs ADD COLUMN queue TEXT;
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN partition_key TEXT;
ALTER TABLE runs ADD COLUMN started_at TEXT;
CREATE INDEX runs_queued ON runs (queue, priority DESC, created_at) WHERE status = 'queued';
CREATE INDEX runs_running ON runs (queue, partition_key) WHERE status = 'running';
CREATE INDEX runs_waiting ON runs (wake_at) WHERE status = 'waiting';
CREATE INDEX runs_queue_started ON runs (queue, started_at) WHERE started_at IS NOT NULL
""",
)


class _Migrations(Sequence[Migration]):
    """The one ordered list of migrations, some of them kept by the package owning their tables.

    A domain (the ledger in ``wflo.cost._tables``, approvals in ``wflo.approvals._tables``, …)
    keeps its tables' DDL next to the queries on them; the list names such a migration as
    ``"module:NAME"`` and imports it on first use, so the store imports no package above it
    (the domains import the store) and the order of every migration is still decided here.
    """

    def __init__(self, entries: tuple[Migration | str, ...]) -> None:
        self._entries = entries
        self._resolved: tuple[Migration, ...] | None = None

    def _all(self) -> tuple[Migration, ...]:
        if self._resolved is None:
            resolved = []
            for entry in self._entries:
                if isinstance(entry, str):
                    module, _, name = entry.partition(":")
                    entry = getattr(importlib.import_module(module), name)
                    assert isinstance(entry, Migration), name
                resolved.append(entry)
            self._resolved = tuple(resolved)
        return self._resolved

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Migration: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Migration, ...]: ...
    def __getitem__(self, index: int | slice) -> Migration | tuple[Migration, ...]:
        return self._all()[index]

    def __repr__(self) -> str:
        return f"<wflo migrations: {len(self)}>"


MIGRATIONS: Sequence[Migration] = _Migrations(
    (
        M001_INITIAL,
        M002_BUDGETS,
        M003_APPROVALS,
        M004_RATE_LIMITS,
        M005_PAYLOADS,
        M006_APPROVALS_BIND,
        M007_AUDIT_ROLES,
        M008_UNKNOWN_OUTCOMES,
        M009_IDENTITY,
        M010_RUNS_LIST_INDEXES,
        M011_DECISIONS_EVENT_TYPE,
        M012_ADMIN,
        M013_TOOL_GRANTS,
        M014_REPLICAS_SIGNIN_STATE,
        M015_PERFSTORE,
        M016_QUEUES_CLAIM,
    )
)
SCHEMA_VERSION = len(MIGRATIONS)
