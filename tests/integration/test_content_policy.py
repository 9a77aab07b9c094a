"""The content policy: what the permanent chain keeps of LLM answers, and replay still exact."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import openai
import pytest

import wflo
from wflo import _config
from wflo.audit import verify_all
from wflo.audit._content import clear_redactors
from wflo.errors import ConfigurationError
from wflo.testing import LLMServer, Reply

SECRET = "sk-proj-" + "A1b2C3d4" * 5
ANSWER = f"Contact ana@example.org; the key is {SECRET}."


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer() as server:
        server.responder = lambda r: Reply(ANSWER, output_tokens=12)
        yield server


@pytest.fixture(autouse=True)
def _no_redactors() -> Iterator[None]:
    clear_redactors()
    yield
    clear_redactors()


def _workflow(llm: LLMServer, name: str, crash: dict[str, bool] | None = None) -> wflo.engine.Workflow[[], str]:
    @wflo.step
    def checkpoint() -> None:
        if crash and crash.get("armed"):
            crash["armed"] = False
            raise KeyboardInterrupt("simulated crash")

    @wflo.workflow(name=name)
    def ask() -> str:
        with openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "?"}], max_tokens=50
            )
        checkpoint()
        return reply.choices[0].message.content or ""

    return ask


def _llm_events(run_id: str) -> list[dict[str, object]]:
    return [
        e.data for e in _config.get_store().events(run_id) if e.type == "call.completed" and e.data["kind"] == "llm"
    ]


def _payload_rows(run_id: str) -> int:
    return len(_config.get_store().read("SELECT call_id FROM payloads WHERE run_id = ?", (run_id,)))


def _chained_body(event: dict[str, object]) -> str:
    """Everything the chain holds of the call's answer, as text."""
    return json.dumps(event["output"])


def test_full_keeps_the_answer_but_never_a_secret(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url)
    assert _workflow(llm, "content-full").options(id="c-full").run() == ANSWER  # the agent got it all
    (event,) = _llm_events("c-full")
    chained = _chained_body(event)
    assert SECRET not in chained and "[REDACTED:openai-key]" in chained and "ana@example.org" in chained
    assert _payload_rows("c-full") == 0, "the exact answer outlived the finished run"
    assert all(r.ok for r in verify_all(_config.get_store()))


def test_hash_only_keeps_a_digest_and_still_replays_exactly(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url, content="hash_only")
    crash = {"armed": True}
    ask = _workflow(llm, "content-hash", crash)
    with pytest.raises(KeyboardInterrupt):
        ask.options(id="c-hash").run()
    assert _payload_rows("c-hash") == 1  # kept apart while the run can resume
    assert ask.options(id="c-hash").run() == ANSWER  # replayed from the kept payload, exactly
    assert llm.request_count == 1, "the resumed run asked the provider again"
    (event,) = _llm_events("c-hash")
    chained = _chained_body(event)
    assert "Contact" not in chained and SECRET not in chained
    raw = llm_raw_body(event)
    assert raw["body"] == "" and raw["content"] == "hash_only" and len(str(raw["body_sha256"])) == 64
    assert event.get("cost_usd") and not event.get("cost_estimated"), "the budget did not see the real usage"
    assert _payload_rows("c-hash") == 0
    assert all(r.ok for r in verify_all(_config.get_store()))


def llm_raw_body(event: dict[str, object]) -> dict[str, object]:
    from wflo.engine._serialize import decode

    value = decode(event["output"])
    assert isinstance(value, dict)
    return value


def test_redacted_applies_your_redactors(store_url: str, llm: LLMServer) -> None:
    wflo.configure(database=store_url, content="redacted")

    @wflo.audit.add_redactor
    def no_emails(text: str) -> str:
        return re.sub(r"[\w.]+@[\w.]+", "[email]", text)

    assert _workflow(llm, "content-red").options(id="c-red").run() == ANSWER
    raw = llm_raw_body(_llm_events("c-red")[0])
    body = str(raw["body"])
    assert "[email]" in body and "ana@example.org" not in body and SECRET not in body
    exact = _config.get_store().read("SELECT body FROM payloads")  # removed with the finished run
    assert exact == [] and len(str(raw["body_sha256"])) == 64


def test_a_failed_run_drops_its_exact_answers(store_url: str, llm: LLMServer) -> None:
    """A failed run is never resumed (`wflo runs resume` refuses it), so it keeps no payloads."""
    wflo.configure(database=store_url, content="hash_only")

    @wflo.step
    def checkpoint() -> None:
        raise ValueError("the agent's own bug")

    @wflo.workflow(name="content-failed")
    def ask() -> str:
        with openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0) as client:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "?"}], max_tokens=50
            )
        checkpoint()
        return "never"

    with pytest.raises(ValueError, match="own bug"):
        ask.options(id="c-failed").run()
    assert _config.get_store().get_run("c-failed").status == "failed"
    assert _payload_rows("c-failed") == 0


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a valid content setting; accepted: full, redacted, hash_only"):
        wflo.configure(content="everything")
    with pytest.raises(wflo.UserError, match="add_redactor takes"):
        wflo.audit.add_redactor("not a function")  # type: ignore[arg-type]
