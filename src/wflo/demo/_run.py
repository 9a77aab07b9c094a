"""``wflo demo``: watch each promise hold, on a fresh machine, in about a minute.

It starts wflo's scripted LLM server (no API key, no network) and an embedded SQLite store in
a directory of its own, runs the demo agent (``wflo.demo._agent``) through each scenario,
checks each outcome, and exits 0 only if every promise held.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

import wflo
from wflo import _config
from wflo._errors import SandboxUnavailableError, UserError
from wflo.testing import LLMServer, Reply, ToolCall


class Demo:
    def __init__(self, directory: Path, *, auto_approve: bool, console: Console, quiet: bool) -> None:
        self.dir = directory
        self.db = directory / "wflo.db"
        self.url = f"sqlite:///{self.db}"
        self.auto_approve = auto_approve
        self.console = console
        self.quiet = quiet
        self.results: dict[str, dict[str, Any]] = {}
        self.llm = LLMServer().start()
        os.environ["WFLO_DEMO_LLM"] = self.llm.openai_url
        os.environ.setdefault("WFLO_PRINCIPAL", "user:demo-agent-owner")
        wflo.configure(database=self.url, poll_interval=0.1)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def held(self, name: str, ok: bool, *, why: str | None = None, **figures: Any) -> None:
        """Record a scene's outcome; a broken one says why in one line."""
        self.results[name] = {"held": ok, **figures}
        if ok:
            self.say("  → [green]held[/]\n")
            return
        reason = why or figures.get("error") or "the checks above did not pass"
        self.results[name]["why"] = reason
        self.say(f"  → [red]BROKEN[/]: {escape(str(reason))}\n")

    def not_shown(self, name: str, reason: str, fix: str) -> None:
        """A promise this host cannot show (a missing system package): reported, not failed."""
        self.results[name] = {"held": None, "not_shown": reason, "fix": fix}
        self.say(f"  → [yellow]not shown[/]: {escape(reason)}; to see it: [bold]{escape(fix)}[/]\n")

    # ------------------------------------------------------------------ scenes
    def budget(self) -> None:
        from . import _agent

        self.say("[bold]1. Budgets hold[/]  a run with a $0.0030 budget asks question after question")
        self.llm.responder = lambda r: Reply("Otters hold hands while sleeping. " * 20, output_tokens=800)
        before = self.llm.request_count
        result = _agent.spend.options(id="demo-budget").run(20)
        sent = self.llm.request_count - before
        usage = wflo.cost.ledger().scope_usage("run:demo-budget")
        assert usage is not None
        with Progress(
            TextColumn("  spend"),
            BarColumn(),
            TextColumn("${task.completed:.6f} of ${task.total:.4f}"),
            console=self.console,
            disable=self.quiet,
        ) as bar:
            task = bar.add_task("spend", total=float(usage.limit))
            bar.update(task, completed=float(usage.spent))
        refused = result["refused"]
        self.say(f"  {result['answers']} calls answered; call {result['answers'] + 1} refused [bold]before it was sent[/] "
                 f"(needed ${refused['requested'] if refused else '?'}, {sent} requests reached the server)")  # fmt: skip
        ok = refused is not None and sent == result["answers"] and usage.spent <= usage.limit and usage.reserved == 0
        self.held(
            "budget", ok, calls=result["answers"], spent_usd=str(usage.spent), limit_usd=str(usage.limit), requests=sent
        )

    def loop(self) -> None:
        from . import _agent

        self.say("[bold]2. Runaways stop[/]  the model keeps asking for the same search")
        self.llm.responder = lambda r: Reply(tool_calls=[ToolCall("search", {"query": "otters"})])
        try:
            _agent.loop.options(id="demo-loop").run(50)
            err = None
        except wflo.LoopDetectedError as exc:
            err = exc
        run = _config.get_store().get_run("demo-loop")
        if err is not None:
            ev = err.evidence
            self.say(f"  stopped by [bold]{err.detector}[/]: {ev.get('summary')}")
            self.say(
                f"  evidence: tool {ev.get('name')}, args digest {ev.get('args_digest')}, earlier calls {ev.get('calls')}; run status [magenta]{run.status}[/]"
            )
        ok = err is not None and err.detector == "max_repeats" and run.status == "stopped"
        self.held("loop", ok, detector=getattr(err, "detector", None), llm_calls=self.llm.request_count)

    def approval(self) -> None:
        from . import _agent

        self.say("[bold]3. Humans decide[/]  the agent wants to refund $250 (over $100 needs finance)")
        wflo.approvals.grant("user:demo-finance", "finance")
        handle = _agent.refund_flow.start("A-1017", 250.0)
        worker = wflo.engine.Worker(concurrency=1)
        worker.run(max_runs=1, idle_timeout=2)
        request = next(iter(wflo.approvals.list(run_id=handle.id)), None)
        status = handle.status()
        self.say(
            f"  run is [blue]{status}[/]; no process is holding it. Request: {request.message if request else '?'}"
        )
        if request is None:
            self.held("approval", False)
            return
        if self.auto_approve:
            self.say("  approving as user:demo-finance (--auto-approve)")
            wflo.approvals.approve(
                request.id, principal="user:demo-finance", action_hash=request.action_hash, via="demo"
            )
        else:
            self.say("  In another terminal, approve it as someone in finance:")
            self.say(f"    [bold]WFLO_PRINCIPAL=user:demo-finance wflo -d {self.url} approve {request.id}[/]")
            self.say("  (waiting; press Ctrl-C to stop the demo)")
            while wflo.approvals.get(request.id).status == "pending":
                time.sleep(0.5)
        t0 = time.monotonic()
        wflo.engine.Worker(concurrency=1).run(max_runs=1, idle_timeout=5)
        result = handle.result(timeout=10)
        decided = wflo.approvals.get(request.id)
        self.say(
            f"  decided [bold]{decided.status}[/] by {decided.decided_by}; a new worker resumed the run in {time.monotonic() - t0:.2f}s: {result}"
        )
        ok = status == "waiting" and decided.status == "approved" and "refunded" in str(result)
        self.held("approval", ok, approval_id=request.id, decided_by=decided.decided_by)

    def crash(self) -> None:
        self.say(
            "[bold]4. Crashes lose nothing[/]  a run makes 3 LLM calls; its process is killed (SIGKILL) after the 2nd"
        )
        self.llm.responder = lambda r: Reply("section written", output_tokens=3)
        before = self.llm.request_count
        marker = self.dir / "crashed-once"
        env = {**os.environ, "WFLO_DATABASE_URL": self.url}
        code = (
            "import sys; from wflo.demo import _agent; print(_agent.crashy.options(id='demo-crash').run(sys.argv[1]))"
        )
        first = subprocess.run(
            [sys.executable, "-c", code, str(marker)], env=env, capture_output=True, text=True, timeout=120
        )
        sent_before_kill = self.llm.request_count - before
        self.say(
            f"  process exited with {first.returncode} (killed) after {sent_before_kill} paid calls; resuming in a new process …"
        )
        second = subprocess.run(
            [sys.executable, "-c", code, str(marker)], env=env, capture_output=True, text=True, timeout=120
        )
        total = self.llm.request_count - before
        events = [
            e
            for e in _config.get_store().events("demo-crash")
            if e.type == "call.completed" and e.data["kind"] == "llm"
        ]
        self.say(
            f"  resumed: {len(events)} LLM calls in the journal, {total} requests paid in all: [bold]none paid twice[/]"
        )
        ok = first.returncode == -9 and second.returncode == 0 and total == 3 and len(events) == 3
        why = None
        for proc, expected in ((first, -9), (second, 0)):
            if proc.returncode != expected:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                why = f"a demo process exited {proc.returncode} (expected {expected}): {last[:200]}"
                break
        self.held("crash", ok, why=why, requests=total, journaled_calls=len(events), killed_exit=first.returncode)

    def sandbox(self) -> None:
        from . import _agent

        self.say("[bold]5. Code runs in a sandbox[/]  the model writes Python; then it tries to break out")
        try:
            wflo.Sandbox(memory="256MiB", cpu_seconds=5, wall="15s", output="64KiB").close()
        except SandboxUnavailableError as exc:
            # The sandbox refuses to run without its isolation (P4), so this host cannot show it.
            fix = "apt-get install bubblewrap" if "not installed" in str(exc.detail) else str(exc.hint or "")
            self.not_shown("sandbox", f"sandbox backend {exc.backend!r} cannot run here: {exc.detail}", fix)
            return
        escape = (
            "import os, socket\n"
            "for what, attempt in [('read /etc/shadow', lambda: open('/etc/shadow').read()),\n"
            "                      ('read the agent\\'s API key', lambda: os.environ['OPENAI_API_KEY']),\n"
            "                      ('connect to PostgreSQL', lambda: socket.create_connection(('127.0.0.1', 5432), 1)),\n"
            "                      ('write /proc/sys/kernel/core_pattern', lambda: open('/proc/sys/kernel/core_pattern', 'w').write('|/x'))]:\n"
            "    try:\n        attempt(); print('ESCAPED', what)\n"
            "    except Exception as e:\n        print('refused', what, '-', type(e).__name__)\n"
        )
        script = iter([
            Reply(tool_calls=[ToolCall("python", {"code": "import statistics\nprint(statistics.mean([3, 1, 4, 1, 5, 9, 2, 6]))"})]),
            Reply(tool_calls=[ToolCall("python", {"code": escape})]),
            Reply("The mean is 3.875.", output_tokens=8),
        ])  # fmt: skip
        self.llm.responder = lambda r: next(script)
        os.environ["OPENAI_API_KEY"] = "sk-demo-secret-must-not-leak"
        try:
            ran = _agent.analyst.options(id="demo-sandbox").run("What is the mean of 3 1 4 1 5 9 2 6?")
        finally:
            os.environ.pop("OPENAI_API_KEY", None)
        computed, attempt = ran[0], ran[1]
        self.say(f"  the model's code computed {computed['stdout'].strip()} in the sandbox")
        for line in attempt["stdout"].splitlines():
            colour = "red" if line.startswith("ESCAPED") else "green"
            self.say(f"  [{colour}]{line}[/]")
        events = [e.data for e in _config.get_store().events("demo-sandbox") if e.data.get("kind") == "sandbox"]
        self.say(f"  {len(events)} sandboxed executions in the run's journal, each with code and output digests")
        ok = (
            computed["stdout"].strip() == "3.875"
            and "ESCAPED" not in attempt["stdout"]
            and attempt["stdout"].count("refused") == 4
            and "sk-demo" not in attempt["stdout"]
        )
        why = None
        for program in (computed, attempt):
            if program.get("exit_code") != 0 or program.get("killed_by"):
                err = (program.get("stderr") or "").strip().splitlines()
                why = (
                    f"a sandboxed program ended with exit {program.get('exit_code')}"
                    + (f", killed by its {program['killed_by']} limit" if program.get("killed_by") else "")
                    + (f": {err[-1][:200]}" if err else "")
                )
                break
        self.held("sandbox", ok, why=why, escape_attempts=4, refused=attempt["stdout"].count("refused"))

    def audit(self) -> None:
        from ..audit import verify_all

        self.say("[bold]6. Everything is on the record[/]  every run above is a SHA-256 hash chain")
        store = _config.get_store()
        reports = verify_all(store)
        intact = all(r.ok for r in reports)
        self.say(
            f"  wflo audit verify: {sum(r.count for r in reports)} events in {len(reports)} chains, {'[green]intact[/]' if intact else '[red]broken[/]'}"
        )
        tampered = self.dir / "tampered.db"
        src = sqlite3.connect(self.db)
        dst = sqlite3.connect(tampered)
        src.backup(dst)
        src.close()
        # The runs that asked for approval (the refund): their journal is what the edit alters.
        asked = sorted({a.run_id for a in wflo.approvals.list(status=None)})
        dst.execute(
            f"UPDATE events SET data = replace(data, '250.0', '25000.0') WHERE chain IN ({', '.join('?' * len(asked))})",
            asked,
        )
        dst.commit()
        dst.close()
        from ..store import open_store

        with open_store(f"sqlite:///{tampered}") as copy:
            broken = [r for r in verify_all(copy) if not r.ok]
        first = broken[0] if broken else None
        if first:
            self.say(f"  after editing the refund amount in a copy of the database: [red]{first.describe()}[/]")
        ok = intact and first is not None
        self.held("audit", ok, events=sum(r.count for r in reports), tamper_detected_at=first.seq if first else None)

    def close(self) -> None:
        self.llm.stop()
        _config.reset()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"


def run_demo(*, directory: str | None = None, auto_approve: bool = False, as_json: bool = False) -> int:
    """Run every scene; return the process exit status (0: every promise held)."""
    console = Console(stderr=as_json, highlight=False)
    if not console.is_terminal:
        console.width = 10_000  # piped or captured: whole lines, not cut at 80 columns
    made = directory is None
    path = Path(tempfile.mkdtemp(prefix="wflo-demo-")) if directory is None else Path(directory)
    if (path / "wflo.db").exists():
        # The scenes' runs have fixed ids: on an earlier demo's store they replay, and the
        # demo reported promises as broken that it had not tried.
        raise UserError(f"{path} holds a store already (wflo.db): give the demo a new or empty --dir")
    path.mkdir(parents=True, exist_ok=True)
    if not sys.stdin.isatty() and not auto_approve:
        auto_approve = True
    demo = Demo(path, auto_approve=auto_approve, console=console, quiet=False)
    console.print(
        f"[bold]wflo demo[/]: a research agent on the embedded store [dim]{escape(demo.url)}[/], LLM = scripted local server\n"
    )
    t0 = time.monotonic()
    try:
        for scene in (demo.budget, demo.loop, demo.approval, demo.crash, demo.sandbox, demo.audit):
            try:
                scene()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a scene that breaks is a promise not shown: report it, go on
                demo.held(scene.__name__, False, error=_one_line(exc))
    finally:
        demo.close()
    table = Table(title=f"promises ({time.monotonic() - t0:.1f}s)", box=None, header_style="bold")
    table.add_column("promise")
    table.add_column("held")
    for name, res in demo.results.items():
        mark = {True: "[green]yes[/]", False: "[red]NO[/]", None: "[yellow]not shown[/]"}[res["held"]]
        table.add_row(name, mark)
    console.print(table)
    # A promise this host cannot show (no bubblewrap) does not fail the demo; a broken one does.
    all_held = any(r["held"] for r in demo.results.values()) and all(
        r["held"] is not False for r in demo.results.values()
    )
    if as_json:
        import json

        print(
            json.dumps(
                {
                    "held": all_held,
                    "seconds": round(time.monotonic() - t0, 2),
                    "store": demo.url,
                    "promises": demo.results,
                },
                indent=2,
                default=str,
            )
        )
    for name, res in demo.results.items():
        if res["held"] is None:
            console.print(f"[yellow]not shown here:[/] {name}; to see it: [bold]{escape(res['fix'])}[/]")
    if made and all_held:
        shutil.rmtree(path, ignore_errors=True)
    elif not all_held:
        console.print(f"[red]some promises did not hold[/]; the store is kept in {escape(str(path))}")
    return 0 if all_held else 1
