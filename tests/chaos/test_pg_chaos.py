"""P3 and P1 on PostgreSQL under chaos (issue 14): 4 worker processes drain 1,000 runs while the
database is restarted twice and workers are SIGKILLed at random.

Afterwards: every run succeeded, every finished step is journaled once, no step ran on two
workers at the same time, and the workflow's budget was never passed. The test runs its own
PostgreSQL cluster (initdb in a temporary directory, as the ``postgres`` OS user, on a free
port) so that restarting it disturbs nobody else's tests.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo.testing import LLMServer, Reply

HERE = Path(__file__).parent
RUNS = 1000
WORKERS = 4
LIMIT = Decimal("5")


@dataclass
class Cluster:
    bindir: str
    datadir: str
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        cmd = [f"{self.bindir}/pg_ctl", "-D", self.datadir, "-w", "-t", "60", *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        # fsync=off is safe here (an immediate stop keeps what reached the kernel; the machine
        # does not crash); synchronous_commit=off is not: it makes the server forget commits it
        # acknowledged, which wflo relies on it to keep (a claim, a heartbeat, a step's record).
        opts = (f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=on")  # fmt: skip
        self.ctl("-l", f"{self.datadir}/log", "-o", opts, "start")

    def restart(self, mode: str) -> None:
        self.ctl("-m", mode, "stop")
        self.start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_cluster(kind: type[Cluster] = Cluster, prefix: str = "wflo-chaos-pg-") -> Iterator[Cluster]:
    """A throw-away PostgreSQL cluster of ``kind`` (its ``start`` sets the server's options), on
    a free port, owned by the ``postgres`` OS user when run as root; stopped and removed after."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("the PostgreSQL server binaries (initdb) are required in CI")
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    bindir = os.path.dirname(bins[-1])
    user = None
    base = tempfile.mkdtemp(prefix=prefix)
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = "postgres"
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    datadir = os.path.join(base, "data")
    init = [f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
    subprocess.run(["runuser", "-u", user, "--", *init] if user else init, check=True, capture_output=True, timeout=120)
    cluster = kind(bindir, datadir, _free_port(), user)
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[Cluster]:
    with private_cluster() as cluster:
        yield cluster


def _worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "wflo.cli", "worker", "-i", "chaosapp", "-q", "-c", "4"],
                            env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _chaos(
    cluster: Cluster, store: Any, workers: list[subprocess.Popen[str]], env: dict[str, str], rng: random.Random
) -> tuple[dict[int, float], list[str]]:
    """Restart the database twice and SIGKILL random workers until every run has finished."""
    killed: dict[int, float] = {}  # pid -> when it was SIGKILLed
    restarts: list[str] = []
    started = time.monotonic()
    next_kill = started + rng.uniform(2, 5)
    # Kills also come with progress, not only with time: a fast machine drains the queue in
    # seconds, and a chaos run with one kill proves little. One kill in each of four windows.
    kill_at = [int(RUNS * rng.uniform(lo, hi)) for lo, hi in ((0.05, 0.2), (0.25, 0.4), (0.45, 0.6), (0.7, 0.85))]
    deadline = started + 360

    def done_count() -> int:
        for _ in range(100):  # the database may be restarting under us
            try:
                counts = store.count_runs_by_status()
                return sum(n for s, n in counts.items() if s in ("succeeded", "failed", "cancelled", "stopped"))
            except Exception:
                time.sleep(0.2)
        raise AssertionError("the store stayed unreachable")

    while (done := done_count()) < RUNS:
        assert time.monotonic() < deadline, f"only {done} of {RUNS} runs finished"
        # Restart the database twice, a third and two thirds of the way through.
        if len(restarts) < 2 and done >= RUNS * (len(restarts) + 1) // 3:
            mode = ("immediate", "fast")[len(restarts)]
            cluster.restart(mode)
            restarts.append(f"{mode} at {done}")
        for n, proc in enumerate(workers):
            if proc.poll() is not None:
                _, err = proc.communicate()
                # Exit 4: a replacement that started while the database was down refused to
                # start (StoreUnavailableError, one line); a supervisor would start it again.
                assert proc.returncode == 4 and "cannot open the wflo store" in err, err[-2000:]
                workers[n] = _worker(env)
        due = bool(kill_at) and done >= kill_at[0]
        if due:
            kill_at.pop(0)
        if (due or time.monotonic() >= next_kill) and len(killed) < 8:
            victim = rng.randrange(len(workers))
            proc = workers[victim]
            proc.send_signal(signal.SIGKILL)
            killed[proc.pid] = time.time()
            proc.communicate()
            workers[victim] = _worker(env)
            next_kill = time.monotonic() + rng.uniform(2, 6)
        time.sleep(0.2)
    return killed, restarts


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(420)
def test_four_workers_drain_1000_runs_through_restarts_and_kills(private_pg: Cluster, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("WFLO_CHAOS_SEED", "1414")))
    effects = tmp_path / "effects.log"
    with LLMServer() as llm:
        llm.responder = lambda request: Reply("ok", output_tokens=3)
        _config.configure(database=private_pg.url, lease_seconds=2.0, poll_interval=0.05)
        wflo.budgets.set("workflow:chaosapp", usd=str(LIMIT), period="none")
        store = _config.get_store()
        for i in range(RUNS):
            store.create_run(run_id=f"c{i:04}", workflow="chaosapp", input={"args": [i], "kwargs": {}})
        env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
        env.update({
            "WFLO_DATABASE_URL": private_pg.url, "WFLO_LEASE_SECONDS": "2", "WFLO_POLL_INTERVAL": "0.05",
            "CHAOS_LLM": llm.openai_url, "CHAOS_EFFECTS": str(effects),
            "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        })  # fmt: skip

        workers = [_worker(env) for _ in range(WORKERS)]
        try:
            killed, restarts = _chaos(private_pg, store, workers, env, rng)
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
            for proc in workers:
                _, err = proc.communicate(timeout=60)
                # -SIGTERM: a replacement still importing when asked to stop.
                assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()
        assert len(restarts) == 2 and len(killed) >= 3, (restarts, killed)

        # Every run finished, with the right result.
        runs = {r.id: r for r in store.list_runs(limit=RUNS + 10)}
        assert Counter(r.status for r in runs.values()) == Counter({"succeeded": RUNS})
        assert all(runs[f"c{i:04}"].output == 2 * i for i in range(RUNS))

        # Every finished step and call is journaled exactly once (3 per run).
        llm_cost = Decimal(0)
        for run_id in runs:
            completed = [e.data for e in store.events(run_id) if e.type == "call.completed"]
            calls = Counter(d["call"] for d in completed)
            assert len(calls) == 3 and set(calls.values()) == {1}, (run_id, completed)
            llm_cost += sum(Decimal(d["cost_usd"]) for d in completed if d.get("cost_usd"))

        # No step ran on two workers at once: a re-execution starts only after the first one
        # ended or its worker was killed.
        spans: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
        open_: dict[tuple[str, str, str], float] = {}
        for line in effects.read_text().splitlines():
            kind, step, i, pid, at = line.split()
            if kind == "start":
                open_[(step, i, pid)] = float(at)
            else:
                spans[(step, i)].append((open_.pop((step, i, pid)), float(at), pid))
        for (step, i, pid), began in open_.items():
            spans[(step, i)].append((began, killed.get(int(pid), float("inf")), pid))
        for key, runs_of_step in spans.items():
            runs_of_step.sort()
            for (_, end, pid), (begin, _, other) in itertools.pairwise(runs_of_step):
                assert begin >= end, f"step {key} ran on workers {pid} and {other} at once"
        assert len(spans) == 2 * RUNS

        # The budget held: nothing settled or reserved past the limit, and every journaled
        # call was charged.
        usage = wflo.budgets.usage("workflow:chaosapp")[0]
        assert usage.spent + usage.reserved <= LIMIT
        assert usage.spent >= llm_cost > 0
        assert llm.request_count >= RUNS
