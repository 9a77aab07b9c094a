"""P3 for child workflows: SIGKILL a parent's process while its children run, then resume it.

A sync parent runs its children in its own stack and ``start``s one more (run by a worker thread
of the same process); an async parent awaits ``asyncio.gather`` of its children and ``astart``s
one more. Kills land in a child's step, between children, in a start, in the worker thread. The
resumed parent must find the same children (ids derived from its journal), none of them may be
started twice, no finished step may run again, and every chain must verify (`wflo audit verify`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _killloop import chaos_env, count_effects, effect_lines, kill_then_finish
from childapp import CHILDREN, STEPS, expected

from wflo import _config
from wflo.audit import verify_chain

HERE = Path(__file__).parent
APP = HERE / "childapp.py"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_parent_with_children_at_random_points_then_resume(store_url: str, tmp_path: Path, mode: str) -> None:
    rng = random.Random(int(os.environ.get("WFLO_CHAOS_SEED", "2718")))
    effects = tmp_path / "effects.log"
    env = chaos_env(store_url)
    run_id = f"parent-{mode}"

    def wait_before_kill(proc: subprocess.Popen[str]) -> None:
        # Once this attempt has run a few more step lines (or a while, wherever it is).
        started = effect_lines(effects)
        want = rng.randint(1, 6)
        for _ in range(250):
            try:
                proc.wait(timeout=0.02)
                return
            except subprocess.TimeoutExpired:
                pass
            if effect_lines(effects) - started >= want:
                return

    finished, kills = kill_then_finish(
        [sys.executable, str(APP), mode, run_id, str(effects)], env, wait_before_kill=wait_before_kill, kills_wanted=5
    )
    assert finished == expected()
    assert kills >= 3, "the kills all landed after the run finished"

    _config.configure(database=store_url)
    store = _config.get_store()
    assert store.get_run(run_id).status == "succeeded"
    children = store.list_runs(parent_id=run_id, limit=100)
    assert len(children) == CHILDREN + 1, [c.id for c in children]  # no child started twice
    assert all(c.status == "succeeded" for c in children), [(c.id, c.status) for c in children]
    for rid in [run_id, *(c.id for c in children)]:
        calls = Counter(e.data["call"] for e in store.events(rid) if e.type == "call.completed")
        assert set(calls.values()) == {1}, (rid, calls)  # each call journaled once
        assert verify_chain(store, rid).ok, rid
    parent_calls = [e.data for e in store.events(run_id) if e.type == "call.completed"]
    assert len(parent_calls) == CHILDREN + 1, parent_calls  # the children and the start

    starts, ends = count_effects(effects)
    steps = {100 * c + s for c in range(CHILDREN + 1) for s in range(STEPS)}
    assert set(ends) == steps
    # A step runs again only if it was in flight when a kill landed (at most one per running
    # child per kill), never once its completion was journaled.
    assert sum(n - 1 for n in starts.values()) <= kills * (CHILDREN + 1), (starts, kills)

    verified = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "audit", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_worker_resumes_an_async_parent_and_its_children_of_a_killed_process(store_url: str, tmp_path: Path) -> None:
    """One worker process claims both an async parent and its children, whose leases lapsed
    with the killed process. The parent, replaying, waits for each child held by a slot of the
    same worker; that wait must not hold the child's place in the store's work order (the
    child's own journal writes queue behind it): before, the worker hung for good."""
    effects = tmp_path / "effects.log"
    env = {**chaos_env(store_url), "CRASHAPP_EFFECTS": str(effects)}
    proc = subprocess.Popen([sys.executable, str(APP), "async", "parent-w", str(effects)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while effect_lines(effects) < CHILDREN + 1:  # each child is in its first step or past it
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the children never started"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(2.2)  # the killed process's leases (2 s) lapse: every run is the worker's to claim
    worker = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "worker", "-i", "childapp", "-c", str(CHILDREN + 2), "--idle-exit", "2", "-q"],
        env=env, cwd=HERE, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    _config.configure(database=store_url)
    store = _config.get_store()
    run = store.get_run("parent-w")
    assert run.status == "succeeded" and run.output == expected(), run
    assert all(c.status == "succeeded" for c in store.list_runs(parent_id="parent-w", limit=100))
