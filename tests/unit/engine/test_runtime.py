"""Runtimes: isolated settings and stores side by side in one process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import wflo
import wflo.config
from wflo import _config
from wflo._errors import ConfigurationError
from wflo._runtime import _PROCESS
from wflo.config import Runtime, runtime
from wflo.cost import PriceBook
from wflo.ext import current_run
from wflo.guards import Policies


@wflo.workflow(name="rt-echo")
def echo(x: int) -> dict[str, object]:
    cfg = wflo.config.settings()
    return {"x": x, "principal": cfg.principal, "database": cfg.database}


def test_process_runtime_is_the_configured_singletons(tmp_path: Path) -> None:
    _config.configure(database=f"sqlite:///{tmp_path}/p.db", principal="user:proc")
    rt = runtime()
    assert rt.settings is _config.settings() and rt.store is _config.get_store()
    assert rt.prices is wflo.cost.prices and rt.policies is wflo.policies


def test_two_runtimes_side_by_side_in_two_threads(tmp_path: Path) -> None:
    _config.configure(database=f"sqlite:///{tmp_path}/process.db")
    a = Runtime(database=f"sqlite:///{tmp_path}/a.db", principal="user:a")
    b = Runtime(database=f"sqlite:///{tmp_path}/b.db", principal="user:b")
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def work(rt: Runtime, key: str) -> None:
        with rt.activate():
            barrier.wait(timeout=10)  # both runtimes active at once
            for i in range(3):
                results[f"{key}{i}"] = echo.options(id=f"{key}-{i}").run(i)
            results[key] = runtime()

    threads = [threading.Thread(target=work, args=(a, "a")), threading.Thread(target=work, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert results["a"] is a and results["b"] is b
        assert results["a0"] == {"x": 0, "principal": "user:a", "database": a.settings.database}
        assert results["b2"] == {"x": 2, "principal": "user:b", "database": b.settings.database}
        ids_a = {r.id for r in a.store.list_runs()}
        ids_b = {r.id for r in b.store.list_runs()}
        assert ids_a == {"a-0", "a-1", "a-2"} and ids_b == {"b-0", "b-1", "b-2"}
        assert a.store.get_run("a-1").options["started_by"] == "user:a"
        assert _config.get_store().list_runs() == []  # the process's store saw none of it
        assert runtime() is not a and runtime().settings is _config.settings()  # deactivated
    finally:
        a.close()
        b.close()


def test_a_runtime_takes_settings_or_options_not_both() -> None:
    with pytest.raises(wflo.UserError, match="not both"):
        Runtime(_config.Settings(), principal="user:x")
    with pytest.raises(wflo.errors.ConfigurationError):
        Runtime(lease_seconds="soon")


@wflo.workflow(name="rt-which")
def which() -> list[bool]:
    ctx = current_run()
    assert ctx is not None
    rt = runtime()
    return [ctx.runtime is rt, rt.prices is ctx.runtime.prices, rt is wflo.config.runtime()]


def test_a_run_holds_the_runtime_that_started_it(tmp_path: Path) -> None:
    book, rules = PriceBook(), Policies()
    a = Runtime(database=f"sqlite:///{tmp_path}/a.db", prices=book, policies=rules)
    try:
        assert a.prices is book and a.policies is rules
        assert Runtime().prices is not Runtime().prices  # each runtime its own book by default
        assert Runtime().prices is not wflo.cost.prices and Runtime().policies is not wflo.policies
        with a.activate():
            assert which.options(id="w1").run() == [True, True, True]
            with runtime().activate():
                assert runtime() is a
            with _PROCESS.activate():
                assert runtime().settings is _config.settings()  # the process's, inside a's block
            assert runtime() is a
    finally:
        a.close()


@wflo.workflow(name="rt-slow")
def slow() -> str:
    time.sleep(2.5)
    return "done"


def test_heartbeats_renew_a_run_on_its_runtimes_lease(tmp_path: Path) -> None:
    """The process's lease is a minute, the runtime's one second: the run's lease is renewed
    every third of a second, so nobody can take it while it runs."""
    _config.configure(database=f"sqlite:///{tmp_path}/p.db", lease_seconds=60.0)
    rt = Runtime(database=f"sqlite:///{tmp_path}/a.db", lease_seconds=1.0)
    taken: list[str | None] = []

    def thief() -> None:
        time.sleep(2.0)  # twice the lease: it would have lapsed without a beat
        taken.append(rt.store.claim("slow-1", "thief:1:x", 1.0).lease_owner)

    try:
        with rt.activate():
            other = threading.Thread(target=thief)
            other.start()
            assert slow.options(id="slow-1").run() == "done"
            other.join(timeout=10)
        assert taken and taken[0] not in (None, "thief:1:x")
    finally:
        rt.close()


def test_the_heartbeat_thread_outlives_unreadable_settings_between_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between runs the heartbeat thread has nothing to renew: it waits for the next run and
    reads no settings, so an environment that stopped making sense meanwhile (a test's bad
    value; CI caught the thread dying of it) does not end it, and the next run is renewed."""
    from wflo.engine._heartbeat import heartbeats

    _config.configure(database=f"sqlite:///{tmp_path}/p.db", lease_seconds=1.0)
    assert slow.options(id="beat-1").run() == "done"  # the thread runs, then has no run
    thread = heartbeats._thread
    assert thread is not None and thread.is_alive()
    monkeypatch.setenv("WFLO_PG_POOLER", "statement")  # not a valid setting
    _config.reset()  # as between tests: the process's settings are read again at next use
    with pytest.raises(ConfigurationError):
        _config.settings()  # and they now fail to load
    heartbeats._wake.set()  # the thread looks again now
    time.sleep(0.3)
    assert thread.is_alive()
    monkeypatch.delenv("WFLO_PG_POOLER")
    _config.configure(database=f"sqlite:///{tmp_path}/p.db", lease_seconds=1.0)
    taken: list[str | None] = []

    def thief() -> None:
        time.sleep(2.0)  # twice the lease: it would have lapsed without a beat
        taken.append(_config.get_store().claim("beat-2", "thief:1:x", 1.0).lease_owner)

    other = threading.Thread(target=thief)
    other.start()
    assert slow.options(id="beat-2").run() == "done"
    other.join(timeout=10)
    assert taken and taken[0] not in (None, "thief:1:x") and heartbeats._thread is thread
