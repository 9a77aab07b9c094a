"""wflo's settings: one typed object, built once (``wflo.configure(...)``, else from ``WFLO_*``),
and the ``Runtime`` that owns them with the store they name (``runtime()``; ``Runtime(...)`` for an
isolated one)."""

from ._config import Settings, configure, get_store, settings
from ._runtime import Runtime, runtime

__all__ = [
    "Runtime",
    "Settings",
    "configure",
    "get_store",
    "runtime",
    "settings",
]
