"""An empty workflow's cost (issue 20): what a run that makes no guarded call does not do, and
what it still does.

- wflo's guard chain is built at a run's first guarded call (a step, an LLM or tool call), once,
  whichever thread makes it; a run that makes none never builds it. The HTTP clients are still
  wrapped at the run's start, and a chain of another runtime class, or with extensions' guards,
  is built at the start as before.
- On PostgreSQL an async run's end (``run.completed`` with the run's status and output) is sent
  from the event loop, not handed to the store's threads, when it is the final append alone; with
  finish ops (an extension's, kept payloads to drop) it goes through the threads with them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import wflo
from wflo import _config, _wiring
from wflo.config import Runtime
from wflo.engine import _executor, _workflow
from wflo.ext import add_finish_op, current_run

BUILT: list[str] = []
"""The run ids whose guard chain was built (``_wiring.run_guards``), in order (see ``built``)."""


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """:data:`BUILT`, counted from now."""
    BUILT.clear()
    real = _wiring.run_guards

    def counted(rt: Any, record: Any, store: Any) -> Any:
        BUILT.append(record.id)
        return real(rt, record, store)

    monkeypatch.setattr(_wiring, "run_guards", counted)
    monkeypatch.setattr(_executor, "_guard_factories", [])  # another module's extension (test_ext) stays out
    return BUILT


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[None]:
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db")
    yield
    _config.reset()


@wflo.step(name="er-tiny")
def tiny(i: int) -> int:
    return i + 1


@wflo.workflow(name="er-empty")
def empty() -> int:
    return 0


@wflo.workflow(name="er-aempty")
async def aempty() -> int:
    return 0


@wflo.workflow(name="er-one-step")
def one_step() -> int:
    before = list(BUILT)
    value = tiny(1)
    assert before == [] and len(BUILT) == 1, (before, BUILT)  # built by the step, not before the body
    return value


@wflo.workflow(name="er-threads")
def in_threads() -> list[int]:
    out: list[int] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        out.append(tiny(i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(out)


def test_a_run_without_calls_builds_no_guard_chain(sqlite: None, built: list[str]) -> None:
    assert empty.run() == 0
    assert asyncio.run(aempty.arun()) == 0
    assert built == []


def test_the_chain_is_built_at_the_first_call_once_whichever_thread_makes_it(sqlite: None, built: list[str]) -> None:
    assert one_step.run() == 2
    assert in_threads.run() == [1, 2, 3, 4]
    assert len(built) == 2 and len(set(built)) == 2


def test_the_http_clients_are_wrapped_at_the_start_of_a_run_without_calls(
    sqlite: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapped: list[bool] = []
    monkeypatch.setattr(Runtime, "intercept", lambda self: wrapped.append(True))
    assert empty.run() == 0
    assert wrapped


_MISSING_CLIENT = """
import sys

looked = []


class Missing:  # httpx2 as where it is not installed (most places)
    def find_spec(self, name, path=None, target=None):
        if name == "httpx2":
            looked.append(name)
            raise ModuleNotFoundError(name)
        return None


sys.meta_path.insert(0, Missing())
import wflo
from wflo.integrations import _http

wflo.configure(database=sys.argv[1])


@wflo.workflow(name="er-missing-client")
def empty() -> int:
    return 0


for _ in range(5):
    assert empty.run() == 0
print(len(looked), "httpx2" in _http._installed)
sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, Missing)]
sys.path.insert(0, sys.argv[2])
import httpx2  # installed after all (a stand-in on httpx's classes): wrapped at its import

print(*(getattr(vars(c).get("send"), "__module__", None) for c in (httpx2.Client, httpx2.AsyncClient)), "httpx2" in _http._installed)
"""

_STAND_IN = """
import httpx
from httpx import AsyncByteStream, SyncByteStream


class Client(httpx.Client):
    pass


class AsyncClient(httpx.AsyncClient):
    pass
"""


def test_an_http_client_that_is_not_installed_is_looked_for_once_and_wrapped_when_imported(tmp_path: Path) -> None:
    """Every run's start wraps the HTTP clients; a library that is not installed was looked for
    again at each run (a failed import searches ``sys.path``: ~0.1 ms a run where ``httpx2`` is
    missing). Now once, and the import hook wraps it if it is imported later: the closed world
    holds."""
    import subprocess
    import sys

    (tmp_path / "later" / "httpx2").mkdir(parents=True)
    (tmp_path / "later" / "httpx2" / "__init__.py").write_text(_STAND_IN)
    src = str(Path(wflo.__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", _MISSING_CLIENT, f"sqlite:///{tmp_path}/wflo.db", str(tmp_path / "later")],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, later = done.stdout.splitlines()
    assert first == "1 False"
    assert later == "wflo.integrations._http wflo.integrations._http True"


def test_a_runtime_of_its_own_class_or_an_extension_gets_its_chain_at_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    class Mine(Runtime):
        def run_guards(self, wf: Any, record: Any, store: Any) -> list[Any]:
            seen.append("runtime")
            return super().run_guards(wf, record, store)

    monkeypatch.setattr(_executor, "_guard_factories", [])
    rt = Mine(database=f"sqlite:///{tmp_path}/mine.db")
    try:
        with rt.activate():
            assert empty.run() == 0
        assert seen == ["runtime"]

        def factory(wf: Any, record: Any) -> list[Any]:
            seen.append("factory")
            return []

        _executor.add_guard_factory(factory)
        with rt.activate():
            assert empty.run() == 0
        assert seen == ["runtime", "runtime", "factory"]
    finally:
        rt.close()


def test_a_loop_guard_built_late_still_counts_from_the_first_call(sqlite: None) -> None:
    @wflo.workflow(name="er-capped", guards=wflo.LoopGuard(max_steps=2))
    def capped() -> int:
        return sum(tiny(i) for i in range(3))

    with pytest.raises(wflo.errors.LoopDetectedError):
        capped.run()


# ----------------------------------------------------------------------------- PostgreSQL
@pytest.fixture
def pg(pg_url: str) -> Iterator[Any]:
    _config.configure(database=pg_url, lease_seconds=5.0)
    store = _config.get_store()
    yield store
    _config.reset()


def _spy_off_loop(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    real = store.off_loop

    def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        names.append(getattr(fn, "__name__", repr(fn)))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(store, "off_loop", spy)
    return names


@pytest.mark.postgres
def test_an_async_runs_end_is_sent_from_the_loop_on_postgres(pg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _spy_off_loop(pg, monkeypatch)

    @wflo.workflow(name="er-pg-aempty")
    async def flow(x: int) -> dict[str, int]:
        return {"x": x}

    assert asyncio.run(flow.options(id="er-pg-1").arun(7)) == {"x": 7}
    assert "_finish_ok" not in names
    run = pg.get_run("er-pg-1")
    assert run.status == "succeeded" and run.lease_owner is None
    assert wflo.RunHandle("er-pg-1", pg).result() == {"x": 7}
    assert [e.type for e in pg.events("er-pg-1")] == ["run.created", "run.started", "run.completed"]


@pytest.mark.postgres
def test_an_async_run_on_postgres_needs_no_thread_once_the_store_is_open(
    pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    @wflo.workflow(name="er-pg-nothread")
    async def flow(x: int) -> int:
        return x * 2

    @wflo.workflow(name="er-pg-other")
    async def other() -> int:
        return 0

    # No extension's guard factory: another test module's, added when it is imported, would make
    # every run build its guards at the start (this test then depended on the modules collected).
    monkeypatch.setattr(_executor, "_guard_factories", [])
    assert asyncio.run(flow.arun(1)) == 2  # the first run of a process may wrap the HTTP clients on a thread
    names = _spy_off_loop(pg, monkeypatch)
    hops: list[str] = []
    real_submit = _workflow._openers.submit

    def submit(key: Any, fn: Any) -> Any:
        hops.append(repr(fn))
        return real_submit(key, fn)

    monkeypatch.setattr(_workflow._openers, "submit", submit)

    async def main() -> list[int]:
        return [await flow.options(id=f"er-nothread-{i}").arun(i) for i in range(3)]

    assert asyncio.run(main()) == [0, 2, 4]
    assert hops == [] and names == []  # created, begun and ended from the loop
    for i in range(3):
        run = pg.get_run(f"er-nothread-{i}")
        assert (run.status, run.lease_owner, run.attempts) == ("succeeded", None, 1)
        assert [e.type for e in pg.events(run.id)] == ["run.created", "run.started", "run.completed"]
    # An id that exists: its result (a finished run), or the refusal of another workflow's id.
    assert asyncio.run(flow.options(id="er-nothread-1").arun(1)) == 2
    with pytest.raises(wflo.errors.UserError):
        asyncio.run(other.options(id="er-nothread-2").arun())
    assert [e.type for e in pg.events("er-nothread-1")] == ["run.created", "run.started", "run.completed"]


@pytest.mark.postgres
def test_an_async_runs_end_with_finish_ops_goes_through_the_threads_with_them(
    pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _spy_off_loop(pg, monkeypatch)
    committed: list[str] = []

    def finish_op(store: Any, run_id: str, status: str) -> Any:
        if not run_id.startswith("er-ops-"):
            return None

        def op(cur: Any) -> None:
            committed.append(status)

        return op

    monkeypatch.setattr(_executor, "_finish_ops", [])
    add_finish_op(finish_op)

    @wflo.workflow(name="er-pg-ops")
    async def flow() -> int:
        assert current_run() is not None
        return 1

    assert asyncio.run(flow.options(id="er-ops-1").arun()) == 1
    assert "_finish_ok" in names
    assert committed == ["succeeded"]
    assert pg.get_run("er-ops-1").status == "succeeded"


@pytest.mark.postgres
def test_an_async_runs_end_from_the_loop_is_the_lean_end_statement(pg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the loop an async run ends with the statement the sync path sends (``_END`` on a
    schema with m025), not ``wflo_append``: the same fence, row, notification and chain."""
    from wflo.audit import verify_run
    from wflo.store._pgdirect import LoopWriter

    monkeypatch.setattr(_executor, "_guard_factories", [])  # see the no-thread test above
    sent: list[str] = []
    real = LoopWriter._send

    def spy(self: Any, stmt: Any, params: Any) -> Any:
        sent.append(stmt.sql)
        return real(self, stmt, params)

    monkeypatch.setattr(LoopWriter, "_send", spy)

    @wflo.workflow(name="er-pg-lean-end")
    async def flow() -> list[str]:
        return ["é", "x"]

    assert asyncio.run(flow.options(id="er-pg-lean-end-1").arun()) == ["é", "x"]
    ends = [sql for sql in sent if "INSERT INTO runs" not in sql]  # the create may come from the loop too
    assert len(ends) == 1 and "finished_at" in ends[0] and "wflo_append" not in ends[0]
    assert "wflo_lease_lost" in ends[0]
    run = pg.get_run("er-pg-lean-end-1")
    assert (run.status, run.lease_owner, run.output) == ("succeeded", None, ["é", "x"])
    assert [e.type for e in pg.events(run.id)] == ["run.created", "run.started", "run.completed"]
    assert verify_run(pg, run.id).ok
