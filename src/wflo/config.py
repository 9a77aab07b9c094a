"""wflo's settings: one typed object, built once (``wflo.configure(...)``, else from ``WFLO_*``)."""

from ._config import Settings, configure, settings

__all__ = ["Settings", "configure", "settings"]
