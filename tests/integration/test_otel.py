"""OpenTelemetry export: a real OTLP/HTTP receiver gets the spans of runs driven through the
openai SDK against wflo.testing's LLM server (GenAI conventions, budget refusals, loop stops)."""

from __future__ import annotations

import contextlib
import gzip
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import wflo
import wflo.observability as obs
from wflo import _config
from wflo.testing import LLMServer, Reply, ToolCall


class Receiver:
    """A minimal OTLP/HTTP trace receiver: decodes each ``ExportTraceServiceRequest``."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request)
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rs in request.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append({
                            "name": s.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "status_message": s.status.message,
                            "attrs": {a.key: _value(a.value) for a in s.attributes},
                            "events": [(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in s.events],
                            "links": [(k.trace_id.hex(), k.span_id.hex(), {a.key: _value(a.value) for a in k.attributes})
                                      for k in s.links],
                            "resource": resource,
                            "schema_url": ss.schema_url,
                        })  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


STATUS_ERROR = 2


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.url)
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    yield r
    obs.disable()
    r.close()


@wflo.tool
def search(q: str) -> str:
    """Search the web."""
    return f"results for {q}"


def _agent(llm: LLMServer) -> wflo.engine.Workflow[Any, Any]:
    llm.script(
        Reply(tool_calls=[ToolCall("search", {"q": "otters"})], input_tokens=120, output_tokens=9,
              cached_tokens=20, reasoning_tokens=4),
        Reply("Otters hold hands.", input_tokens=230, output_tokens=4),
    )  # fmt: skip

    @wflo.workflow(name="agent", budget=wflo.Budget(usd="0.001"), guards=wflo.LoopGuard(max_repeats=2))
    def agent(topic: str) -> str:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
        msgs: Any = [{"role": "user", "content": topic}]
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=50)
        search(q="otters")
        client.chat.completions.create(model="gpt-4o-mini", messages=[*msgs, {"role": "user", "content": "and?"}])
        with contextlib.suppress(wflo.BudgetExceededError):  # far over the budget: refused, never sent
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "otters " * 60_000}], max_tokens=5000
            )
        for _ in range(5):
            search(q="otters")  # the third identical call is stopped
        return "done"

    return agent


def _run_agent(llm: LLMServer, run_id: str) -> None:
    with pytest.raises(wflo.LoopDetectedError):
        _agent(llm).options(id=run_id).run("otters")
    assert obs.flush()


def test_spans_follow_genai_conventions(sqlite_url: str, receiver: Receiver, llm: LLMServer) -> None:
    _config.configure(database=sqlite_url, otel=True)  # as WFLO_OTEL=1 would
    _run_agent(llm, "otel-1")
    assert llm.request_count == 2  # the refused call never reached the server
    spans = receiver.spans
    names = [s["name"] for s in spans]
    assert sorted(names) == sorted(
        ["invoke_workflow agent"] + ["chat gpt-4o-mini"] * 3 + ["execute_tool search"] * 3
    ), names
    (root,) = [s for s in spans if s["name"] == "invoke_workflow agent"]
    assert root["parent"] == ""
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}
    assert all(s["parent"] == root["span_id"] for s in spans if s is not root)
    assert root["schema_url"] == obs.SEMCONV_SCHEMA_URL
    assert root["resource"]["service.name"] == "wflo"

    # the root span's times are the journal's
    events = _config.get_store().events("otel-1")
    start = next(e for e in events if e.type == "run.started")
    end = events[-1]
    assert end.type == "run.stopped"
    from wflo.observability._otel import _ns

    assert (root["start"], root["end"]) == (_ns(start.at), _ns(end.at))
    ra = root["attrs"]
    assert ra["gen_ai.operation.name"] == "invoke_workflow" and ra["wflo.run.id"] == "otel-1"
    assert ra["wflo.run.status"] == "stopped" and ra["wflo.budget.limit_usd"] == 0.001
    assert ra["wflo.budget.refusals"] == 1
    assert root["status"] == STATUS_ERROR and "max_repeats" in root["status_message"]
    assert [n for n, _ in root["events"]] == ["wflo.loop.stopped"]

    chats = sorted((s for s in spans if s["name"].startswith("chat ")), key=lambda s: s["start"])
    first, second, refused = chats
    a = first["attrs"]
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.response.model"] == "gpt-4o-mini"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (120, 9)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 20
    assert a["gen_ai.usage.reasoning.output_tokens"] == 4
    assert a["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert a["wflo.run.id"] == "otel-1" and a["wflo.cost.usd"] > 0
    b = second["attrs"]
    assert (b["gen_ai.usage.input_tokens"], b["gen_ai.usage.output_tokens"]) == (230, 4)
    assert "gen_ai.usage.cache_read.input_tokens" not in b
    assert ra["wflo.cost.usd"] == pytest.approx(a["wflo.cost.usd"] + b["wflo.cost.usd"])
    # the journal's usage is what the server reported; the spans carry the same numbers
    usage = [e.data["usage"] for e in events if e.type == "call.completed" and e.data["kind"] == "llm"]
    assert [u["input_tokens"] for u in usage] == [120, 230]

    assert refused["status"] == STATUS_ERROR and refused["attrs"]["error.type"] == "BudgetExceededError"
    assert "gen_ai.usage.input_tokens" not in refused["attrs"]
    ((name, ev),) = refused["events"]
    assert name == "wflo.budget.refused"
    assert ev["wflo.budget.scope"] == "run:otel-1" and ev["wflo.budget.limit_usd"] == 0.001
    assert ev["wflo.budget.requested_usd"] > 0.001

    tools = sorted((s for s in spans if s["name"] == "execute_tool search"), key=lambda s: s["start"])
    assert [t["status"] for t in tools] == [0, 0, STATUS_ERROR]
    assert tools[0]["attrs"]["gen_ai.tool.name"] == "search"
    assert tools[0]["attrs"]["gen_ai.operation.name"] == "execute_tool"
    stop_events = tools[2]["events"]
    assert [n for n, _ in stop_events] == ["wflo.loop.stopped"]
    assert stop_events[0][1]["wflo.loop.detector"] == "max_repeats"

    # default content policy: no message content anywhere
    for s in spans:
        for key, value in s["attrs"].items():
            assert key not in ("gen_ai.output.messages", "gen_ai.input.messages", "gen_ai.tool.call.arguments")
            assert "otters" not in str(value).lower() and "hold hands" not in str(value).lower(), (s["name"], key)
        for _, ev_attrs in s["events"]:
            assert "otters" not in str(ev_attrs).lower()


def test_content_only_when_the_policy_allows(sqlite_url: str, receiver: Receiver, llm: LLMServer) -> None:
    _config.configure(database=sqlite_url)
    obs.enable(capture_content=True, batch=False)
    _run_agent(llm, "otel-content")
    chats = sorted((s for s in receiver.spans if s["name"].startswith("chat ")), key=lambda s: s["start"])
    assert "search" in chats[0]["attrs"]["gen_ai.output.messages"]
    assert "Otters hold hands." in chats[1]["attrs"]["gen_ai.output.messages"]
    tool = next(s for s in receiver.spans if s["name"] == "execute_tool search")
    assert "otters" in tool["attrs"]["gen_ai.tool.call.arguments"]
    assert tool["attrs"]["gen_ai.tool.call.result"] == '"results for otters"'


def test_each_run_is_exported_once(sqlite_url: str, receiver: Receiver, llm: LLMServer) -> None:
    _config.configure(database=sqlite_url)
    obs.enable(batch=False)
    llm.script(Reply("a", input_tokens=7, output_tokens=1))

    @wflo.workflow(name="once")
    def once() -> str:
        client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        return str(r.choices[0].message.content)

    assert once.options(id="once-1").run() == "a"
    assert once.options(id="once-1").run() == "a"  # the same id: the stored result, no new run
    roots = [s for s in receiver.spans if s["name"] == "invoke_workflow once"]
    assert len(roots) == 1 and roots[0]["status"] == 0
    assert len([s for s in receiver.spans if s["name"] == "chat gpt-4o-mini"]) == 1


def test_export_errors_never_fail_the_run(
    sqlite_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from wflo.observability import _otel

    _config.configure(database=sqlite_url)
    obs.enable(batch=False)
    monkeypatch.setattr(obs, "_warned", False)

    def broken(store: Any, run_id: str) -> int:
        raise RuntimeError("collector on fire")

    monkeypatch.setattr(_otel, "export_run", broken)

    @wflo.workflow(name="fine")
    def fine(x: int) -> int:
        return x + 1

    with caplog.at_level(logging.WARNING, logger="wflo.observability"):
        assert fine.run(1) == 2
        assert fine.run(2) == 3
    warnings = [r for r in caplog.records if "collector on fire" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per run


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "wflo.observability._otel", raising=False)
    monkeypatch.delitem(sys.modules, "wflo.observability._metrics", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(wflo.UserError, match=r"wflo\[otel\]"):
        obs.enable()
    with pytest.raises(wflo.UserError, match=r"wflo\[otel\]"):
        obs.serve_metrics(0)


def test_env_switch_and_flush_at_exit(tmp_path: Path, receiver: Receiver) -> None:
    """WFLO_OTEL=1 alone exports (batched), and the batch is flushed when the process exits."""
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent("""
        import wflo

        @wflo.workflow(name="envrun")
        def envrun(x: int) -> int:
            return x * 2

        print(envrun.run(21))
        """)
    )
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env.update(
        WFLO_OTEL="1",
        WFLO_DATABASE_URL=f"sqlite:///{tmp_path}/w.db",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="my-agents",
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    roots = [s for s in receiver.spans if s["name"] == "invoke_workflow envrun"]
    assert len(roots) == 1
    assert roots[0]["resource"]["service.name"] == "my-agents"
    assert roots[0]["attrs"]["wflo.run.status"] == "succeeded"


@wflo.tool(approval=wflo.Approval())
def pay(usd: int) -> str:
    """Pay an invoice."""
    return f"paid {usd}"


@wflo.tool
def note(text: str) -> str:
    """Write a note."""
    return text


@wflo.workflow(name="payer")
def payer(usd: int) -> str:
    note(text="before")
    return pay(usd=usd)


def test_a_run_that_waits_exports_each_stretch_once(
    sqlite_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wflo.approvals import approvals
    from wflo.engine import Worker

    monkeypatch.setenv("WFLO_PRINCIPAL", "user:agent")
    _config.configure(database=sqlite_url, lease_seconds=5.0, poll_interval=0.05)
    obs.enable(batch=False)
    handle = payer.options(id="pay-1").start(500)
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    assert handle.status() == "waiting"
    first = [s for s in receiver.spans if s["name"] == "invoke_workflow payer"]
    assert len(first) == 1 and first[0]["attrs"]["wflo.run.status"] == "waiting" and first[0]["parent"] == ""
    assert [n for n, _ in first[0]["events"]] == ["wflo.approval.requested", "wflo.run.waiting"]
    (req,) = approvals.list(run_id="pay-1")
    approvals.approve(req.id, principal="user:boss")
    Worker(concurrency=1).run(max_runs=1, idle_timeout=1.0)
    assert handle.result(timeout=5) == "paid 500"

    roots = [s for s in receiver.spans if s["name"] == "invoke_workflow payer"]
    assert len(roots) == 2
    second = next(s for s in roots if s is not first[0])
    assert second["attrs"]["wflo.run.status"] == "succeeded"
    assert second["trace_id"] == first[0]["trace_id"] and second["parent"] == first[0]["span_id"]
    # the note tool ran in the first stretch and was replayed in the second: one span
    assert len([s for s in receiver.spans if s["name"] == "execute_tool note"]) == 1
    (paid,) = [s for s in receiver.spans if s["name"] == "execute_tool pay"]
    assert paid["parent"] == second["span_id"]


# --------------------------------------------------------------------------- one run, one trace

_FLOWS = '''
import wflo

@wflo.tool(approval=wflo.Approval())
def transfer(usd: int) -> str:
    """Move money."""
    return f"moved {usd}"

@wflo.tool
def lookup(who: str) -> str:
    """Find an account."""
    return who

@wflo.workflow(name="linked_payer")
def linked_payer(usd: int) -> str:
    lookup(who="acme")
    return transfer(usd=usd)
'''

# The application: its own global TracerProvider (service "shop") exporting to the same
# receiver, a request span open around run(). The run waits for an approval; the process is
# then interrupted (a web server restarted) and the run is finished by a worker elsewhere.
_APP = """
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import flows

provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
with trace.get_tracer("shop").start_as_current_span("POST /pay") as span:
    try:
        flows.linked_payer.options(id=sys.argv[1]).run(500)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""

_WORKER = """
import flows
from wflo.engine import Worker

Worker(concurrency=1).run(max_runs=1, idle_timeout=3.0)
"""


def _env(tmp_path: Path, url: str, receiver: Receiver) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WFLO_", "OTEL_"))}
    env.update(
        WFLO_OTEL="1",
        WFLO_DATABASE_URL=url,
        WFLO_PRINCIPAL="user:agent",
        WFLO_POLL_INTERVAL="0.05",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]),
    )
    return env


def test_one_run_one_trace_with_an_application_span_open(tmp_path: Path, store_url: str, receiver: Receiver) -> None:
    """Issue 22: an app span around run(), a wait for approval, the rest in another process.
    Every stretch is in the run's trace; each root links to the app's span; the app's span
    names the run."""
    import signal

    from wflo.approvals import approvals
    from wflo.observability._link import root_span_id_of, trace_id_of

    for name, text in (("flows.py", _FLOWS), ("app.py", _APP), ("worker.py", _WORKER)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = _env(tmp_path, store_url, receiver)
    app = subprocess.Popen(
        [sys.executable, str(tmp_path / "app.py"), "link-1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert app.stderr is not None
        seen = []
        for line in app.stderr:  # the run's first stretch ended (and was exported): it waits
            seen.append(line)
            if "is waiting" in line:
                break
        else:
            pytest.fail(f"the app never waited: {''.join(seen)}")
        app.send_signal(signal.SIGINT)
        out, err = app.communicate(timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    assert "interrupted" in out, err

    _config.configure(database=store_url)
    (req,) = approvals.list(run_id="link-1")
    approvals.approve(req.id, principal="user:boss")
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "worker.py")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    events = wflo.RunHandle("link-1").events()
    started = next(e for e in events if e.type == "run.started")
    resumed = next(e for e in events if e.type == "run.resumed")
    assert started.data["worker"].split(":")[1] != resumed.data["worker"].split(":")[1]  # two processes
    assert wflo.RunHandle("link-1").result(timeout=5) == "moved 500"

    (request,) = [s for s in receiver.spans if s["resource"].get("service.name") == "shop"]
    assert request["name"] == "POST /pay"
    assert request["attrs"]["wflo.run.id"] == "link-1"  # the request finds its run
    assert ("wflo.run.started", {"wflo.run.id": "link-1", "gen_ai.workflow.name": "linked_payer"}) in request["events"]
    ours = [s for s in receiver.spans if s["resource"].get("service.name") == "wflo"]
    assert {s["trace_id"] for s in ours} == {f"{trace_id_of('link-1'):032x}"}  # one trace, the run's
    assert request["trace_id"] not in {s["trace_id"] for s in ours}
    roots = sorted((s for s in ours if s["name"] == "invoke_workflow linked_payer"), key=lambda s: s["start"])
    assert len(roots) == 2
    first, second = roots
    assert first["span_id"] == f"{root_span_id_of('link-1'):016x}" and first["parent"] == ""
    assert second["parent"] == first["span_id"]
    for root in roots:
        assert root["attrs"]["gen_ai.operation.name"] == "invoke_workflow"
        assert root["links"] == [(request["trace_id"], request["span_id"], {"wflo.link": "caller"})]
    names = sorted(s["name"] for s in ours)
    assert names == ["execute_tool lookup", "execute_tool transfer", *["invoke_workflow linked_payer"] * 2]


def test_traceparent_option_links_and_is_checked(sqlite_url: str, receiver: Receiver) -> None:
    """The hook for a server: the incoming W3C traceparent, passed at start, is what every
    stretch links to; a malformed one is a one-line UserError; '' records no link."""
    from opentelemetry import trace

    from wflo.engine import Worker

    _config.configure(database=sqlite_url, poll_interval=0.05)
    obs.enable(batch=False)

    @wflo.workflow(name="served")
    def served(x: int) -> int:
        return x + 1

    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    # a span of the application's own is current, yet the given header wins
    app = trace.NonRecordingSpan(trace.SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=trace.TraceFlags(1)))
    with trace.use_span(app):
        handle = served.options(id="srv-1", traceparent=header).start(1)
        served.options(id="srv-2", traceparent="").start(2)
        inherited = served.options(id="srv-3").start(3)
    Worker(concurrency=1).run(max_runs=3, idle_timeout=1.0)
    assert handle.result(timeout=5) == 2 and inherited.result(timeout=5) == 4
    roots = {s["attrs"]["wflo.run.id"]: s for s in receiver.spans if s["name"] == "invoke_workflow served"}
    assert roots["srv-1"]["links"] == [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", {"wflo.link": "caller"})
    ]
    assert roots["srv-2"]["links"] == []
    assert roots["srv-3"]["links"] == [(f"{0x1234:032x}", f"{0x5678:016x}", {"wflo.link": "caller"})]
    for bad in ("not-a-header", "00-" + "0" * 32 + "-b7ad6b7169203331-01", header.upper()):
        with pytest.raises(wflo.UserError, match="traceparent"):
            served.options(id="srv-bad", traceparent=bad).start(1)


def test_agent_runs_are_invoke_agent_and_children_link_to_their_parent(sqlite_url: str, receiver: Receiver) -> None:
    from wflo.observability._link import root_span_id_of, trace_id_of

    _config.configure(database=sqlite_url)
    obs.enable(batch=False)

    @wflo.workflow(name="helper")
    def helper(x: int) -> int:
        return x * 2

    @wflo.workflow(name="researcher-run", agent="researcher")
    def researcher(x: int) -> int:
        return helper(x) + 1

    assert researcher.options(id="ag-1").run(2) == 5
    (root,) = [s for s in receiver.spans if s["attrs"].get("wflo.run.id") == "ag-1" and s["parent"] == ""]
    assert root["name"] == "invoke_agent researcher"
    assert root["attrs"]["gen_ai.operation.name"] == "invoke_agent"
    assert root["attrs"]["gen_ai.agent.name"] == "researcher"
    assert root["attrs"]["gen_ai.workflow.name"] == "researcher-run"
    (child,) = [s for s in receiver.spans if s["name"] == "invoke_workflow helper"]
    assert child["trace_id"] == f"{trace_id_of(child['attrs']['wflo.run.id']):032x}"
    assert child["links"] == [
        (f"{trace_id_of('ag-1'):032x}", f"{root_span_id_of('ag-1'):016x}", {"wflo.link": "caller"})
    ]


def test_async_run_under_an_application_span(sqlite_url: str, receiver: Receiver) -> None:
    """arun() inside a task with the application's span current: the same split is avoided."""
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from wflo.observability._link import trace_id_of

    _config.configure(database=sqlite_url)
    obs.enable(batch=False)
    app_spans = InMemorySpanExporter()
    app = TracerProvider()
    app.add_span_processor(SimpleSpanProcessor(app_spans))

    @wflo.workflow(name="async-linked")
    async def linked(x: int) -> int:
        note(text="hi")
        return x

    async def handler() -> int:
        with app.get_tracer("app").start_as_current_span("job"):
            return await linked.options(id="as-1").arun(3)

    assert asyncio.run(handler()) == 3
    (job,) = app_spans.get_finished_spans()
    assert job.attributes is not None and job.attributes["wflo.run.id"] == "as-1"
    ours = [s for s in receiver.spans if s["attrs"].get("wflo.run.id") == "as-1"]
    assert len(ours) == 2 and {s["trace_id"] for s in ours} == {f"{trace_id_of('as-1'):032x}"}
    (root,) = [s for s in ours if s["parent"] == ""]
    ctx = job.get_span_context()
    assert root["links"] == [(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", {"wflo.link": "caller"})]
