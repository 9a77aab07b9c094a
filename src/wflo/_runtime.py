"""``wflo.config.Runtime``: one object owning what wflo runs on (settings, store, prices, policies).

wflo keeps its settings and store in module-level singletons, built by ``wflo.configure()`` or
``wflo.init()`` (or lazily from ``WFLO_*``). A :class:`Runtime` is the façade over them, and
the first step away from them: ``wflo.config.runtime()`` is the process's runtime (the
singletons), and ``Runtime(database=...)`` builds another, isolated one. Inside
``with rt.activate():`` every run started, resumed or read uses that runtime's settings and
store; the activation is a context variable, so two threads (or asyncio tasks) can each work in
their own runtime side by side. (A plain thread started inside the block starts outside it, as
with any context variable; the calls of a run's own threads still reach the run's store.)

What is still shared by the whole process, whichever runtime is active: the price book
(``rt.prices``), the resilience policies (``rt.policies``) and the guard chain's factories
(connected at import by ``wflo._wiring``); they are reached through the runtime so that code
written against it keeps working when they move into it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import _config
from ._config import Settings
from ._errors import UserError

if TYPE_CHECKING:
    from .cost import PriceBook
    from .guards import Policies
    from .store import Store


class Runtime:
    """Settings and the store they name, for the runs started while it is active.

    ``Runtime(database="sqlite:///a.db", principal="user:a")`` takes the options of
    ``wflo.configure`` (unset ones come from ``WFLO_*`` and the defaults), or a ready
    ``Settings``. The store is opened on first use and closed by :meth:`close`.
    """

    def __init__(self, settings: Settings | None = None, /, **options: Any) -> None:
        if settings is not None and options:
            raise UserError("give Runtime either a Settings or configure options, not both")
        self._settings = settings if settings is not None else Settings.from_env(**options)
        self._store: Store | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<wflo Runtime {self.settings.database}>"

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def store(self) -> Store:
        """The runtime's store, opened (and migrated, unless ``auto_migrate`` is off) on first use."""
        with self._lock:
            if self._store is None:
                from .store import open_store

                self._store = open_store(self.settings.database, migrate=self.settings.auto_migrate)
            return self._store

    @property
    def prices(self) -> PriceBook:
        """The price book (shared by the process for now)."""
        from .cost import prices

        return prices

    @property
    def policies(self) -> Policies:
        """Circuit breakers and rate limits (shared by the process for now)."""
        from .guards import policies

        return policies

    @contextmanager
    def activate(self) -> Iterator[Runtime]:
        """Use this runtime's settings and store inside the block (this thread or task)."""
        token = _config.active_runtime.set(self)
        try:
            yield self
        finally:
            _config.active_runtime.reset(token)

    def close(self) -> None:
        """Close the store, if it was opened."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


class _ProcessRuntime(Runtime):
    """The process's runtime: a view of the singletons ``wflo.configure()`` builds."""

    def __init__(self) -> None:  # no settings or store of its own: it reads the singletons
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<wflo Runtime (process)>"

    @property
    def settings(self) -> Settings:
        return _config.settings()

    @property
    def store(self) -> Store:
        return _config.get_store()

    def close(self) -> None:
        _config.reset()


_PROCESS = _ProcessRuntime()


def runtime() -> Runtime:
    """The runtime in use here: the one activated in this context, else the process's."""
    active = _config.active_runtime.get()
    return active if isinstance(active, Runtime) else _PROCESS
