"""wflo through PgBouncer in transaction mode (issue 20): Debian's pgbouncer, started here on a
free port in front of the test PostgreSQL, with a small server pool so that client connections
really share server connections.

What transaction pooling breaks, and what the store does about it (``?pooler=transaction``):
psycopg's automatic prepared statements live on one server connection, which the next
transaction may not get (PgBouncer < 1.21 does not track them): off. ``LISTEN`` subscribes
whichever server connection ran it: the change feed listens on ``listen_url``, a direct
connection, or polls. Advisory locks are transaction-level already; the store sets no session
state. ``options=-csearch_path=…`` is not passed on by PgBouncer 1.18, so each test gets its own
database instead of the usual schema.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest

import wflo
from wflo import _config
from wflo.errors import ConfigurationError
from wflo.store import open_store, parse_iso
from wflo.testing import LLMServer, Reply

pytestmark = pytest.mark.postgres

PG_URL = os.environ.get("WFLO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")  # as in tests/conftest.py
CHAOS = Path(__file__).parent.parent / "chaos"  # crashapp.py: a workflow logging each step's effects


@dataclass
class Bouncer:
    direct: str  # straight to PostgreSQL, the test's own database
    pooled: str  # the same database through PgBouncer (libpq URL, nothing of wflo's)

    @property
    def url(self) -> str:
        """The store URL through PgBouncer, as a deployment would give it."""
        return f"{self.pooled}?pooler=transaction"

    def url_with_listen(self) -> str:
        return f"{self.url}&listen_url={quote(self.direct + '?application_name=wflo-listen', safe='')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def bouncer(pg_url: str, tmp_path: Path) -> Iterator[Bouncer]:
    # pg_url: PostgreSQL is reachable (or the test skips, and fails in CI); its schema goes unused.
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is required in CI (apt-get install pgbouncer)")
        pytest.skip("pgbouncer is not installed")
    import psycopg

    db = f"wflo_pgb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    base = PG_URL.rsplit("/", 1)[0]
    host_port = base.rsplit("@", 1)[1]
    host, pg_port = host_port.split(":") if ":" in host_port else (host_port, "5432")
    port = _free_port()
    # Its own directory in /tmp, readable by the unprivileged user pgbouncer runs as under root.
    home = Path(tempfile.mkdtemp(prefix="wflo-pgbouncer-"))
    home.chmod(0o755)
    (home / "users.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={host} port={pg_port}\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home}/users.txt\npool_mode = transaction\n"
        # 3 server connections for all clients: wflo's pools (10 per process) must share them.
        "default_pool_size = 3\nmax_client_conn = 500\nignore_startup_parameters = extra_float_digits\n"
    )
    for f in home.iterdir():
        f.chmod(0o644)
    cmd = [binary, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        cmd[1:1] = ["-u", "nobody"]
    log = tmp_path / "pgbouncer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"pgbouncer did not start: {log.read_text()}")
                time.sleep(0.05)
        yield Bouncer(direct=f"{base}/{db}", pooled=f"postgresql://postgres@127.0.0.1:{port}/{db}")
    finally:
        _config.reset()
        proc.send_signal(signal.SIGTERM)  # only the pgbouncer this fixture started
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _hammer(url: str, threads: int = 6, reads: int = 40) -> list[BaseException]:
    """Several threads, each reading the same runs many times (past psycopg's prepare threshold)."""
    errors: list[BaseException] = []
    with open_store(url) as store:
        store.create_run(run_id="r", workflow="w", input={})

        def go() -> None:
            try:
                for _ in range(reads):
                    assert store.get_run("r").id == "r"
                    store.events("r")
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=go) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
    return errors


def test_prepared_statements_break_through_the_pooler_unless_turned_off(bouncer: Bouncer) -> None:
    # What happens without the setting: psycopg prepares a query after 5 uses on one client
    # connection; PgBouncer hands the next transaction another server connection.
    errors = _hammer(bouncer.pooled)
    assert errors and any("prepared statement" in str(e) for e in errors), errors
    assert _hammer(bouncer.url) == []  # with ?pooler=transaction nothing is prepared


def test_the_settings_say_it_when_the_url_does_not(bouncer: Bouncer, monkeypatch: pytest.MonkeyPatch) -> None:
    _config.configure(pg_pooler="transaction")
    assert _hammer(bouncer.pooled) == []
    with pytest.raises(ConfigurationError, match="pooler must be none, session or transaction"):
        open_store(f"{bouncer.pooled}?pooler=statement")
    monkeypatch.setenv("WFLO_PG_POOLER", "statement")
    with pytest.raises(ConfigurationError, match="WFLO_PG_POOLER='statement' is not a valid pg_pooler setting"):
        _config.configure()


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update({"WFLO_DATABASE_URL": url, "WFLO_LEASE_SECONDS": "2", "WFLO_POLL_INTERVAL": "0.05",
                "PYTHONPATH": os.pathsep.join([str(CHAOS), *sys.path]), **extra})  # fmt: skip
    return env


def test_steps_survive_sigkill_and_resume_through_the_pooler(bouncer: Bouncer, tmp_path: Path) -> None:
    steps = 30
    effects = tmp_path / "effects.log"
    env = _env(bouncer.url)
    app = [sys.executable, str(CHAOS / "crashapp.py"), "pgb-run", str(effects), str(steps)]
    proc = subprocess.Popen(app, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while (not effects.exists() or effects.read_text().count("end ") < 5) and proc.poll() is None:
        assert time.monotonic() < deadline, "the workflow made no progress through pgbouncer"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    done_before = effects.read_text().count("end ")
    assert done_before < steps, "the run finished before the kill; nothing was resumed"

    time.sleep(2.1)  # the killed process's lease expires
    again = subprocess.run(app, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert int(again.stdout.strip().splitlines()[-1]) == sum(i * i for i in range(steps))

    _config.configure(database=bouncer.url)
    store = _config.get_store()
    completed = Counter(e.data["call"] for e in store.events("pgb-run") if e.type == "call.completed")
    assert len(completed) == steps and set(completed.values()) == {1}  # every step journaled once
    starts = Counter(line.split()[1] for line in effects.read_text().splitlines() if line.startswith("start"))
    assert sum(starts.values()) <= steps + 1  # only the step in flight at the kill ran twice
    from wflo.audit import verify_chain

    assert verify_chain(store, "pgb-run").ok


def test_budget_guarded_llm_call_through_the_pooler(bouncer: Bouncer) -> None:
    import urllib.request

    from wflo.cost._api import ledger

    _config.configure(database=bouncer.url)
    with LLMServer() as llm:
        llm.script(Reply("pooled", input_tokens=10, output_tokens=2))

        def send(body: dict[str, object]) -> str:
            import json

            req = urllib.request.Request(llm.openai_url + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=10) as r:
                return str(json.loads(r.read())["choices"][0]["message"]["content"])

        @wflo.workflow(budget=wflo.Budget(usd="0.0006"))
        def flow() -> str:
            chat = {"model": "gpt-4o-mini", "max_tokens": 50}
            text = send({**chat, "messages": [{"role": "user", "content": "hi"}]})
            try:
                send({**chat, "messages": [{"role": "user", "content": "x" * 20_000}]})
            except wflo.BudgetExceededError as exc:
                text += f" / refused on {exc.scope}"
            return text

        assert flow.options(id="pgb-llm").run() == "pooled / refused on run:pgb-llm"
        assert llm.request_count == 1
    usage = ledger().scope_usage("run:pgb-llm")
    assert usage.reserved == 0 and Decimal(0) < usage.spent <= Decimal("0.0006")


APPROVAL_APP = """
import wflo

@wflo.tool(approval=wflo.Approval(approvers=["user:pgb-approver"]))
def act(i: int) -> int:
    return i

@wflo.workflow(name="pgb-approval")
def flow(i: int) -> int:
    return act(i)
"""


@pytest.mark.parametrize("listen", ["direct LISTEN", "polling"])
def test_approval_wait_and_decide_through_the_pooler(bouncer: Bouncer, tmp_path: Path, listen: str) -> None:
    """A worker behind the pooler waits for an approval and resumes when it is decided. With a
    direct ``listen_url`` it is woken by NOTIFY although it polls only every 3 s; without one
    it polls (here every 0.2 s). Either way no LISTEN goes through PgBouncer."""
    url = bouncer.url_with_listen() if listen == "direct LISTEN" else bouncer.url
    poll = "3" if listen == "direct LISTEN" else "0.2"
    (tmp_path / "pgbapp.py").write_text(APPROVAL_APP)
    env = _env(url, WFLO_POLL_INTERVAL=poll, WFLO_PRINCIPAL="user:pgb-agent")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
    worker = subprocess.Popen([sys.executable, "-m", "wflo.cli", "worker", "-i", "pgbapp", "-q", "-c", "2"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    sys.path.insert(0, str(tmp_path))
    try:
        _config.configure(database=url, principal="user:pgb-agent")
        import pgbapp  # type: ignore[import-not-found]

        latencies = []
        for i in range(3):
            handle = pgbapp.flow.start(i)
            deadline = time.monotonic() + 30
            while not wflo.approvals.list(run_id=handle.id) or handle.status() != "waiting":
                assert time.monotonic() < deadline and worker.poll() is None, "the run never waited"
                time.sleep(0.01)
            req = wflo.approvals.list(run_id=handle.id)[0]
            decided = wflo.approvals.approve(req.id, principal="user:pgb-approver")
            assert handle.result(timeout=30) == i
            resumed = next(e for e in handle.events() if e.type == "run.resumed")
            latencies.append((parse_iso(resumed.at) - parse_iso(decided.decided_at)).total_seconds())
        # NOTIFY reached the worker (its own polling would take up to 3 s); or it polled.
        assert max(latencies) < 1.5, latencies
        with open_store(bouncer.direct) as direct:
            listeners = [row[0] for row in direct.read(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND query = 'LISTEN wflo_runs'"
            )]  # fmt: skip
        # LISTEN ran on direct connections only (the worker's and this process's), never on one
        # of PgBouncer's server connections; without listen_url nobody listens.
        assert listeners == (["wflo-listen"] * len(listeners) if listen == "direct LISTEN" else [])
        assert len(listeners) >= (1 if listen == "direct LISTEN" else 0)
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
        sys.path.remove(str(tmp_path))
        sys.modules.pop("pgbapp", None)
