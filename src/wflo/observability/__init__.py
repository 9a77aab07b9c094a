"""Observability built from the run journal: OpenTelemetry spans and Prometheus metrics.

Both need the ``otel`` extra (``pip install 'wflo[otel]'``). Nothing heavy is imported until
export is turned on (``wflo.observability.enable()``, ``wflo.configure(otel=True)`` or
``WFLO_OTEL=1``) or the metrics server is started.

Spans follow the OpenTelemetry GenAI semantic conventions at version :data:`SEMCONV_VERSION`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._errors import UserError

if TYPE_CHECKING:
    from ..store import Store

__all__ = [
    "CONTENT_ENV",
    "SEMCONV_SCHEMA_URL",
    "SEMCONV_VERSION",
    "disable",
    "enable",
    "export_run",
    "flush",
    "is_enabled",
    "metrics_collector",
    "run_finished",
    "serve_metrics",
]

SEMCONV_VERSION = "1.44.0"
"""The OpenTelemetry semantic conventions version the spans follow (GenAI attributes included)."""
SEMCONV_SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""Set to ``true`` to put message content (LLM answers, tool arguments and results) on spans.
Default: no content."""

log = logging.getLogger("wflo.observability")
_lock = threading.Lock()
_enabled = False
_warned = False


def _need(module: str) -> ModuleType:
    """Import one of our modules that needs the extra, or raise a UserError naming it."""
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        raise UserError(
            f"OpenTelemetry export and Prometheus metrics need the otel extra: pip install 'wflo[otel]' "
            f"(missing: {exc.name or exc})"
        ) from None


def enable(*, capture_content: bool | None = None, exporter: Any = None, batch: bool = True) -> None:
    """Export every run that ends, stops, fails or waits as spans (from its journal).

    ``exporter``: an OpenTelemetry ``SpanExporter`` (default: OTLP/HTTP configured by the
    ``OTEL_EXPORTER_OTLP_*`` variables). ``capture_content``: put message content on spans
    (default: the ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` variable, else no).
    ``batch=False`` exports each span at once (tests, short scripts); the default batches
    them and flushes at process exit.
    """
    global _enabled
    otel = _need("_otel")
    with _lock:
        otel.setup(capture_content=capture_content, exporter=exporter, batch=batch)
        _enabled = True


def disable() -> None:
    """Stop exporting: flush what is buffered and shut the exporter down."""
    global _enabled
    with _lock:
        _enabled = False
        import sys

        otel = sys.modules.get(f"{__name__}._otel")
        if otel is not None:
            otel.shutdown()


# ``wflo._config``, imported at the first run's end and kept (an import statement in a function
# costs ~5 K instructions per call: issue 20, one per run).
_CONFIG: ModuleType | None = None


def _load_config() -> ModuleType:
    global _CONFIG
    from .. import _config

    _CONFIG = _config
    return _config


def is_enabled() -> bool:
    """True when runs are exported (``enable()`` was called, or the ``otel`` setting is on)."""
    if _enabled:
        return True
    return bool((_CONFIG or _load_config()).settings().otel)


def flush(timeout_seconds: float = 10.0) -> bool:
    """Export the buffered spans now; True when all were sent in time."""
    import sys

    otel = sys.modules.get(f"{__name__}._otel")
    return bool(otel.flush(timeout_seconds)) if otel is not None else True


def export_run(store: Store, run_id: str) -> int:
    """Export the spans of ``run_id`` since it last waited (or began); returns how many."""
    otel = _need("_otel")
    if not otel.is_setup():
        enable()
    return int(otel.export_run(store, run_id))


def run_finished(store: Store, run_id: str) -> None:
    """The engine's hook when a run ends, stops, fails or waits: a no-op unless export is on.

    Never raises: a failing exporter logs one warning and the run goes on.
    """
    global _warned
    if not _enabled:
        try:
            if not (_CONFIG or _load_config()).settings().otel:
                return
        except Exception:
            return
    try:
        export_run(store, run_id)
    except Exception as exc:
        if not _warned:
            _warned = True
            log.warning(
                "wflo: OpenTelemetry export of run %s failed (runs are unaffected; not repeated): %s", run_id, exc
            )


def metrics_collector(store: Store | None = None) -> Any:
    """A Prometheus collector computing wflo's metrics from ``store`` (default: the configured
    store) at each scrape; register it on any ``prometheus_client`` registry."""
    return _need("_metrics").StoreCollector(store)


def serve_metrics(port: int, addr: str = "0.0.0.0", store: Store | None = None) -> Any:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns the HTTP server."""
    return _need("_metrics").serve(port, addr=addr, store=store)
