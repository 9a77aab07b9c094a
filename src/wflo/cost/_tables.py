"""The ledger's tables: their DDL and every query on them.

``budget_limits`` (a limit per scope), ``budget_usage`` (spent and reserved per scope and
period), ``reservations`` (money held for calls in flight), ``budget_unknown`` (calls charged
at their reservation because their outcome was lost) and ``ledger_spend`` (what was charged,
per store-clock hour, run and model: the book the costs API and ``wflo costs`` read).

The migrations that created the first four were released in the store's list and are kept
here verbatim (same names, same SQL); ``wflo.store._migrations.MIGRATIONS`` still decides the
order of every migration. Everything here goes through the store's public interface
(``store.read``, ``store.execute`` on a cursor the store handed to an op, ``store.now``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from ..store import Migration, Store

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

# The spend book (issue 20): what the ledger charged, per hour of the store's clock, run and
# model, written in the transaction that charges it, so the costs API sums a few rows per run
# instead of every call's event. ``budget_unknown.spend_hour`` is the hour an estimate was
# booked in: a real cost that arrives later corrects that row rather than counting twice.
# The book is filled from the journal here (the same rules as ``wflo.cost._spend.charges``),
# so an upgraded store reports the totals it reported before.
_PG_BOOK = """
CREATE OR REPLACE FUNCTION wflo_book(
    p_run text, p_model text, p_hour text, p_calls integer, p_cost numeric, p_est numeric,
    p_in bigint, p_out bigint
) RETURNS void
LANGUAGE sql AS $$
INSERT INTO ledger_spend (hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd,
                          input_tokens, output_tokens)
SELECT coalesce(p_hour, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":00"')),
       r.id, p_model, r.workflow, r.tenant, p_calls, trim_scale(p_cost)::text, trim_scale(p_est)::text, p_in, p_out
  FROM runs r WHERE r.id = p_run
ON CONFLICT (hour, run_id, model) DO UPDATE SET
    calls = ledger_spend.calls + EXCLUDED.calls,
    cost_usd = trim_scale(ledger_spend.cost_usd::numeric + EXCLUDED.cost_usd::numeric)::text,
    estimated_usd = trim_scale(ledger_spend.estimated_usd::numeric + EXCLUDED.estimated_usd::numeric)::text,
    input_tokens = ledger_spend.input_tokens + EXCLUDED.input_tokens,
    output_tokens = ledger_spend.output_tokens + EXCLUDED.output_tokens
$$"""

# ``wflo_settle`` and the booking of the charge in one statement: the reservation (or the
# estimate a lost call was charged at) is locked first, so an expiry running at the same time
# either charged it before (then this corrects the estimate) or finds it settled (and charges
# nothing). Locks are taken in the ledger's order: reservation, usage rows, then the book.
_PG_SETTLE_SPEND = """
CREATE OR REPLACE FUNCTION wflo_settle_spend(
    p_id text, p_actual numeric, p_amount numeric, p_scopes text, p_now text,
    p_book boolean, p_run text, p_model text, p_estimated boolean, p_in bigint, p_out bigint
) RETURNS TABLE (scope text, percent integer, spent text, limit_usd text)
LANGUAGE plpgsql AS $$
DECLARE
    v_held boolean;
    v_prior text;
    v_hour text;
    v_estimate boolean := false;
BEGIN
    PERFORM 1 FROM reservations r WHERE r.id = p_id FOR UPDATE;
    v_held := FOUND;
    IF NOT v_held THEN
        SELECT bu.amount_usd, bu.spend_hour INTO v_prior, v_hour
          FROM budget_unknown bu WHERE bu.id = p_id AND bu.actual_usd IS NULL FOR UPDATE;
        v_estimate := FOUND;
    END IF;
    RETURN QUERY SELECT * FROM wflo_settle(p_id, p_actual, p_amount, p_scopes, p_now);
    IF v_estimate THEN
        PERFORM wflo_book(p_run, p_model, v_hour, CASE WHEN p_book THEN 0 ELSE -1 END, p_actual - v_prior::numeric,
                          CASE WHEN p_estimated THEN p_actual ELSE 0 END - v_prior::numeric, p_in, p_out);
    ELSIF p_book THEN
        PERFORM wflo_book(p_run, p_model, NULL, 1, p_actual, CASE WHEN p_estimated THEN p_actual ELSE 0 END,
                          p_in, p_out);
    END IF;
END
$$"""


def _backfill_spend(store: Store, cur: Any) -> None:
    """Book what the journal holds (calls and charged estimates) in the hour it was recorded."""
    from ._spend import charge_of

    totals: dict[tuple[str, str, str], list[Any]] = {}

    def add(hour: str, run_id: str, model: str, workflow: str, tenant: str | None, usd: Decimal, est: bool,
            tokens_in: int, tokens_out: int) -> None:  # fmt: skip
        row = totals.setdefault((hour, run_id, model), [workflow, tenant, 0, Decimal(0), Decimal(0), 0, 0])
        row[2] += 1
        row[3] += usd
        row[4] += usd if est else 0
        row[5] += tokens_in
        row[6] += tokens_out

    store.execute(cur, JOURNAL_EVENTS.format(fields="e.data", where=""), ())
    while batch := cur.fetchmany(1000):
        for at, data, workflow, tenant, run_id in batch:
            c = charge_of(at, data, workflow, tenant, run_id)
            if c is not None:
                add(hour_of(c.at), c.run_id, c.model, c.workflow, c.tenant, c.usd, c.estimated,
                    c.input_tokens, c.output_tokens)  # fmt: skip
    store.execute(cur, JOURNAL_LOST.format(where=""), ())
    lost = cur.fetchall()
    for _, at, model, amount, workflow, tenant, run_id in lost:
        add(hour_of(at), run_id, str(model or "?"), workflow, tenant, _dec(amount), True, 0, 0)
    for res_id, at, *_ in lost:
        store.execute(cur, "UPDATE budget_unknown SET spend_hour = ? WHERE id = ?", (hour_of(at), res_id))
    rows = [
        (hour, run_id, model, workflow, tenant, calls, _text(usd), _text(est), tin, tout)
        for (hour, run_id, model), (workflow, tenant, calls, usd, est, tin, tout) in totals.items()
    ]
    insert = f"INSERT INTO ledger_spend ({SPEND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    for at in range(0, len(rows), 1000):
        cur.executemany(insert.replace("?", store.placeholder), rows[at : at + 1000])


M018_LEDGER_SPEND = Migration(
    "m018_ledger_spend",
    """
CREATE TABLE ledger_spend (
    hour TEXT NOT NULL,
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    workflow TEXT NOT NULL,
    tenant TEXT,
    calls BIGINT NOT NULL,
    cost_usd TEXT NOT NULL,
    estimated_usd TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    PRIMARY KEY (hour, run_id, model)
);
CREATE INDEX ledger_spend_tenant ON ledger_spend (tenant, hour);
ALTER TABLE budget_unknown ADD COLUMN spend_hour TEXT
""",
    {"postgresql": (_PG_BOOK, _PG_SETTLE_SPEND)},
    then=_backfill_spend,
)


# The runs list and a run's page read each run's total from the book: by run, not by hour.
M019_SPEND_RUN = Migration(
    "m019_spenduse_ledger_spend_run",
    """
CREATE INDEX ledger_spend_run ON ledger_spend (run_id)
""",
)


def _text(amount: Decimal) -> str:
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except ArithmeticError:
        return Decimal(0)


def hour_of(at: str) -> str:
    """The hour bucket (``2026-11-29T13:00``) of a time in the store's text form."""
    return at[:13] + ":00"


def store_hour(store: Store, cur: Any) -> str:
    """This hour by the store's clock, read in ``cur``'s transaction (never the writer's)."""
    return hour_of(store.now(cur=cur))


# --------------------------------------------------------------------------- limits
LIMIT_COLUMNS = "scope, limit_usd, period, max_reservation_usd, alerts"


def replace_limit(store: Store, cur: Any, scope: str, row: tuple[Any, ...], period_start: str) -> None:
    """Set ``scope``'s limit (``row``: limit, period, max reservation, alerts, at, by) and
    the limit its current period's usage row is judged against."""
    store.execute(cur, "DELETE FROM budget_limits WHERE scope = ?", (scope,))
    store.execute(
        cur,
        "INSERT INTO budget_limits (scope, limit_usd, period, max_reservation_usd, alerts, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (scope, *row),
    )
    store.execute(
        cur,
        "UPDATE budget_usage SET limit_usd = ? WHERE scope = ? AND period_start = ?",
        (row[0], scope, period_start),
    )


def delete_limit(store: Store, cur: Any, scope: str) -> None:
    store.execute(cur, "DELETE FROM budget_limits WHERE scope = ?", (scope,))


def read_limit(store: Store, scope: str) -> list[tuple[Any, ...]]:
    return store.read(f"SELECT {LIMIT_COLUMNS} FROM budget_limits WHERE scope = ?", (scope,))


def read_limits(store: Store) -> list[tuple[Any, ...]]:
    return store.read(f"SELECT {LIMIT_COLUMNS} FROM budget_limits ORDER BY scope")


def limits_named(store: Store, cur: Any, names: Sequence[str]) -> list[tuple[Any, ...]]:
    """The limits of ``names``, read in ``cur``'s transaction."""
    store.execute(
        cur, f"SELECT {LIMIT_COLUMNS} FROM budget_limits WHERE scope IN ({', '.join('?' * len(names))})", names
    )
    return list(cur.fetchall())


def count_limits(store: Store, names: Sequence[str]) -> int:
    rows = store.read(f"SELECT COUNT(*) FROM budget_limits WHERE scope IN ({', '.join('?' * len(names))})", names)
    return int(rows[0][0]) if rows else 0


def limit_records(store: Store) -> list[tuple[Any, ...]]:
    """``(scope, limit, period, updated_at, updated_by)`` of every limit, by scope, as stored."""
    return store.read("SELECT scope, limit_usd, period, updated_at, updated_by FROM budget_limits ORDER BY scope")


# --------------------------------------------------------------------------- usage
def usage_records(store: Store, until: str | None = None) -> list[tuple[Any, ...]]:
    """``(scope, period_start, limit, spent, reserved)`` of every period of every scope, as stored;
    ``until``: only the periods that start before it."""
    if until is None:
        return store.read(
            "SELECT scope, period_start, limit_usd, spent_usd, reserved_usd FROM budget_usage "
            "ORDER BY scope, period_start"
        )
    return store.read(
        "SELECT scope, period_start, limit_usd, spent_usd, reserved_usd FROM budget_usage WHERE period_start < ? "
        "ORDER BY scope, period_start",
        (until,),
    )


def usage_alerted(store: Store) -> list[tuple[Any, ...]]:
    """``(scope, period_start, alerted)`` of every period: the thresholds already announced (JSON text)."""
    return store.read("SELECT scope, period_start, alerted FROM budget_usage")


def scope_periods(store: Store, scope: str, limit: int) -> list[tuple[Any, ...]]:
    """``(period_start, limit, spent, reserved, alerted)`` of a scope's ``limit`` newest periods."""
    return store.read(
        "SELECT period_start, limit_usd, spent_usd, reserved_usd, alerted FROM budget_usage WHERE scope = ? "
        "ORDER BY period_start DESC LIMIT ?",
        (scope, limit),
    )


def read_usage(store: Store, scope: str, period_start: str) -> list[tuple[Any, ...]]:
    """``(spent, reserved)`` of a scope's period, if it has a row."""
    return store.read(
        "SELECT spent_usd, reserved_usd FROM budget_usage WHERE scope = ? AND period_start = ?", (scope, period_start)
    )


def read_scope_usage(store: Store, scope: str, period_start: str) -> list[tuple[Any, ...]]:
    """``(limit, spent, reserved)`` of a scope's period, if it has a row."""
    return store.read(
        "SELECT limit_usd, spent_usd, reserved_usd FROM budget_usage WHERE scope = ? AND period_start = ?",
        (scope, period_start),
    )


def lock_usage(store: Store, cur: Any, scope: str, period_start: str, limit: str, now: str) -> tuple[Any, Any]:
    """``(spent, reserved)`` of a scope's period, its row locked (created at zero if new)."""
    sql = f"SELECT spent_usd, reserved_usd FROM budget_usage WHERE scope = ? AND period_start = ?{store.for_update}"
    store.execute(cur, sql, (scope, period_start))
    row = cur.fetchone()
    if row is None:
        store.execute(
            cur,
            "INSERT INTO budget_usage (scope, period_start, limit_usd, spent_usd, reserved_usd, alerted, updated_at) "
            "VALUES (?, ?, ?, '0', '0', '[]', ?) ON CONFLICT (scope, period_start) DO NOTHING",
            (scope, period_start, limit, now),
        )
        store.execute(cur, sql, (scope, period_start))
        row = cur.fetchone()
    return row[0], row[1]


def hold(store: Store, cur: Any, scope: str, period_start: str, reserved: str, now: str) -> None:
    store.execute(
        cur,
        "UPDATE budget_usage SET reserved_usd = ?, updated_at = ? WHERE scope = ? AND period_start = ?",
        (reserved, now, scope, period_start),
    )


def lock_usage_alerts(store: Store, cur: Any, scope: str, period_start: str) -> tuple[Any, ...] | None:
    """``(limit, spent, reserved, alerted, the limit's alerts)`` of a period, its row locked."""
    lock = " FOR UPDATE OF u" if store.for_update else ""
    store.execute(
        cur,
        f"SELECT u.limit_usd, u.spent_usd, u.reserved_usd, u.alerted, l.alerts FROM budget_usage u "
        f"LEFT JOIN budget_limits l ON l.scope = u.scope WHERE u.scope = ? AND u.period_start = ?{lock}",
        (scope, period_start),
    )
    row = cur.fetchone()
    return None if row is None else tuple(row)


def update_usage(
    store: Store, cur: Any, scope: str, period_start: str, spent: str, reserved: str, alerted: str, now: str
) -> None:
    store.execute(
        cur,
        "UPDATE budget_usage SET spent_usd = ?, reserved_usd = ?, alerted = ?, updated_at = ? WHERE scope = ? AND period_start = ?",
        (spent, reserved, alerted, now, scope, period_start),
    )


# --------------------------------------------------------------------------- reservations
def insert_reservation(store: Store, cur: Any, row: tuple[Any, ...]) -> None:
    """``row``: id, run, scopes (JSON), amount, expires, created, call, model."""
    store.execute(
        cur,
        "INSERT INTO reservations (id, run_id, scopes, amount_usd, expires_at, created_at, call_id, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )


def delete_reservation(store: Store, cur: Any, res_id: str) -> bool:
    """Remove a held reservation; whether it was still held."""
    store.execute(cur, "DELETE FROM reservations WHERE id = ?", (res_id,))
    return bool(cur.rowcount or 0)


def stale_reservations(store: Store, cur: Any, now: str) -> list[tuple[Any, ...]]:
    """``(id, run, call, model, scopes, amount)`` of every reservation past its expiry."""
    store.execute(
        cur, "SELECT id, run_id, call_id, model, scopes, amount_usd FROM reservations WHERE expires_at < ?", (now,)
    )
    return list(cur.fetchall())


def count_reservations(store: Store) -> int:
    return int(store.read("SELECT COUNT(*) FROM reservations")[0][0])


# --------------------------------------------------------------------------- unknown outcomes
def insert_unknown(
    store: Store, cur: Any, row: tuple[Any, ...], reason: str, recorded: int, now: str, hour: str
) -> None:
    """An estimate: ``row`` is id, run, call, model, scopes (JSON), amount; ``hour`` the
    spend book's hour it is booked in."""
    store.execute(
        cur,
        "INSERT INTO budget_unknown (id, run_id, call_id, model, scopes, amount_usd, reason, recorded, created_at, spend_hour) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*row, reason, recorded, now, hour),
    )


def open_estimate(store: Store, cur: Any, res_id: str) -> tuple[Any, Any] | None:
    """``(amount, booked hour)`` of an estimate whose real cost is not known yet."""
    store.execute(
        cur, "SELECT amount_usd, spend_hour FROM budget_unknown WHERE id = ? AND actual_usd IS NULL", (res_id,)
    )
    row = cur.fetchone()
    return None if row is None else (row[0], row[1])


def resolve_estimate(store: Store, cur: Any, res_id: str, actual: str, now: str) -> None:
    store.execute(cur, "UPDATE budget_unknown SET actual_usd = ?, resolved_at = ? WHERE id = ?", (actual, now, res_id))


def mark_recorded(store: Store, cur: Any, res_id: str) -> None:
    store.execute(cur, "UPDATE budget_unknown SET recorded = 1 WHERE id = ?", (res_id,))


def lost_calls(store: Store, run_id: str) -> list[tuple[Any, ...]]:
    """``(id, run, call, model, scopes, amount, state)`` of the run's calls still held, or
    expired and not yet on its journal (``state``: ``held`` or the estimate's reason)."""
    return store.read(*lost_calls_read(run_id))


def lost_calls_read(run_id: str) -> tuple[str, tuple[str, str]]:
    """:func:`lost_calls`'s read as ``(sql, params)`` (a woken run sends it with its claim)."""
    return (
        "SELECT id, run_id, call_id, model, scopes, amount_usd, 'held' FROM reservations WHERE run_id = ? "
        "UNION ALL SELECT id, run_id, call_id, model, scopes, amount_usd, reason FROM budget_unknown "
        "WHERE run_id = ? AND recorded = 0 AND actual_usd IS NULL",
        (run_id, run_id),
    )


def unknown_outcomes(store: Store, run_id: str | None) -> list[tuple[Any, ...]]:
    sql = "SELECT id, run_id, call_id, model, amount_usd, reason, actual_usd, recorded, created_at FROM budget_unknown"
    return store.read(
        sql + (" WHERE run_id = ?" if run_id else "") + " ORDER BY created_at", (run_id,) if run_id else ()
    )


# --------------------------------------------------------------------------- PostgreSQL in one statement
def pg_reserve(store: Store, params: Sequence[Any], ttl_seconds: float) -> tuple[Any, ...]:
    """``wflo_reserve`` (migration m008): one round trip, committed on its own.

    The day and month of a limit's period, the reservation's time and its expiry are the
    database's clock (one ``clock_timestamp()``, in UTC), never the worker's: a worker whose
    clock runs a day ahead must not reserve against tomorrow's fresh budget, nor one whose
    clock runs behind set an expiry that has already passed for everyone else."""
    stamp = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""  # the store's text form of a time (``now_iso``)
    rows = store.read(
        "SELECT r.* FROM (SELECT clock_timestamp() AT TIME ZONE 'UTC' AS t) c, LATERAL wflo_reserve("
        "?, ?, ?, ?, ?::text[], ?::jsonb, ?::numeric, ?::numeric, ?, ?, to_char(c.t, 'YYYY-MM-DD'), "
        f"to_char(c.t, 'YYYY-MM'), to_char(c.t, {stamp}), to_char(c.t + make_interval(secs => ?), {stamp})) r",
        (*params, float(ttl_seconds)),
    )
    return tuple(rows[0])


def pg_settle(store: Store, cur: Any, params: Sequence[Any]) -> None:
    """``wflo_settle`` (its answer, the alert thresholds crossed, is left on ``cur``)."""
    store.execute(cur, "SELECT * FROM wflo_settle(?, ?::numeric, ?::numeric, ?, ?)", params)


def pg_settle_spend(store: Store, cur: Any, params: Sequence[Any]) -> None:
    """``wflo_settle`` and the booking of the charge in the spend book, one statement (m017)."""
    store.execute(
        cur,
        "SELECT * FROM wflo_settle_spend(?, ?::numeric, ?::numeric, ?, ?, ?, ?, ?, ?, ?::bigint, ?::bigint)",
        params,
    )


# --------------------------------------------------------------------------- the spend book
SPEND_COLUMNS = "hour, run_id, model, workflow, tenant, calls, cost_usd, estimated_usd, input_tokens, output_tokens"


def book(
    store: Store,
    cur: Any,
    run_id: str | None,
    model: str,
    *,
    calls: int,
    usd: Decimal,
    estimated: Decimal,
    input_tokens: int = 0,
    output_tokens: int = 0,
    hour: str | None = None,
) -> None:
    """Add a charge (or a correction: ``calls`` 0, amounts may be negative) to the row of
    ``hour`` (default: now by the store's clock), ``run_id`` and ``model``. A charge outside
    any run is not booked (no journal holds it either)."""
    if run_id is None:
        return
    if store.dialect == "postgresql":
        # One upsert: concurrent writers of one row add to it in turn (ON CONFLICT locks it).
        store.execute(
            cur,
            "SELECT wflo_book(?::text, ?::text, ?::text, ?::integer, ?::numeric, ?::numeric, ?::bigint, ?::bigint)",
            (run_id, model, hour, calls, usd, estimated, input_tokens, output_tokens),
        )
        return
    # SQLite has no exact decimal arithmetic; its one writer at a time makes read-then-write safe.
    store.execute(cur, "SELECT workflow, tenant FROM runs WHERE id = ?", (run_id,))
    run = cur.fetchone()
    if run is None:
        return
    hour = hour or store_hour(store, cur)
    key = (hour, run_id, model)
    store.execute(
        cur,
        "SELECT calls, cost_usd, estimated_usd, input_tokens, output_tokens FROM ledger_spend "
        "WHERE hour = ? AND run_id = ? AND model = ?",
        key,
    )
    row = cur.fetchone()
    if row is None:
        store.execute(
            cur,
            f"INSERT INTO ledger_spend ({SPEND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, run[0], run[1], calls, _text(usd), _text(estimated), input_tokens, output_tokens),
        )
        return
    store.execute(
        cur,
        "UPDATE ledger_spend SET calls = ?, cost_usd = ?, estimated_usd = ?, input_tokens = ?, output_tokens = ? "
        "WHERE hour = ? AND run_id = ? AND model = ?",
        (
            int(row[0]) + calls, _text(_dec(row[1]) + usd), _text(_dec(row[2]) + estimated),
            int(row[3]) + input_tokens, int(row[4]) + output_tokens, *key,
        ),
    )  # fmt: skip


_GROUP_COLUMNS = {
    "model": "model", "workflow": "workflow", "tenant": "coalesce(tenant, '-')", "day": "substr(hour, 1, 10)",
    "hour": "hour", "run": "run_id",
}  # fmt: skip


def spend_groups(
    store: Store,
    keys: Sequence[str],
    lo: str | None,
    hi: str | None,
    tenant: str | None,
    runs: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """The book summed per ``keys`` (groupings: ``model``, ``workflow``, ``tenant``, ``day``,
    ``hour``, ``run``) over hours in ``[lo, hi)``, of ``tenant``'s runs if given (and of
    ``runs`` only, if given): rows of the keys' values, then calls, cost, estimated (exact
    ``Decimal``), input and output tokens."""
    where, params = [], []
    for cond, value in (("hour >= ?", lo), ("hour < ?", hi), ("tenant = ?", tenant)):
        if value is not None:
            where.append(cond)
            params.append(value)
    if runs is not None:
        where.append(f"run_id IN ({', '.join('?' * len(runs))})" if runs else "1 = 0")
        params.extend(runs)
    cols = [_GROUP_COLUMNS[k] for k in keys]
    if store.dialect == "postgresql":
        money = "sum(cost_usd::numeric), sum(estimated_usd::numeric)"
    else:  # SQLite sums text as floats: the exact sum is made here from the amounts themselves
        money = "group_concat(cost_usd, ','), group_concat(estimated_usd, ',')"
    sql = (
        f"SELECT {', '.join(cols)}, sum(calls), {money}, sum(input_tokens), sum(output_tokens) FROM ledger_spend"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" GROUP BY {', '.join(cols)}"
    )
    n = len(keys)
    out = []
    for row in store.read(sql, params):
        cost, est = row[n + 1], row[n + 2]
        if isinstance(cost, str):
            cost, est = sum(map(Decimal, cost.split(","))), sum(map(Decimal, est.split(",")))
        out.append((*row[:n], int(row[n]), Decimal(cost), Decimal(est), int(row[n + 3]), int(row[n + 4])))
    return out


def run_totals(store: Store, run_ids: Sequence[str]) -> dict[str, Decimal]:
    """Each run's booked spend (exact), for the runs in ``run_ids`` that spent anything."""
    # SQLite sums text as floats: the exact sum is made here from the amounts themselves.
    money = "sum(cost_usd::numeric)" if store.dialect == "postgresql" else "group_concat(cost_usd, ',')"
    out: dict[str, Decimal] = {}
    for at in range(0, len(run_ids), 200):
        chunk = list(run_ids[at : at + 200])
        sql = (
            f"SELECT run_id, {money} FROM ledger_spend WHERE run_id IN ({', '.join('?' * len(chunk))}) GROUP BY run_id"
        )
        for run_id, total in store.read(sql, chunk):
            out[run_id] = sum(map(_dec, total.split(",")), Decimal(0)) if isinstance(total, str) else _dec(total)
    return out


def book_runs_since(store: Store, hour: str) -> list[str]:
    """The run ids with a spend book row of ``hour`` (``hour_of``'s form) or later."""
    return [str(r[0]) for r in store.read("SELECT DISTINCT run_id FROM ledger_spend WHERE hour >= ?", (hour,))]


def run_ids_after(store: Store, after: str | None, limit: int) -> list[str]:
    """The next ``limit`` run ids after ``after`` (from the first), in key order."""
    where, params = ("WHERE id > ? ", [after]) if after is not None else ("", [])
    return [str(r[0]) for r in store.read(f"SELECT id FROM runs {where}ORDER BY id LIMIT ?", [*params, limit])]


def _id_range(column: str, lo: str | None, hi: str | None, only: str | None) -> tuple[str, list[Any]]:
    """`` AND`` conditions for ``column`` in ``(lo, hi]`` (``None``: unbounded), or equal to ``only``."""
    if only is not None:
        return f" AND {column} = ?", [only]
    where, params = "", []
    if lo is not None:
        where += f" AND {column} > ?"
        params.append(lo)
    if hi is not None:
        where += f" AND {column} <= ?"
        params.append(hi)
    return where, params


_PARSED = " CROSS JOIN LATERAL (SELECT e.data::jsonb AS doc OFFSET 0) parsed"
"""PostgreSQL: each event's data parsed once for all the fields read from it (``parsed.doc``;
``OFFSET 0`` keeps the planner from folding the cast back into each field, one parse each)."""


def spend_check_rows(
    store: Store, fields: str, lo: str | None, hi: str | None, only: str | None = None
) -> list[tuple[Any, ...]]:
    """Both sides of the check of the book for the runs whose id is in ``(lo, hi]`` (or is
    ``only``), in one statement, so from one snapshot (a charge committed meanwhile is on both
    sides or on neither). Rows of nine columns, tagged by the first:

    - ``r``, run id: a run that exists;
    - ``b``, run, model, hour, calls, cost, estimated, input and output tokens: a book row (of
      any run id, existing or not), numbers as text;
    - ``e``, chain, then ``fields`` (seven, as ``charges`` reads them): a charged-call event,
      read by the events' key (SQLite would otherwise walk the (type, at) index: every call
      of the store, for each page);
    - ``l``, run, model, amount, time: a call lost with its process, charged at its
      reservation and not journaled yet.
    """
    parts, params = [], []
    for sql, column in (
        ("SELECT 'r', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM runs WHERE 1 = 1", "id"),
        (
            "SELECT 'b', run_id, model, hour, CAST(calls AS TEXT), cost_usd, estimated_usd, "
            "CAST(input_tokens AS TEXT), CAST(output_tokens AS TEXT) FROM ledger_spend WHERE 1 = 1",
            "run_id",
        ),
        (
            f"SELECT 'e', e.chain, {fields} FROM events e{_PARSED if 'parsed.doc' in fields else ''} "
            "WHERE e.type || '' IN ('call.completed', 'call.failed', 'budget.unknown_outcome')",
            "e.chain",
        ),
        (
            "SELECT 'l', u.run_id, u.model, u.amount_usd, u.created_at, NULL, NULL, NULL, NULL FROM budget_unknown u "
            "WHERE u.recorded = 0 AND u.actual_usd IS NULL",
            "u.run_id",
        ),
    ):
        where, values = _id_range(column, lo, hi, only)
        parts.append(sql + where)
        params += values
    return store.read(" UNION ALL ".join(parts), params)


def run_total_sql(store: Store, run_column: str) -> str:
    """SQL for the booked spend of the run whose id is in ``run_column``, as a number (for
    filters: exact on PostgreSQL, a float on SQLite; the totals shown come from ``run_totals``)."""
    money = "CAST(cost_usd AS NUMERIC)" if store.dialect == "postgresql" else "CAST(cost_usd AS REAL)"
    return f"(SELECT COALESCE(SUM({money}), 0) FROM ledger_spend s WHERE s.run_id = {run_column})"


def run_amounts(store: Store, run_id: str) -> tuple[Decimal, Decimal, Decimal]:
    """In one read: the run's booked spend, its reservations still held, and its calls charged
    at their reservation (expired) whose outcome is not on its journal yet (exact sums)."""
    # SQLite's sums are floats: the exact sums are made here from the amounts themselves.
    agg = "sum({}::numeric)::text" if store.dialect == "postgresql" else "group_concat({}, ',')"
    row = store.read_one(
        f"SELECT (SELECT {agg.format('cost_usd')} FROM ledger_spend WHERE run_id = ?), "
        f"(SELECT {agg.format('amount_usd')} FROM reservations WHERE run_id = ?), "
        f"(SELECT {agg.format('amount_usd')} FROM budget_unknown "
        "WHERE run_id = ? AND recorded = 0 AND actual_usd IS NULL)",
        (run_id, run_id, run_id),
    )
    spent, held, lost = (
        sum(map(_dec, str(v).split(",")), Decimal(0)) if v is not None else Decimal(0) for v in (row or (None,) * 3)
    )
    return spent, held, lost


def runs_info(store: Store, run_ids: Iterable[str]) -> dict[str, tuple[Any, ...]]:
    """``id → (workflow, tenant, status, created_at)`` of the given runs."""
    ids = list(run_ids)
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = store.read(f"SELECT id, workflow, tenant, status, created_at FROM runs WHERE id IN ({marks})", ids)
    return {r[0]: tuple(r[1:]) for r in rows}


# --------------------------------------------------------------------------- the journal, read back
JOURNAL_EVENTS = (
    "SELECT e.at, {fields}, r.workflow, r.tenant, r.id FROM events e JOIN runs r ON r.id = e.chain "
    "WHERE e.type IN ('call.completed', 'call.failed', 'budget.unknown_outcome'){where}"
)
"""The charged-call events of the runs' journals; ``fields``: what of ``e.data`` to read."""

JOURNAL_LOST = (
    "SELECT u.id, u.created_at, u.model, u.amount_usd, r.workflow, r.tenant, r.id FROM budget_unknown u "
    "JOIN runs r ON r.id = u.run_id WHERE u.recorded = 0 AND u.actual_usd IS NULL{where}"
)
"""Calls a dead process left in flight, charged at their reservation and not yet journaled."""


def journal_rows(store: Store, fields: str, where: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return store.read(JOURNAL_EVENTS.format(fields=fields, where=where), params)


def journal_lost(store: Store, where: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return store.read(JOURNAL_LOST.format(where=where), params)


def json_field(store: Store, path: str, *, parsed: bool = False) -> str:
    """A field of an event's JSON ``data`` as text, extracted by the database (``parsed``: on
    PostgreSQL, from the document ``spend_check_rows`` parsed once per event)."""
    if store.dialect == "postgresql":
        return ("parsed.doc" if parsed else "(e.data::jsonb)") + " #>> '{" + path.replace(".", ",") + "}'"
    return f"json_extract(e.data, '$.{path}')"


def scopes_json(scopes: Sequence[tuple[str, str]]) -> str:
    return json.dumps(list(scopes))
