"""One typed settings object, built once; ``WFLO_*`` variables are read when it is built.

``wflo.configure(...)`` replaces it (and the store it opened). Nothing is read at import.
"""

from __future__ import annotations

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
    """How often an idle worker polls SQLite for work (PostgreSQL uses LISTEN/NOTIFY).
    Env: ``WFLO_POLL_INTERVAL``."""

    otel: bool = False
    """Export each run as OpenTelemetry spans (GenAI conventions) over OTLP/HTTP, configured by
    the standard ``OTEL_EXPORTER_OTLP_*`` variables; needs ``wflo[otel]``.
    Env: ``WFLO_OTEL`` (``0``/``1``)."""

    content: str = "full"
    """What the journal keeps of LLM completions: ``full`` (the response, secrets such as API
    keys redacted), ``redacted`` (also passed through your ``wflo.add_redactor`` functions) or
    ``hash_only`` (only its SHA-256). Prompts are never stored, only their digest. The exact
    response is kept apart from the chain while the run may still need to replay it, and
    removed when the run ends. Env: ``WFLO_CONTENT``."""

    max_value_bytes: int | None = 4_000_000
    """The largest workflow input or result, or step input or output, the journal accepts
    (bytes of its JSON text, or of its base64 pickle); larger is refused with a
    ``SerializationError`` before anything is written. ``None``: no cap.
    Env: ``WFLO_MAX_VALUE_BYTES`` (``none`` for no cap)."""

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

    def __post_init__(self) -> None:
        if isinstance(self.retention_days, bool) or not isinstance(self.retention_days, int) or self.retention_days < 0:
            raise ConfigurationError(f"retention_days must be a whole number of days >= 0, got {self.retention_days!r}")
        if self.compliance_schedule not in (None, "daily", "weekly", "monthly"):
            raise ConfigurationError(
                f"compliance_schedule must be 'daily', 'weekly' or 'monthly', got {self.compliance_schedule!r}"
            )
        if self.max_value_bytes is not None and (
            isinstance(self.max_value_bytes, bool)
            or not isinstance(self.max_value_bytes, int)
            or self.max_value_bytes < 1
        ):
            raise ConfigurationError(
                f"max_value_bytes must be a positive integer or None, got {self.max_value_bytes!r}"
            )
        if self.content not in ("full", "redacted", "hash_only"):
            raise ConfigurationError(f"content must be 'full', 'redacted' or 'hash_only', got {self.content!r}")
        if self.lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be positive, got {self.lease_seconds}")
        if self.reservation_ttl <= 0:
            raise ConfigurationError(f"reservation_ttl must be positive, got {self.reservation_ttl}")
        if self.poll_interval <= 0:
            raise ConfigurationError(f"poll_interval must be positive, got {self.poll_interval}")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        values: dict[str, Any] = {}
        if "WFLO_DATABASE_URL" in env:
            values["database"] = env["WFLO_DATABASE_URL"]
        if "WFLO_PRINCIPAL" in env:
            values["principal"] = env["WFLO_PRINCIPAL"]
        for key, name, kind in (
            ("lease_seconds", "WFLO_LEASE_SECONDS", float),
            ("poll_interval", "WFLO_POLL_INTERVAL", float),
            ("reservation_ttl", "WFLO_RESERVATION_TTL", float),
        ):
            if name in env:
                try:
                    values[key] = kind(env[name])
                except ValueError:
                    raise ConfigurationError(f"{name}={env[name]!r} is not a number") from None
        if "WFLO_MAX_VALUE_BYTES" in env:
            raw = env["WFLO_MAX_VALUE_BYTES"].strip().lower()
            try:
                values["max_value_bytes"] = None if raw in ("none", "") else int(raw.replace("_", ""))
            except ValueError:
                raise ConfigurationError(f"WFLO_MAX_VALUE_BYTES={raw!r} is not a whole number of bytes") from None
        if "WFLO_CONTENT" in env:
            values["content"] = env["WFLO_CONTENT"].strip().lower()
        if "WFLO_AUTO_MIGRATE" in env:
            values["auto_migrate"] = env["WFLO_AUTO_MIGRATE"].strip().lower() not in ("0", "false", "no")
        if "WFLO_OTEL" in env:
            values["otel"] = env["WFLO_OTEL"].strip().lower() not in ("", "0", "false", "no")
        if "WFLO_RETENTION_DAYS" in env:
            try:
                values["retention_days"] = int(env["WFLO_RETENTION_DAYS"])
            except ValueError:
                raise ConfigurationError(
                    f"WFLO_RETENTION_DAYS={env['WFLO_RETENTION_DAYS']!r} is not a whole number"
                ) from None
        for key, name in (
            ("compliance_schedule", "WFLO_COMPLIANCE_SCHEDULE"),
            ("compliance_dir", "WFLO_COMPLIANCE_DIR"),
            ("compliance_key", "WFLO_AUDIT_KEY"),
            ("compliance_framework", "WFLO_COMPLIANCE_FRAMEWORK"),
        ):
            if env.get(name, "").strip():
                values[key] = env[name].strip()
        if "WFLO_COMPLIANCE_NOTIFY" in env:
            values["compliance_notify"] = env["WFLO_COMPLIANCE_NOTIFY"].strip().lower() not in ("", "0", "false", "no")
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**values)
        if not settings.principal:
            try:
                login = getpass.getuser()
            except Exception:
                login = "unknown"
            settings = dataclasses.replace(settings, principal=f"user:{login}")
        return settings


_lock = threading.RLock()
_settings: Settings | None = None
_store: Store | None = None


def configure(**options: Any) -> Settings:
    """Set wflo's configuration for this process (unset options come from ``WFLO_*``/defaults).

    Example: ``wflo.configure(database="postgresql://localhost/wflo")``.
    """
    global _settings, _store
    with _lock:
        new = Settings.from_env(**options)
        if _store is not None:
            _store.close()
            _store = None
        _settings = new
        return new


def settings() -> Settings:
    """The current settings (built from the environment on first use)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def get_store() -> Store:
    """The store of the current settings, opened (and migrated) on first use."""
    global _store
    with _lock:
        if _store is None:
            from .store import open_store

            cfg = settings()
            _store = open_store(cfg.database, migrate=cfg.auto_migrate)
        return _store


def reset() -> None:
    """Forget settings and close the store (tests use this between cases)."""
    global _settings, _store
    with _lock:
        if _store is not None:
            _store.close()
        _store = None
        _settings = None
