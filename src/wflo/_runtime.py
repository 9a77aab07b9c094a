"""``wflo.config.Runtime``: one object owning what wflo runs on.

A runtime holds the settings, the store they name, the price book, the resilience policies
and the guard chain of every run it starts or resumes. ``wflo.config.runtime()`` is the
process's runtime: its settings and store are what ``wflo.configure()`` / ``wflo.init()``
build (or ``WFLO_*`` on first use), its price book is ``wflo.cost.prices`` and its policies
``wflo.policies``. ``Runtime(database=...)`` builds another, isolated one, with a price book
and policies of its own. Inside ``with rt.activate():`` every run started, resumed or read
uses that runtime; the activation is a context variable, so two threads (or asyncio tasks)
can each work in their own runtime side by side. (A plain thread started inside the block
starts outside it, as with any context variable; a run's own threads carry the run, and its
runtime, with them.) A :class:`~wflo.engine.Worker` keeps the runtime it was built in.

The run context (``wflo.engine.RunContext.runtime``) holds the runtime that started or
resumed the run: its guards price with that runtime's book and limit with its policies.

Importing ``wflo`` changes nothing outside it: the HTTP clients are wrapped by the first run
(or ``wflo.init()``), through :meth:`Runtime.intercept`.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import _config
from ._config import Settings
from ._errors import UserError

if TYPE_CHECKING:
    from .cost import PriceBook
    from .engine import Guard, RunContext, Workflow
    from .guards import Policies
    from .store import NewEvent, RunRecord, Store, StoreOp


class Runtime:
    """Settings, their store, prices, policies and the guard chain, for the runs it starts.

    ``Runtime(database="sqlite:///a.db", principal="user:a")`` takes the options of
    ``wflo.configure`` (unset ones come from ``WFLO_*`` and the defaults), or a ready
    ``Settings``. The store is opened on first use and closed by :meth:`close`. ``prices``
    and ``policies`` default to an empty ``PriceBook`` and ``Policies`` of its own
    (``rt.prices.set(...)``, ``rt.policies.rate_limit(...)``).

    A run's guards come from :meth:`run_guards`; a subclass may override it to change the
    chain (keep the default's order: content, loop, approval, policies, budget).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        /,
        *,
        prices: PriceBook | None = None,
        policies: Policies | None = None,
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise UserError("give Runtime either a Settings or configure options, not both")
        from .cost import PriceBook
        from .guards import Policies

        self._settings = settings if settings is not None else Settings.from_env(**options)
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._prices = prices if prices is not None else PriceBook()
        self._policies = policies if policies is not None else Policies()

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
        """The price book its runs are charged by."""
        return self._prices

    @property
    def policies(self) -> Policies:
        """Circuit breakers, rate limits, LLM retries and timeouts of its runs."""
        return self._policies

    # ------------------------------------------------------------------ what the engine asks
    def intercept(self) -> None:
        """Wrap the HTTP clients so LLM requests made in runs pass the guard chain.

        Process-wide and idempotent (the clients' classes are shared); done by the first
        run's :meth:`run_guards` or by ``wflo.init()``, never at import. A request is guarded
        by the runtime of the run it is made in.
        """
        (_HTTP or _load_http()).install()

    def run_guards(self, wf: Workflow[Any, Any] | None, record: RunRecord, store: Store) -> list[Guard]:
        """The guards of one execution of ``record`` on ``store``, in order: the content
        policy, the loop guard, the approval guard, the policies, the budget guard (see
        ``wflo._wiring``). Extensions' guards (``wflo.ext.add_guard_factory``) follow them.

        The default chain is built at the execution's first guarded call (an execution that
        makes none never builds it); a subclass's override is called at its start."""
        from . import _wiring

        self.intercept()
        return _wiring.run_guards(self, record, store)

    def finish_ops(self, store: Store, run_id: str, status: str, *, run: RunContext | None = None) -> list[StoreOp]:
        """Store writes committed with a run's final event (its kept payloads dropped).
        ``run``: the ending execution's context, if known (it may show nothing is to drop)."""
        ops: list[StoreOp] = (_WIRING or _load_wiring()).finish_ops(self, store, run_id, status, run=run)
        return ops

    def resume_reads(self, store: Store, run_id: str) -> list[tuple[str, tuple[Any, ...]]]:
        """The reads :meth:`resume_ops` makes, as ``(sql, params)``: a woken run sends them
        with its claim (``Store.read_ahead``: no round trip of their own on PostgreSQL)."""
        from . import _wiring

        return _wiring.resume_reads(self, store, run_id)

    def resume_ops(self, store: Store, run_id: str) -> tuple[list[NewEvent], list[StoreOp]]:
        """Events and writes committed with ``run.resumed`` (charging calls left in flight)."""
        from . import _wiring

        return _wiring.resume_ops(self, store, run_id)

    def cancelled(self, store: Store, run_id: str) -> None:
        """A run was asked to cancel: close what waits on it (its pending approvals)."""
        from . import _wiring

        _wiring.cancelled(self, store, run_id)

    # ------------------------------------------------------------------ activation
    def activate(self) -> AbstractContextManager[Runtime]:
        """Use this runtime inside the block (this thread or task)."""
        return _Activation(self, self)

    def close(self) -> None:
        """Close the store, if it was opened."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


class _ProcessRuntime(Runtime):
    """The process's runtime: the settings and store ``wflo.configure()`` builds, the price
    book ``wflo.cost.prices`` and the policies ``wflo.policies``."""

    def __init__(self) -> None:  # nothing of its own: it reads the process's objects
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<wflo Runtime (process)>"

    @property
    def settings(self) -> Settings:
        return _config.settings()

    @property
    def store(self) -> Store:
        return _config.get_store()

    @property
    def prices(self) -> PriceBook:
        from .cost import prices

        return prices

    @property
    def policies(self) -> Policies:
        from .guards import policies

        return policies

    def activate(self) -> AbstractContextManager[Runtime]:
        """Leave any isolated runtime inside the block: the process's objects answer."""
        return _Activation(self, None)

    def close(self) -> None:
        _config.reset()


class _Activation:
    """``with rt.activate():`` (one block per call): ``active_runtime`` set to ``value`` inside
    it, as it was after it. A class, not a ``contextmanager`` generator: the engine enters one
    per run, and the generator's object, its frames and two ``next`` calls cost ~4 K
    instructions more (issue 20)."""

    __slots__ = ("_runtime", "_token", "_value")

    def __init__(self, runtime: Runtime, value: Runtime | None) -> None:
        self._runtime = runtime
        self._value = value
        self._token: Any = None

    def __enter__(self) -> Runtime:
        self._token = _config.active_runtime.set(self._value)
        return self._runtime

    def __exit__(self, *exc: object) -> None:
        _config.active_runtime.reset(self._token)


_PROCESS = _ProcessRuntime()

# Modules the engine asks on every run, imported at their first use (never at import: see the
# module's doc) and kept here: an import statement in a function costs ~5 K instructions per
# call even when the module is loaded (issue 20: three of them in every empty run).
_WIRING: ModuleType | None = None
_HTTP: ModuleType | None = None


def _load_wiring() -> ModuleType:
    global _WIRING
    from . import _wiring as module

    _WIRING = module
    return module


def _load_http() -> ModuleType:
    global _HTTP
    from .integrations import _http

    _HTTP = _http
    return _http


def runtime() -> Runtime:
    """The runtime in use here: the one activated in this context, else the process's."""
    active = _config.active_runtime.get()
    return active if isinstance(active, Runtime) else _PROCESS
