"""One typed settings object, built once; ``WFLO_*`` variables are read when it is built.

``wflo.configure(...)`` replaces it (and the store it opened). Nothing is read at import.
"""

from __future__ import annotations

import contextvars
import dataclasses
import getpass
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from .store import Store

DEFAULT_DATABASE = "sqlite:///.wflo/wflo.db"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """wflo's configuration. Build with ``wflo.configure(...)`` or from ``WFLO_*`` variables."""

    database: str = DEFAULT_DATABASE
    """Store URL: ``sqlite:///path.db`` (default ``./.wflo/wflo.db``) or ``postgresql://…``.
    Env: ``WFLO_DATABASE_URL``."""

    principal: str = ""
    """Who this process acts as (approvals, audit). Env: ``WFLO_PRINCIPAL``; default
    ``user:<login name>``."""

    lease_seconds: float = 30.0
    """How long a worker's hold on a run lasts without a heartbeat; a dead worker's runs are
    recovered after this. Env: ``WFLO_LEASE_SECONDS``."""

    auto_migrate: bool = True
    """Bring an older store schema up to date on open (else refuse and name the fix).
    Env: ``WFLO_AUTO_MIGRATE`` (``0``/``1``)."""

    reservation_ttl: float = 600.0
    """How long a budget reservation outlives a process that died mid-call before it is
    released. Env: ``WFLO_RESERVATION_TTL``."""

    poll_interval: float = 0.2
    """How often an idle worker looks again without a wake-up (expired leases, due timers); new
    work wakes it sooner (SQLite: the change feed, about 10 ms; PostgreSQL: LISTEN/NOTIFY).
    Env: ``WFLO_POLL_INTERVAL``."""

    otel: bool = False
    """Export each run as OpenTelemetry spans (GenAI conventions) over OTLP/HTTP, configured by
    the standard ``OTEL_EXPORTER_OTLP_*`` variables; needs ``wflo[otel]``.
    Env: ``WFLO_OTEL`` (``0``/``1``)."""

    content: str = "full"
    """What the journal keeps of LLM completions: ``full`` (the response, secrets such as API
    keys redacted), ``redacted`` (also passed through your ``wflo.audit.add_redactor`` functions) or
    ``hash_only`` (only its SHA-256). Prompts are never stored, only their digest. The exact
    response is kept apart from the chain while the run may still need to replay it, and
    removed when the run ends. Env: ``WFLO_CONTENT``."""

    max_value_bytes: int | None = 4_000_000
    """The largest workflow input or result, or step input or output, the journal accepts
    (bytes of its JSON text, or of its base64 pickle); larger is refused with a
    ``SerializationError`` before anything is written. ``None``: no cap.
    Env: ``WFLO_MAX_VALUE_BYTES`` (``none`` for no cap)."""

    require_auth: bool = False
    """Decisions must come from authenticated principals: single-user local conveniences
    (``wflo approve --as-self-local``: a requester deciding their own test request) are refused.
    Set it wherever more than one person uses the store. Env: ``WFLO_REQUIRE_AUTH``
    (``0``/``1``)."""

    # -- compliance (wflo.compliance): retention and scheduled evidence packs
    retention_days: int = 183
    """How long audit records must be kept: ``wflo audit prune`` refuses a cut-off younger
    than this (about 6 months, the EU AI Act Art. 19 minimum) unless given a recorded
    override reason. Env: ``WFLO_RETENTION_DAYS``."""

    compliance_schedule: str | None = None
    """``daily``, ``weekly`` or ``monthly``: ``wflo worker`` makes an evidence pack for each
    finished period. ``None``: no scheduled packs. Env: ``WFLO_COMPLIANCE_SCHEDULE``."""

    compliance_dir: str | None = None
    """Where scheduled packs are written (one folder per period).
    Env: ``WFLO_COMPLIANCE_DIR``; default ``./.wflo/compliance``."""

    compliance_key: str | None = None
    """The audit key (Ed25519 PEM from ``wflo audit keygen``) that signs packs.
    Env: ``WFLO_AUDIT_KEY``."""

    compliance_framework: str = "all"
    """Which framework scheduled packs map to (``eu-ai-act``, ``soc2``, ``iso42001``, ``all``).
    Env: ``WFLO_COMPLIANCE_FRAMEWORK``."""

    compliance_notify: bool = False
    """Also send each scheduled pack through the webhook/SMTP notifiers
    (``WFLO_APPROVAL_WEBHOOK``, ``WFLO_SMTP_*``). Env: ``WFLO_COMPLIANCE_NOTIFY`` (``0``/``1``)."""

    egress_allow: tuple[str, ...] = ()
    """Hosts opted out of the closed world of guarded runs: their LLM requests pass unguarded
    and unpriced, each one recorded on its run (``egress.opted_out``). Also
    ``wflo.egress.allow(host)``. Env: ``WFLO_EGRESS_ALLOW`` (comma-separated)."""

    server_url: str = ""
    """The wflo server the CLI talks to after ``wflo login`` (and the server's own public base
    URL, used for its OIDC redirect URI). Env: ``WFLO_SERVER_URL``."""

    oidc_issuer: str = ""
    """The OpenID Connect provider (its ``/.well-known/openid-configuration`` is read) that
    signs people in to the server. Env: ``WFLO_OIDC_ISSUER``."""

    oidc_client_id: str = ""
    """The server's client id at the provider; ID tokens for another audience are refused.
    Env: ``WFLO_OIDC_CLIENT_ID``."""

    oidc_client_secret: str = dataclasses.field(default="", repr=False)
    """The client secret (a confidential client; PKCE is used as well). Never logged or
    recorded. Env: ``WFLO_OIDC_CLIENT_SECRET``."""

    oidc_role_map: str = ""
    """Groups to roles: ``GROUP=ROLE[@SCOPE]`` pairs, comma separated
    (``wflo-admins=admin, finance=approver@tenant:acme``). Env: ``WFLO_OIDC_ROLE_MAP``."""

    oidc_groups_claim: str = "groups"
    """The ID token claim that lists the user's groups. Env: ``WFLO_OIDC_GROUPS_CLAIM``."""

    oidc_allowed_groups: str = ""
    """Only members of these groups (comma separated) may sign in; empty: any group.
    Env: ``WFLO_OIDC_ALLOWED_GROUPS``."""

    oidc_allowed_domains: str = ""
    """Only verified emails of these domains (comma separated) may sign in; empty: any.
    Env: ``WFLO_OIDC_ALLOWED_DOMAINS``."""

    oidc_require_email_verified: bool = True
    """A person signs in as ``user:<email>`` only when the ID token says the provider verified
    the address (``email_verified: true``). Turn off only for a provider that never sends the
    claim and whose addresses you trust; ``email_verified: false`` is refused all the same.
    Env: ``WFLO_OIDC_REQUIRE_EMAIL_VERIFIED`` (``0``/``1``)."""

    session_hours: float = 8.0
    """How long a browser session lasts (it is revoked server-side at sign-out).
    Env: ``WFLO_SESSION_HOURS``."""

    cookie_secure: bool = True
    """Send session cookies only over HTTPS; turn off only for a server on localhost.
    Env: ``WFLO_COOKIE_SECURE`` (``0``/``1``)."""

    # -- tools (wflo.tools): grants, signed packages, secrets of packaged tools
    require_tool_grants: bool = False
    """Every tool call in a run needs a grant (``wflo tools grant``), built-in and ``@wflo.tool``
    tools too. Packaged tools always need one. Env: ``WFLO_REQUIRE_TOOL_GRANTS`` (``0``/``1``)."""

    require_signed_tools: bool = False
    """Refuse a packaged tool whose package is not signed by a trusted publisher key
    (``wflo tools trust``) or whose files changed since. Env: ``WFLO_REQUIRE_SIGNED_TOOLS``."""

    tool_secrets_file: str | None = None
    """A file of ``NAME=value`` lines the secrets of packaged tools are read from (before the
    environment). Env: ``WFLO_TOOL_SECRETS_FILE``."""

    pg_pooler: str = "none"
    """What sits between wflo and PostgreSQL: ``none``, ``session`` (a session pooler: nothing
    changes) or ``transaction`` (PgBouncer's ``pool_mode=transaction``: no prepared statements,
    and the change feed LISTENs on ``pg_listen_url`` or else polls every ``poll_interval``).
    A store URL's ``?pooler=`` wins. Env: ``WFLO_PG_POOLER``."""

    pg_listen_url: str = ""
    """A direct connection to the PostgreSQL primary (not through the pooler) for
    ``LISTEN wflo_runs`` when ``pg_pooler`` is ``transaction``: waits wake in milliseconds
    instead of a poll interval. A store URL's ``?listen_url=`` (percent-encoded) wins.
    Env: ``WFLO_PG_LISTEN_URL``."""

    def __post_init__(self) -> None:
        # Every field is checked by its declared type (and its choices), so a setting added
        # later is validated the same way without code here.
        for field in dataclasses.fields(self):
            _check(field, getattr(self, field.name))

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = env_name(field)
            if name in env:
                values[field.name] = _parse_env(field, name, env[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))} (known: {known})")
        settings = cls(**values)
        if not settings.principal:
            try:
                login = getpass.getuser()
            except Exception:
                login = "unknown"
            settings = dataclasses.replace(settings, principal=f"user:{login}")
        return settings


# Settings whose environment variable is not simply WFLO_<NAME>.
_ENV_NAMES = {"database": "WFLO_DATABASE_URL", "compliance_key": "WFLO_AUDIT_KEY"}
# Settings that take one of a few words.
_CHOICES: dict[str, tuple[str, ...]] = {
    "content": ("full", "redacted", "hash_only"),
    "compliance_schedule": ("daily", "weekly", "monthly"),
    "compliance_framework": ("eu-ai-act", "soc2", "iso42001", "all"),
    "pg_pooler": ("none", "session", "transaction"),
}
# Numbers that must be > 0 (all numeric settings unless listed in _NON_NEGATIVE).
_NON_NEGATIVE: set[str] = {"retention_days"}
# Durations: at most a century in their unit. Longer ones overflow the dates and timeouts they
# are added to (a run failed with OverflowError; `wflo audit prune` raised it).
CENTURY_DAYS = 36_500
"""The longest duration wflo takes anywhere (settings, token expiries), in days."""
_MAX: dict[str, float] = {
    "lease_seconds": CENTURY_DAYS * 86_400, "reservation_ttl": CENTURY_DAYS * 86_400,
    "poll_interval": CENTURY_DAYS * 86_400, "retention_days": CENTURY_DAYS, "session_hours": CENTURY_DAYS * 24,
}  # fmt: skip
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_name(field: dataclasses.Field[Any]) -> str:
    """The ``WFLO_*`` variable of a setting."""
    return _ENV_NAMES.get(field.name, f"WFLO_{field.name.upper()}")


def _kind(field: dataclasses.Field[Any]) -> str:
    """``bool``, ``int``, ``float`` or ``str`` from the field's annotation (``X | None`` too)."""
    if str(field.type).startswith("tuple[str"):
        return "list"  # comma-separated in the environment
    text = str(field.type).replace("Optional[", "").replace("]", "")
    first = text.split("|")[0].strip()
    return first if first in ("bool", "int", "float") else "str"


def _optional(field: dataclasses.Field[Any]) -> bool:
    return "None" in str(field.type)


def _accepted(field: dataclasses.Field[Any]) -> str:
    kind = _kind(field)
    if field.name in _CHOICES:
        text = ", ".join(_CHOICES[field.name])
    elif kind == "bool":
        text = "1/0, true/false, yes/no, on/off"
    elif kind in ("int", "float"):
        text = ("a whole number" if kind == "int" else "a number") + (
            " >= 0" if field.name in _NON_NEGATIVE else " > 0"
        )
        if field.name in _MAX:
            text += f" and at most {_MAX[field.name]:,} (a century)"
    elif kind == "list":
        text = "a comma-separated list"
    elif field.name == "principal":
        text = "printable text such as user:alice"
    else:
        text = "text"
    return text + (" (or empty or 'none' for none)" if _optional(field) and kind != "str" else "")


def _bad(field: dataclasses.Field[Any], shown: str) -> ConfigurationError:
    return ConfigurationError(f"{shown} is not a valid {field.name} setting; accepted: {_accepted(field)}")


def _parse_env(field: dataclasses.Field[Any], name: str, raw: str) -> Any:
    """A ``WFLO_*`` value as the setting's type; a bad one is refused, naming what is accepted."""
    text = raw.strip()
    kind = _kind(field)
    shown = f"{name}={raw!r}"
    if not raw.isascii() and any("\udc80" <= ch <= "\udcff" for ch in raw):
        # Bytes that are not UTF-8 arrive as lone surrogates, which no store, hash or JSON takes.
        raise ConfigurationError(f"{name}={os.fsencode(raw)!r} is not UTF-8 text")
    if text.lower() in ("", "none") and _optional(field) and (kind != "str" or field.name in _CHOICES):
        return None
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _bad(field, shown)
    if kind in ("int", "float"):
        try:
            number: Any = int(text) if kind == "int" else float(text)
        except ValueError:
            raise _bad(field, shown) from None
        _check(field, number, shown)
        return number
    if kind == "list":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if field.name in _CHOICES:
        text = text.lower()
        _check(field, text, shown)
        return text
    return raw


def _check(field: dataclasses.Field[Any], value: Any, shown: str | None = None) -> None:
    shown = shown or f"{field.name}={value!r}"
    kind = _kind(field)
    if value is None:
        if _optional(field):
            return
        raise _bad(field, shown)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(field, shown)
    elif kind in ("int", "float"):
        ok_type = isinstance(value, int) if kind == "int" else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or value != value or value in (float("inf"), float("-inf")):
            raise _bad(field, shown)
        if value < 0 or (value == 0 and field.name not in _NON_NEGATIVE) or value > _MAX.get(field.name, value):
            raise _bad(field, shown)
    elif kind == "list":
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            raise _bad(field, shown)
    elif not isinstance(value, str) or (field.name in _CHOICES and value not in _CHOICES[field.name]):
        raise _bad(field, shown)
    elif field.name == "principal" and value and not value.isprintable():
        raise _bad(field, shown)  # a NUL reached PostgreSQL as a driver error with the first record
    elif field.name == "database":
        from .store import check_url  # a mistyped URL is refused here, not at the first run

        check_url(value)


class _Process:
    """The process runtime's settings and store (``wflo.configure()`` replaces them)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.settings: Settings | None = None
        self.store: Store | None = None

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


_process = _Process()
active_runtime: contextvars.ContextVar[Any] = contextvars.ContextVar("wflo_runtime", default=None)
"""The ``wflo.config.Runtime`` activated in this context (``rt.activate()``), if any: its
settings and store win over the process's."""


def configure(**options: Any) -> Settings:
    """Set wflo's configuration for this process (unset options come from ``WFLO_*``/defaults).

    Example: ``wflo.configure(database="postgresql://localhost/wflo")``.
    """
    with _process.lock:
        new = Settings.from_env(**options)
        _process.close_store()
        _process.settings = new
        return new


def settings() -> Settings:
    """The current settings (built from the environment on first use)."""
    active = active_runtime.get()
    if active is not None:
        return active.settings  # type: ignore[no-any-return]
    with _process.lock:
        if _process.settings is None:
            _process.settings = Settings.from_env()
        return _process.settings


def get_store(*, create: bool = True) -> Store:
    """The store of the current settings, opened (and migrated) on first use.

    ``create=False`` is for uses that only read or act on what is there (``wflo runs list``,
    ``audit verify`` …): a SQLite store that does not exist is refused with
    ``StoreNotFoundError`` rather than created, directories and all, at a mistyped path.
    """
    active = active_runtime.get()
    if active is not None:
        return active.store  # type: ignore[no-any-return]
    with _process.lock:
        if _process.store is None:
            from .store import open_store

            cfg = settings()
            _process.store = open_store(cfg.database, migrate=cfg.auto_migrate, create=create)
        return _process.store


def opened_store() -> Store | None:
    """The store :func:`get_store` gives here if it is open already, else ``None`` (its first
    use opens and migrates it: blocking work, which an event loop hands to a thread)."""
    active = active_runtime.get()
    if active is not None:
        return getattr(active, "_store", None)  # a Runtime's own, once opened
    return _process.store


def reset() -> None:
    """Forget settings and close the store (tests use this between cases)."""
    with _process.lock:
        _process.close_store()
        _process.settings = None
