"""PostgreSQL specifics: the events table refuses UPDATE and DELETE; unreachable servers."""

from __future__ import annotations

import pytest

from wflo._errors import StoreUnavailableError
from wflo.store import open_store


def test_events_are_append_only_in_postgres(pg_url: str) -> None:
    import psycopg

    with open_store(pg_url) as store:
        store.create_run(run_id="ao", workflow="w", input={})
        with store._connection() as conn:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute("UPDATE events SET data = '{}' WHERE chain = 'ao'")
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute("DELETE FROM events WHERE chain = 'ao'")
        assert len(store.events("ao")) == 1


def test_unreachable_postgres_is_a_one_line_error() -> None:
    with pytest.raises(StoreUnavailableError, match="cannot open the wflo store"):
        open_store("postgresql://nobody:secret@127.0.0.1:1/none")
    try:
        open_store("postgresql://nobody:secret@127.0.0.1:1/none")
    except StoreUnavailableError as exc:
        assert "secret" not in str(exc)
