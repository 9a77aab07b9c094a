"""Named, append-only schema migrations shared by both stores.

A migration is never edited once released: a change is a new entry at the end. Each entry
holds portable SQL (statements separated by ``;\\n``) and optional per-dialect statements (for
example the PostgreSQL trigger that refuses UPDATE and DELETE on events).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str
    dialect_sql: dict[str, tuple[str, ...]] = field(default_factory=dict)
    then: Callable[[Any, Any], None] | None = None
    """Run after the statements, in the same transaction, as ``then(store, cur)``: a backfill
    whose arithmetic SQL cannot do on every store (exact decimal sums on SQLite)."""

    def statements(self, dialect: str) -> list[str]:
        portable = [s.strip() for s in self.sql.split(";\n") if s.strip()]
        return portable + [s.strip() for s in self.dialect_sql.get(dialect, ())]

    @classmethod
    def add_columns(cls, name: str, table: str, columns: Sequence[str]) -> Migration:
        """A migration adding nullable ``TEXT`` columns to ``table``, only those it lacks: a
        store set back to an earlier schema version re-runs every later migration, and
        SQLite's ``ADD COLUMN`` has no ``IF NOT EXISTS`` (PostgreSQL's is used there)."""

        def missing_only(store: Any, cur: Any) -> None:
            if store.dialect == "sqlite":
                cur.execute(f"SELECT name FROM pragma_table_info('{table}')")
                have = {row[0] for row in cur.fetchall()}
                for column in columns:
                    if column not in have:
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")

        pg = tuple(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {c} TEXT" for c in columns)
        return cls(name, "", dialect_sql={"postgresql": pg}, then=missing_only)


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

# Fewer index writes per run (issue 20): a run's insert and each change of its status (the
# row moves: no HOT update) write every index on ``runs`` whose condition the row meets.
# - ``runs_claim`` and ``runs_workflow`` are the leading columns of m010's ``runs_list_status``
#   and ``runs_list_workflow`` (which add ``id``): those answer every query they did, in the
#   same order, so they only cost writes. Dropped.
# - The parent, tenant and queue-start indexes serve only queries with ``parent_id = ?``,
#   ``tenant = ?`` or ``queue = ?`` (which imply the column is not NULL, so both databases use
#   a partial index for them), while most runs have no parent, tenant or queue: they now hold
#   only the runs that have one.
# - PostgreSQL's status counters (``wflo_run_counts``, m015): a change of status moves its two
#   counts in one upsert (rows in status order, as before: two changes never wait on each other
#   in a cycle) where it took an update and an upsert. The count of a status is the sum of its
#   shards (``run_counts`` is read only summed), so a shard's row may go below zero.
_PG_RUN_COUNTS_ONE_STATEMENT = """
CREATE OR REPLACE FUNCTION wflo_run_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_counts (status, shard, n) VALUES (NEW.status, hashtext(NEW.id) & 15, 1)
            ON CONFLICT (status, shard) DO UPDATE SET n = run_counts.n + 1;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE run_counts SET n = n - 1 WHERE status = OLD.status AND shard = hashtext(OLD.id) & 15;
    ELSIF NEW.status <> OLD.status THEN
        INSERT INTO run_counts AS c (status, shard, n)
        SELECT v.status, hashtext(NEW.id) & 15, v.n
          FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS v(status, n)
         ORDER BY v.status
            ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END
$$"""

M020_PGEMPTY_RUN_WRITES = Migration(
    "m020_pgempty_run_writes",
    """
DROP INDEX IF EXISTS runs_claim;
DROP INDEX IF EXISTS runs_workflow;
DROP INDEX IF EXISTS runs_parent;
CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
DROP INDEX IF EXISTS runs_list_tenant;
CREATE INDEX runs_list_tenant ON runs (tenant, created_at, id) WHERE tenant IS NOT NULL;
DROP INDEX IF EXISTS runs_queue_started;
CREATE INDEX runs_queue_started ON runs (queue, started_at) WHERE queue IS NOT NULL AND started_at IS NOT NULL
""",
    {"postgresql": (_PG_RUN_COUNTS_ONE_STATEMENT,)},
)


# Cheaper head moves on PostgreSQL (issue 20, measured): ``wflo_append`` names ``status`` in its
# UPDATE (``coalesce(p_status, status)``), so m015's ``AFTER ... UPDATE OF status`` trigger ran
# ``wflo_run_counts`` for every step, only for it to find the status unchanged (about 4 µs of
# the server's time per step). Split: inserts and deletes keep one trigger; updates have one
# whose WHEN compares the statuses, so a step's update no longer calls the function at all
# (SQLite's ``run_counts_update`` had its WHEN from the start). The function is unchanged.
M021_STEPCOST_STATUS_TRIGGER = Migration(
    "m021_stepcost_status_trigger",
    "",
    {
        "postgresql": (
            "DROP TRIGGER IF EXISTS wflo_run_counts ON runs",
            """
CREATE TRIGGER wflo_run_counts AFTER INSERT OR DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION wflo_run_counts()""",
            """
CREATE TRIGGER wflo_run_counts_status AFTER UPDATE OF status ON runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION wflo_run_counts()""",
        ),
    },
)


# Fewer index writes per step (issue 20, measured): a step's event (``call.completed``) went into
# both secondary indexes on ``events``, and the calls' events are nine in ten of all events.
# The (type, at) index is read by type only for the other types (budget alerts, the live feed's
# approvals); the calls' events are read by time (``events_at``: the journal's spend in a window,
# the reports) or all of them (metrics, a seq scan either way). So the index now holds every
# event but the calls': a step's commit writes one index page less (SQLite WAL frames per step
# 6.1 -> 4.7; PostgreSQL WAL records per append 5.1 -> 4.1), and the index is ~1/20 the size.
# SQLite uses a partial index only for a query whose WHERE holds the index's condition word for
# word: such queries add ``TYPE_INDEXED`` (PostgreSQL proves it from ``type = '...'`` alone).
M022_EVENTIDX_TYPE_PARTIAL = Migration(
    "m022_eventidx_type_partial",
    """
DROP INDEX IF EXISTS events_type_at;
CREATE INDEX events_type_at ON events (type, at) WHERE type NOT IN ('call.started', 'call.completed', 'call.failed', 'call.retry')
""",
)

TYPE_INDEXED = "type <> 'call.started' AND type <> 'call.completed' AND type <> 'call.failed' AND type <> 'call.retry'"
"""The condition of the events index by ``(type, at)`` (m022; on SQLite in this form since m024):
every type but the calls'. A query by one of those types names it in its WHERE, so SQLite uses
that index for it. Unqualified: in a join, the only table with a ``type`` column is ``events``."""


# A cheaper insert of every event on SQLite (issue 20, measured): m022's condition is ``type NOT
# IN (four types)``, and SQLite evaluates an IN list of more than two values through a temporary
# b-tree it builds again on every execution of the statement. So each INSERT INTO events built
# one (its two pages zeroed, a cursor opened, the four values inserted) to decide that a step's
# event stays out of the index: 31,600 of the 130,000 instructions of a step's SQL (callgrind,
# docs/benchmarks.md "sqlstep"). The same condition as four comparisons (``TYPE_INDEXED``) is
# evaluated in place. The same rows are in the index; PostgreSQL evaluates its ``<> ALL`` array
# without such a table and keeps m022's index (its planner proves either form from ``type = ...``).
M024_SQLSTEP_TYPE_COND = Migration(
    "m024_sqlstep_type_cond",
    "",
    {
        "sqlite": (
            "DROP INDEX IF EXISTS events_type_at",
            f"CREATE INDEX events_type_at ON events (type, at) WHERE {TYPE_INDEXED}",
        )
    },
)


# A step's append on PostgreSQL, leaner (issue 20, measured): a step moves its run's head and
# appends one event, nothing else of the run changes. ``wflo_append`` did that with its general
# UPDATE (a CASE for every column a run's end, a wait or a release changes, and ``status`` named,
# so the executor prepared the status trigger's WHEN for each row) and six arrays parsed and
# unnested for one event; the server spent about twice a raw insert's time on it. The store now
# sends such an append as one plain statement (``_STEP`` in ``_postgres``): the head's fenced
# UPDATE, the event's INSERT from that UPDATE's row (nothing is inserted when the fence fails),
# and this function, called only when the UPDATE found no run at that head under that owner, to
# raise the lost lease as ``wflo_append`` does (SQLSTATE WF001, the statement rolled back).
# ``wflo_append`` is unchanged and still makes every other append.
_PG_LEASE_LOST = """
CREATE OR REPLACE FUNCTION wflo_lease_lost(p_run text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'wflo: the lease of run % was lost', p_run USING ERRCODE = 'WF001';
END
$$"""

M025_PGSTEP_LEAN_STEP = Migration("m025_pgstep_lean_step", "", {"postgresql": (_PG_LEASE_LOST,)})


# A cheaper move of a run between two statuses on PostgreSQL (issue 20, measured: "pgempty" in
# docs/benchmarks.md): m020's upsert of the two counts took its rows from a VALUES list sorted
# by status (``ORDER BY``: a Sort node in the plan, run on every change of status, at every
# run's end). The function now writes the two rows in status order itself (one comparison),
# in the same one upsert, so the locks are still taken in status order (two changes never wait
# on each other in a cycle) and the counts are the same. About 8 µs of the server's time less
# per end. Inserts and deletes are as before.
_PG_RUN_COUNTS_ORDERED = """
CREATE OR REPLACE FUNCTION wflo_run_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_counts (status, shard, n) VALUES (NEW.status, hashtext(NEW.id) & 15, 1)
            ON CONFLICT (status, shard) DO UPDATE SET n = run_counts.n + 1;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE run_counts SET n = n - 1 WHERE status = OLD.status AND shard = hashtext(OLD.id) & 15;
    ELSIF OLD.status < NEW.status THEN
        INSERT INTO run_counts AS c (status, shard, n)
        VALUES (OLD.status, hashtext(NEW.id) & 15, -1), (NEW.status, hashtext(NEW.id) & 15, 1)
            ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSIF OLD.status > NEW.status THEN
        INSERT INTO run_counts AS c (status, shard, n)
        VALUES (NEW.status, hashtext(NEW.id) & 15, 1), (OLD.status, hashtext(NEW.id) & 15, -1)
            ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END
$$"""

M026_PGEMPTY_COUNT_MOVES = Migration("m026_pgempty_count_moves", "", {"postgresql": (_PG_RUN_COUNTS_ORDERED,)})


# A trusted publisher key vouches for the tool names listed in ``tools`` (comma-separated, as
# ``wflo tools trust KEY --tools a,b`` records them); NULL, as every row before this migration
# has, is a key trusted for any tool name.
M029_TOOL_TRUST_SCOPE = Migration.add_columns("m029_tool_trust_scope", "tool_trust", ("tools",))


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
        "wflo.cost._tables:M002_BUDGETS",
        "wflo.approvals._tables:M003_APPROVALS",
        "wflo.guards._tables:M004_RATE_LIMITS",
        "wflo.audit._tables:M005_PAYLOADS",
        "wflo.approvals._tables:M006_APPROVALS_BIND",
        M007_AUDIT_ROLES,
        "wflo.cost._tables:M008_UNKNOWN_OUTCOMES",
        M009_IDENTITY,
        M010_RUNS_LIST_INDEXES,
        M011_DECISIONS_EVENT_TYPE,
        M012_ADMIN,
        M013_TOOL_GRANTS,
        M014_REPLICAS_SIGNIN_STATE,
        M015_PERFSTORE,
        M016_QUEUES_CLAIM,
        "wflo.integrations._checkpoint_tables:M017_CKPT_BYTES",
        "wflo.cost._tables:M018_LEDGER_SPEND",
        "wflo.cost._tables:M019_SPEND_RUN",
        M020_PGEMPTY_RUN_WRITES,
        M021_STEPCOST_STATUS_TRIGGER,
        M022_EVENTIDX_TYPE_PARTIAL,
        "wflo.engine._tables:M023_WORKERS",
        M024_SQLSTEP_TYPE_COND,
        M025_PGSTEP_LEAN_STEP,
        M026_PGEMPTY_COUNT_MOVES,
        "wflo.auth._device:M027_DEVICE_REQUESTS",
        "wflo.auth._identities:M028_IDENTITY_DISABLED",
        M029_TOOL_TRUST_SCOPE,
    )
)
SCHEMA_VERSION = len(MIGRATIONS)
