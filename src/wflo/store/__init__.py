"""The store: runs, their hash-chained journals, and the system chain, in SQLite or PostgreSQL.

``open_store(url)`` picks the backend from the URL and imports its driver only then.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from .._errors import ConfigurationError
from ._base import SYSTEM_CHAIN, Store, StoreOp
from ._chain import GENESIS, canonical_json, event_hash, link_hash
from ._migrations import MIGRATIONS, SCHEMA_VERSION
from ._records import (
    FINAL_STATUSES,
    RUN_STATUSES,
    Event,
    Head,
    NewEvent,
    RunRecord,
    new_id,
    now_iso,
    parse_iso,
)

__all__ = [
    "Event",
    "FINAL_STATUSES",
    "GENESIS",
    "Head",
    "MIGRATIONS",
    "NewEvent",
    "RUN_STATUSES",
    "RunRecord",
    "SCHEMA_VERSION",
    "SYSTEM_CHAIN",
    "Store",
    "StoreOp",
    "canonical_json",
    "event_hash",
    "link_hash",
    "new_id",
    "now_iso",
    "open_store",
    "parse_iso",
]


def open_store(url: str, *, migrate: bool = True, verify: bool = True) -> Store:
    """Open the store at ``url`` (``sqlite:///path.db`` or ``postgresql://…``).

    SQLite takes ``?synchronous=FULL`` to fsync every commit (survives power loss; the
    default ``NORMAL`` survives process crashes).

    With ``migrate`` (the default) a new or older schema is brought up to date; a newer one
    raises ``SchemaVersionError``, as does an older one when ``migrate`` is off. With
    ``verify=False`` the schema is not looked at (``wflo db migrate|check`` do that
    themselves). Unreachable databases raise ``StoreUnavailableError``.
    """
    store = _make(url)
    if not verify:
        return store
    try:
        store.ensure_schema(auto_migrate=migrate)
    except BaseException:
        store.close()
        raise
    return store


def _make(url: str) -> Store:
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+", 1)[0]
    if scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory: is refused
        # (each connection would get its own empty database).
        rest, _, query = url.split("://", 1)[1].partition("?")
        path = unquote(rest)[1:]
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        sync = params.get("synchronous", "NORMAL").upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(f"synchronous must be NORMAL, FULL or EXTRA in {url!r}")
        if not path or path == ":memory:":
            raise ConfigurationError(f"{url!r} names no database file; use sqlite:///path/to/wflo.db")
        from ._sqlite import SQLiteStore

        return SQLiteStore(url, path, synchronous=sync)
    if scheme in ("postgresql", "postgres"):
        from ._postgres import PostgresStore

        return PostgresStore("postgresql://" + url.split("://", 1)[1])
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use sqlite:///path/to/wflo.db or postgresql://user@host/db"
    )
