"""A worker whose lease lapsed never starts another step (P3: a run's step never runs on two
workers at once; finished steps are never redone).

The journal's fence stops a lapsed worker's *writes*, but a step starts without a write: a
worker paused past its lease (SIGSTOP here; a GC pause or a swapped-out VM in life) or whose
heartbeats failed (the store away) could, before its next write, start the step that another
worker, having claimed the expired run, is running too. Both stores; real worker processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wflo import _config
from wflo.engine import registered_workers
from wflo.store import open_store

HERE = Path(__file__).parent
APP = HERE / "leaseapp.py"
LEASE = 1.0


def _env(url: str, effects: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "LEASE_"))}
    env.update({
        "WFLO_DATABASE_URL": url, "WFLO_LEASE_SECONDS": str(LEASE), "WFLO_POLL_INTERVAL": "0.05",
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]), "LEASE_EFFECTS": str(effects), **extra,
    })  # fmt: skip
    return env


def _serve(env: dict[str, str], idle: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(APP), str(idle)], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _lines(effects: Path) -> list[tuple[str, str, int, float]]:
    if not effects.exists():
        return []
    out = []
    for line in effects.read_text().splitlines():
        kind, step, pid, at = line.split()
        out.append((kind, step, int(pid), float(at)))
    return out


def _overlaps(effects: Path) -> list[str]:
    """Steps that ran on two processes at once (a start while another pid's run of it was open)."""
    open_: dict[str, dict[int, float]] = {}
    found = []
    for kind, step, pid, at in sorted(_lines(effects), key=lambda r: r[3]):
        runs = open_.setdefault(step, {})
        if kind == "start":
            others = [p for p in runs if p != pid]
            if others:
                found.append(f"step {step!r} ran on workers {others[0]} and {pid} at once")
            runs[pid] = at
        else:
            runs.pop(pid, None)
    return found


def _exits(a: subprocess.Popen[str], err_a: str, b: subprocess.Popen[str] | None, err_b: str) -> str:
    """Both workers' exit codes and the ends of their logs, whole (a tuple's repr is cut short)."""
    return "\n".join(f"worker {name} exited {p.returncode if p else None}; its log ends:\n{err[-4000:]}"
                     for name, p, err in (("A", a, err_a), ("B", b, err_b)))  # fmt: skip


def _stopped(pid: int) -> bool:
    # /proc/PID/stat: "pid (comm) STATE ..."; T = stopped by a signal.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _check_run(store: Any, run_id: str, i: int, effects: Path, *, once: bool = True) -> None:
    run = store.get_run(run_id)
    assert run.status == "succeeded" and run.output == "onetwothree", run
    completed = Counter(e.data["name"].rsplit(".", 1)[-1] for e in store.events(run_id) if e.type == "call.completed")
    assert completed == Counter({"one": 1, "two": 1, "three": 1}), completed  # each journaled once
    if once:  # no step was in flight when the lease was lost: none ran twice
        starts = Counter(step for kind, step, _, _ in _lines(effects) if kind == "start" and step.endswith(f".{i}"))
        assert starts == Counter({f"one.{i}": 1, f"two.{i}": 1, f"three.{i}": 1}), starts


@pytest.mark.slow
def test_worker_frozen_past_its_lease_does_not_start_the_next_step(store_url: str, tmp_path: Path) -> None:
    """A worker SIGSTOPped right after journaling a step, past its lease, while another worker
    claims the run and runs the next step: on SIGCONT it must not start that step (nor any
    other); it gives the run up (``LeaseLost``) and the other worker finishes it once."""
    _config.configure(database=store_url, lease_seconds=LEASE)
    store = open_store(store_url)
    store.ensure_schema()
    store.create_run(run_id="frozen-1", workflow="leaseapp", input={"args": [0], "kwargs": {}})
    effects, token = tmp_path / "effects.log", tmp_path / "freeze"
    token.touch()
    # Steps of 0.8 s, not a multiple of the beat (lease / 3): A freezes between beats, not
    # inside a heartbeat's transaction, whose row lock (PostgreSQL) would keep B from claiming.
    env = _env(store_url, effects, LEASE_FREEZE=str(token), LEASE_STEP_SECONDS="0.8")
    a = _serve(env, idle=4)
    b: subprocess.Popen[str] | None = None
    try:
        _wait("worker A to freeze after step one", lambda: not token.exists() and _stopped(a.pid))
        time.sleep(LEASE * 1.5)  # A's lease lapses while it is frozen
        b = _serve(env, idle=2)
        _wait("worker B to start step two", lambda: ("start", "two.0", b.pid) in {r[:3] for r in _lines(effects)})
        os.kill(a.pid, signal.SIGCONT)  # A wakes while B runs step two (0.8 s)
        _, err_a = a.communicate(timeout=60)
        out_b, err_b = b.communicate(timeout=60)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()
    assert a.returncode == 0 and b.returncode == 0, _exits(a, err_a, b, err_b)
    assert "lost the lease of run frozen-1" in err_a, err_a
    assert "served 1" in out_b, (out_b, err_b)
    a_steps = [step for kind, step, pid, _ in _lines(effects) if pid == a.pid and kind == "start"]
    assert a_steps == ["one.0"], f"the frozen worker started {a_steps} (after its lease lapsed)"
    assert _overlaps(effects) == []
    _check_run(store, "frozen-1", 0, effects)


RUNS = 6
OUTAGE = LEASE * 3


@pytest.mark.slow
def test_sqlite_store_away_past_the_lease_then_back(sqlite_url: str, tmp_path: Path) -> None:
    """The store is away (its write lock held by another connection) for three leases while
    worker A is inside the first step of 6 runs: A's heartbeats fail (its writes give up on the
    lock after 50 ms) and B's claims too. A's steps end just before the store is back; then A
    journals them (nobody claimed yet: the fence passes), while B may claim the expired runs. A must
    renew before its next step, so no step ever runs on both, whichever gets there first.

    This one does not force the losing order (B's claim landing between A's journal write
    and A's next heartbeat); the SIGSTOP test above does."""

    def outage(steps_end: Callable[[], None]) -> None:
        conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock: every writer (heartbeats too) waits
            time.sleep(OUTAGE)
            steps_end()
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    _store_away(sqlite_url, tmp_path, outage, LEASE_BUSY_MS="50")


@pytest.mark.slow
def test_postgres_server_away_past_the_lease_then_back(tmp_path: Path) -> None:
    """As above with the real PostgreSQL server stopped for three leases (a private cluster:
    restarting it disturbs nobody), heartbeats and claims failing on refused connections."""
    from test_pg_chaos import private_cluster

    with private_cluster(prefix="wflo-lease-pg-") as cluster:

        def outage(steps_end: Callable[[], None]) -> None:
            cluster.ctl("-m", "fast", "stop")
            time.sleep(OUTAGE)
            steps_end()
            cluster.start()

        _store_away(cluster.url, tmp_path, outage)


def _store_away(url: str, tmp_path: Path, outage: Callable[[Callable[[], None]], None], **env_extra: str) -> None:
    _config.configure(database=url, lease_seconds=LEASE)
    store = open_store(url)
    ids = [f"away-{i}" for i in range(RUNS)]
    for i, run_id in enumerate(ids):
        store.create_run(run_id=run_id, workflow="leaseapp", input={"args": [i], "kwargs": {}})
    effects, release = tmp_path / "effects.log", tmp_path / "release-one"
    env = _env(url, effects, LEASE_HOLD_ONE=str(release), LEASE_STEP_SECONDS="0.3", LEASE_CONCURRENCY=str(RUNS),
               **env_extra)  # fmt: skip
    a = _serve(env, idle=4)
    b: subprocess.Popen[str] | None = None
    try:
        _wait("worker A to start step one of every run",
              lambda: sum(1 for k, st, pid, _ in _lines(effects) if k == "start" and pid == a.pid) == RUNS)  # fmt: skip
        b = _serve(env, idle=4)
        # B is up (its store open, its registry row written) before the store goes away: a
        # worker that cannot open its store at start exits with StoreUnavailableError. Under
        # load B's start (imports, schema check) took longer than a fixed second (CI, once).
        _wait("worker B to be up", lambda: any(w.pid == b.pid for w in registered_workers(store)))
        time.sleep(0.3)  # and polling

        def steps_end() -> None:
            # A's first steps end just before the store comes back. Not after: once the store
            # is back B may claim an expired run before this test process gets to release A
            # (``pg_ctl start`` returns some time after the server accepts connections), and
            # re-run a step A is still inside. Such a step was in flight when the lease
            # lapsed: it may run again (P3), but nothing can stop the first run of it. What
            # is asserted is that neither worker *starts* a step the other is running.
            release.touch()
            _wait("A's first steps to end", lambda: sum(1 for k, *_ in _lines(effects) if k == "end") >= RUNS)

        outage(steps_end)
        _, err_a = a.communicate(timeout=90)
        _, err_b = b.communicate(timeout=90)
    finally:
        release.touch()
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert a.returncode == 0 and b.returncode == 0, _exits(a, err_a, b, err_b)
    assert _overlaps(effects) == []
    store = open_store(url)
    for i, run_id in enumerate(ids):
        # Step one may run again (on B, when B's claim beat A's journal write): it was in
        # flight, not finished. What must hold: never at once, each step journaled once.
        _check_run(store, run_id, i, effects, once=False)
