"""Export a run as OpenTelemetry spans (GenAI semantic conventions).

With OTEL_EXPORTER_OTLP_ENDPOINT set (e.g. http://localhost:4318 for a local collector or
Jaeger), the spans go there over OTLP/HTTP. Without it, they are kept in memory and printed.

    pip install 'wflo[otel,openai]'
    python examples/otel_export.py
"""

from __future__ import annotations

import os
import sys
import tempfile

try:
    import openai
    import opentelemetry.sdk  # noqa: F401
except ImportError:
    print("examples/otel_export.py needs the OpenAI SDK and OpenTelemetry: pip install 'wflo[otel,openai]'")
    sys.exit(0)

import wflo
import wflo.observability as obs
from wflo.testing import LLMServer, Reply, ToolCall


@wflo.tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny in {city}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/wflo.db")
        memory = None
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            obs.enable()  # OTLP/HTTP, configured by the OTEL_EXPORTER_OTLP_* variables
        else:
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            memory = InMemorySpanExporter()
            obs.enable(exporter=memory, batch=False)

        with LLMServer() as llm:  # a scripted OpenAI-compatible server, so this runs offline
            llm.script(
                Reply(tool_calls=[ToolCall("weather", {"city": "Oslo"})], input_tokens=80, output_tokens=12),
                Reply("It is sunny in Oslo.", input_tokens=120, output_tokens=7),
            )

            @wflo.workflow(name="weather-agent", budget=wflo.Budget(usd="0.10"))
            def agent(question: str) -> str:
                client = openai.OpenAI(base_url=llm.openai_url, api_key="test", max_retries=0)
                messages: list[dict[str, str]] = [{"role": "user", "content": question}]
                first = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
                call = (first.choices[0].message.tool_calls or [])[0]
                result = weather(city="Oslo") if call.function.name == "weather" else ""
                messages.append({"role": "user", "content": result})
                final = client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
                return str(final.choices[0].message.content)

            print("answer:", agent.run("Weather in Oslo?"))

        obs.flush()
        if memory is None:
            print(
                "spans sent to",
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"],
            )
            return
        spans = sorted(memory.get_finished_spans(), key=lambda s: s.start_time or 0)
        for span in spans:
            indent = "  " if span.parent is not None else ""
            attrs = span.attributes or {}
            keys = ("gen_ai.operation.name", "gen_ai.request.model", "gen_ai.tool.name", "gen_ai.usage.input_tokens",
                    "gen_ai.usage.output_tokens", "wflo.cost.usd", "wflo.run.status")  # fmt: skip
            shown = {k.split(".", 1)[1]: attrs[k] for k in keys if k in attrs}
            ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            print(f"{indent}{span.name:<28} {ms:8.2f} ms  {shown}")
        obs.disable()


if __name__ == "__main__":
    main()
