"""P3: lease expiry is judged on the database's clock, never a worker's (issue 14 finding 3).

A worker whose clock runs 120 s ahead (libfaketime) used to see every live lease as expired
and take over runs whose worker was alive, running a non-idempotent step twice at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from wflo.store import open_store

HERE = Path(__file__).parent
STEPS = 4


def _env(url: str, effects: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({
        "WFLO_DATABASE_URL": url, "WFLO_LEASE_SECONDS": "3", "WFLO_POLL_INTERVAL": "0.1",
        "SKEWAPP_EFFECTS": str(effects), "SKEWAPP_SLEEP": "1.0",
        "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
    })  # fmt: skip
    return env


def _faketime() -> list[str]:
    if shutil.which("faketime") is None:
        if os.environ.get("CI"):
            pytest.fail("faketime is required in CI (apt-get install faketime)")
        pytest.skip("faketime is not installed (apt-get install faketime)")
    # Python's timed waits use CLOCK_MONOTONIC; faking it too hangs them.
    return ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", "+120s"]


@pytest.mark.slow
def test_a_worker_120s_ahead_does_not_take_a_live_run(pg_url: str, tmp_path: Path) -> None:
    skewed = _faketime()
    effects = tmp_path / "effects.log"
    env = _env(pg_url, effects)
    # The skewed clock is real: otherwise this test could pass without testing anything.
    ahead = subprocess.run([*skewed, sys.executable, "-c", "import time; print(time.time())"],
                           capture_output=True, text=True, check=True, env=env)  # fmt: skip
    assert float(ahead.stdout) - time.time() > 100

    store = open_store(pg_url)
    procs: list[subprocess.Popen[str]] = []
    try:
        store.create_run(run_id="skew-1", workflow="skewapp", input={"args": [STEPS], "kwargs": {}})
        worker = [sys.executable, "-m", "wflo.cli", "worker", "-i", "skewapp", "-q", "-c", "1"]
        alive = subprocess.Popen([*worker, "--max-runs", "1"], env=env, cwd=HERE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(alive)
        deadline = time.monotonic() + 30
        while store.get_run("skew-1").lease_owner is None:
            assert time.monotonic() < deadline, "the first worker never claimed the run"
            time.sleep(0.05)
        owner = store.get_run("skew-1").lease_owner
        # The skewed worker polls for claimable runs for the whole of the live run.
        ahead_worker = subprocess.Popen([*skewed, *worker, "--idle-exit", str(STEPS + 2)], env=env, cwd=HERE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(ahead_worker)
        _, err = ahead_worker.communicate(timeout=90)
        assert ahead_worker.returncode == 0, err
        try:
            _, err = alive.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the live worker lost its run to the skewed one: {effects.read_text().splitlines()}")
        assert alive.returncode == 0, err

        run = store.get_run("skew-1")
        assert run.status == "succeeded" and run.output == sum(range(STEPS)), run
        assert run.attempts == 1, f"the run was claimed {run.attempts} times; its owner was {owner}"
        lines = effects.read_text().splitlines()
        starts = Counter(int(line.split()[1]) for line in lines if line.startswith("start"))
        assert starts == Counter(range(STEPS)), f"a step ran twice: {lines}"
        assert len({line.split()[2] for line in lines}) == 1, f"two workers ran steps: {lines}"
    finally:
        for proc in procs:  # a worker left waiting for a run it lost must not outlive the test
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        store.close()


def _skewed_python(offset: str, url: str, code: str) -> str:
    """Run ``code`` in a Python whose clock is off by ``offset`` (libfaketime); its stdout."""
    cmd = ["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", offset, sys.executable, "-c", code]
    env = {**_env(url, Path(os.devnull)), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_approval_deadlines_are_judged_on_the_store_clock(pg_url: str) -> None:
    """A worker 120 s ahead cannot time a request out early (on_timeout="approve" would run the
    action unreviewed); a decider 120 s behind cannot decide after the deadline."""
    _faketime()
    from wflo.approvals import Inbox

    store = open_store(pg_url)
    try:
        inbox = Inbox(store)
        for rid, deadline in (("skew-a", store.now(60)), ("skew-b", store.now(-1))):
            store.create_run(run_id=rid, workflow="wf", input={})
            inbox.create(
                approval_id=f"ap-{rid}", run_id=rid, call_id="c1", tool="refund", message="refund",
                action={"tool": "refund", "kwargs": {}}, approvers=[], quorum=1, requested_by="user:requester",
                timeout_at=deadline, on_timeout="approve", escalate_to=[],
            )  # fmt: skip
        ahead = _skewed_python("+120s", pg_url, (
            "import time; from wflo.store import open_store; from wflo.approvals import Inbox\n"
            f"s = open_store({pg_url!r}); r = Inbox(s).close('ap-skew-a', 'approved', by='policy:timeout', reason='t')\n"
            "print(r.status, int(time.time()))"
        ))  # fmt: skip
        status, seen = ahead.split()
        assert int(seen) - time.time() > 100, "the clock was not skewed: the test would prove nothing"
        assert status == "pending" and inbox.get("ap-skew-a").status == "pending"

        behind = _skewed_python("-120s", pg_url, (
            "from wflo.store import open_store; from wflo.approvals import Inbox\n"
            f"s = open_store({pg_url!r})\n"
            "try:\n"
            "    Inbox(s).decide('ap-skew-b', 'approve', principal='user:bob', authenticated=True)\n"
            "    print('decided')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__)"
        ))  # fmt: skip
        assert behind == "ApprovalClosedError" and inbox.get("ap-skew-b").status == "pending"
        # On time, by the store's clock, the policy does close it.
        assert inbox.close("ap-skew-b", "rejected", by="policy:timeout", reason="t").status == "rejected"
    finally:
        store.close()
