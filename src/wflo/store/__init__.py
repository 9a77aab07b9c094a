"""The store: runs, their hash-chained journals, and the system chain, in SQLite or PostgreSQL.

``open_store(url)`` picks the backend from the URL and imports its driver only then.
"""

from __future__ import annotations

from urllib.parse import unquote

from .._errors import ConfigurationError
from ._base import SYSTEM_CHAIN, Store, StoreOp
from ._chain import GENESIS, canonical_json, event_hash, json_string, link_hash
from ._claim import QueueRule
from ._migrations import MIGRATIONS, SCHEMA_VERSION, TYPE_INDEXED, Migration
from ._offload import OrderedExecutor
from ._records import (
    END_EVENTS,
    FINAL_STATUSES,
    RUN_STATUSES,
    Event,
    Head,
    NewEvent,
    RunRecord,
    iso,
    new_id,
    now_iso,
    parse_iso,
)
from ._roles import apply_roles, role_statements
from ._stream import RowStream

__all__ = [
    "END_EVENTS",
    "Event",
    "FINAL_STATUSES",
    "GENESIS",
    "Head",
    "MIGRATIONS",
    "Migration",
    "NewEvent",
    "OrderedExecutor",
    "QueueRule",
    "RUN_STATUSES",
    "RowStream",
    "RunRecord",
    "SCHEMA_VERSION",
    "SYSTEM_CHAIN",
    "Store",
    "StoreOp",
    "TYPE_INDEXED",
    "apply_roles",
    "canonical_json",
    "event_hash",
    "iso",
    "json_string",
    "link_hash",
    "new_id",
    "now_iso",
    "open_store",
    "parse_iso",
    "role_statements",
]


def open_store(url: str, *, migrate: bool = True, verify: bool = True, create: bool = True) -> Store:
    """Open the store at ``url`` (``sqlite:///path.db`` or ``postgresql://…``).

    SQLite takes ``?synchronous=FULL`` to fsync every commit (survives power loss; the
    default ``NORMAL`` survives process crashes). Both take ``?pool_size=N``: at most N
    connections per process (default 10; PostgreSQL adds one for LISTEN). PostgreSQL behind
    PgBouncer in transaction mode takes ``?pooler=transaction`` and, for LISTEN, a direct
    ``&listen_url=<percent-encoded URL>`` (or the settings ``pg_pooler``/``pg_listen_url``).

    With ``migrate`` (the default) a new or older schema is brought up to date; a newer one
    raises ``SchemaVersionError``, as does an older one when ``migrate`` is off. With
    ``verify=False`` the schema is not looked at (``wflo db migrate|check`` do that
    themselves). With ``create=False`` (read-only uses) a SQLite file that does not exist is
    refused (``StoreNotFoundError``) instead of created. Unreachable databases raise
    ``StoreUnavailableError``; a damaged SQLite file ``StoreCorruptError``.
    """
    store = _make(url, create=create)
    if not verify:
        return store
    try:
        store.ensure_schema(auto_migrate=migrate and create)
    except BaseException:
        store.close()
        raise
    return store


_SQLITE_HELP = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"


def _pool_size(url: str, params: dict[str, str]) -> int:
    raw = params.pop("pool_size", "10")
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigurationError(f"pool_size must be a whole number of at least 1 in {url!r}, got {raw!r}")
    return size


def check_url(url: str) -> None:
    """Refuse a store URL wflo cannot open (a typo of its scheme, a SQLite URL without its
    third slash, a NUL) with ``ConfigurationError``, without opening anything: the settings
    check it when they are built (``wflo.configure(database=...)``), not at the first run."""
    scheme, sep, rest = url.partition(":")
    scheme = scheme.split("+", 1)[0].lower()
    if "\x00" in unquote(url):
        raise ConfigurationError(f"database URL {url!r} contains a NUL character")
    if scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////abs/path.db (the path follows the third
        # slash). Anything else is refused with that spelling rather than guessed at:
        # sqlite://rel.db used to open "el.db", and sqlite:/abc.db raised IndexError.
        body = rest.partition("?")[0]
        if not body.startswith("///"):
            hint = body.lstrip("/")
            raise ConfigurationError(
                f"{url!r} is not a SQLite URL wflo understands: {_SQLITE_HELP} "
                f"(did you mean sqlite:///{hint} or sqlite:////{hint}?)"
            )
        return
    if scheme in ("postgresql", "postgres") and sep:
        return
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use sqlite:///path/to/wflo.db or postgresql://user@host/db"
    )


def _make(url: str, *, create: bool = True) -> Store:
    check_url(url)
    scheme, _, rest = url.partition(":")
    scheme = scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        body, _, query = rest.partition("?")
        path = unquote(body[3:])
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        sync = params.pop("synchronous", "NORMAL").upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError(f"synchronous must be NORMAL, FULL or EXTRA in {url!r}")
        size = _pool_size(url, params)
        # A misspelt ?synchronus=FULL was ignored: the user believed every commit was fsynced.
        unknown = sorted(params) + [p for p in query.split("&") if p and "=" not in p]
        if unknown:
            raise ConfigurationError(
                f"unknown parameter {', '.join(map(repr, unknown))} in {url!r}: a SQLite URL takes synchronous= and pool_size="
            )
        if not path or path == ":memory:":
            raise ConfigurationError(f"{url!r} names no database file; {_SQLITE_HELP}")
        from ._sqlite import SQLiteStore

        return SQLiteStore(url, path, synchronous=sync, create=create, pool_size=size)
    # PostgreSQL: ``check_url`` refused every other scheme.
    from ._postgres import PostgresStore

    pg_url = "postgresql:" + rest
    base, _, query = pg_url.partition("?")
    parts = [p for p in query.split("&") if p]
    params = dict(p.split("=", 1) for p in parts if "=" in p)
    size = _pool_size(url, params)
    # pool_size, pooler and listen_url are ours, not libpq's: they must not reach the
    # server's connection string. Without them in the URL, the settings say (pg_pooler,
    # pg_listen_url), so every store a process opens on the same URL agrees.
    from .._config import settings

    cfg = settings()
    pooler = unquote(params.get("pooler", cfg.pg_pooler)).lower()
    if pooler not in ("none", "session", "transaction"):
        raise ConfigurationError(f"pooler must be none, session or transaction in {url!r}, got {pooler!r}")
    listen_url = unquote(params.get("listen_url", cfg.pg_listen_url))
    ours = ("pool_size=", "pooler=", "listen_url=")
    kept = [p for p in parts if not p.startswith(ours)]
    return PostgresStore(
        base + ("?" + "&".join(kept) if kept else ""),
        pool_size=size,
        pooler=pooler,
        listen_url=listen_url,
        poll_interval=cfg.poll_interval,
    )
