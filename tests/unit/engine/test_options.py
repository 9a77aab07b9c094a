"""Decorator options are typed and checked when the decorator runs; every valid one still applies."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

import wflo
from wflo import _config
from wflo.approvals import Approval
from wflo.engine import StepOptions, ToolOptions, Worker, WorkflowOptions
from wflo.guards import RetryPolicy
from wflo.testing import LLMServer, Reply

MSG = [{"role": "user", "content": "hi"}]


# ------------------------------------------------------------------ refused at the decorator
def test_misspelt_workflow_options_name_the_close_match() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'budjet'; did you mean 'budget'\?") as info:
        wflo.workflow(budjet=wflo.Budget(usd="1"), max_stepz=3)
    assert isinstance(info.value, wflo.errors.OptionError) and isinstance(info.value, wflo.UserError)
    assert info.value.option == "budjet" and info.value.of == "workflow" and info.value.code == "option_error"


def test_an_option_with_no_close_match_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError, match="valid options: agent, budget, guards, name, on_loop, queue, serializer"):
        wflo.workflow(zzzzzz=1)


def test_workflow_class_refuses_unknown_options_too() -> None:
    # Integrations build Workflow(...) directly: the same check holds there.
    with pytest.raises(wflo.errors.OptionError, match="did you mean 'guards'"):
        wflo.engine.Workflow(lambda: None, name="opt-direct", gaurds=False)


@pytest.mark.parametrize(
    ("decorator", "options", "message"),
    [
        (wflo.workflow, {"budget": "0.50"}, r"budget must be wflo.Budget\(\.\.\.\) or None, got '0.50'"),
        (wflo.workflow, {"guards": True}, r"guards must be wflo.LoopGuard\(\.\.\.\) or False or None, got True"),
        (wflo.workflow, {"on_loop": "ignore"}, "on_loop must be 'stop' or 'pause', got 'ignore'"),
        (wflo.workflow, {"name": 42}, "name must be a str or None, got 42"),
        (wflo.workflow, {"serializer": "yaml"}, "serializer must be 'json' or 'pickle'"),
        (wflo.step, {"retries": "3"}, "retries must be a int, got '3'"),
        (wflo.step, {"retries": True}, "retries must be a int, got True"),
        (wflo.step, {"retry": 3}, r"retry must be wflo.RetryPolicy\(\.\.\.\) or None"),
        (wflo.step, {"timeout": [1]}, "timeout must be a float or a str or None"),
        (wflo.step, {"at_most_once": "yes"}, "at_most_once must be a bool"),
        (wflo.tool, {"risk": "extreme"}, "risk must be 'low' or 'medium' or 'high'"),
        (wflo.tool, {"approval": "always"}, r"approval must be wflo.Approval\(\.\.\.\) or None"),
    ],
)
def test_wrong_types_are_refused_at_the_decorator(decorator: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(wflo.errors.OptionError, match=message):
        decorator(**options)


@pytest.mark.parametrize(
    ("decorator", "typo", "meant"), [(wflo.step, "retris", "retries"), (wflo.tool, "aproval", "approval")]
)
def test_misspelt_step_and_tool_options(decorator: Any, typo: str, meant: str) -> None:
    with pytest.raises(TypeError, match=f"did you mean '{meant}'"):
        decorator(**{typo: 1})


def test_options_are_frozen_dataclasses_with_a_docstring_per_field() -> None:
    for cls in (WorkflowOptions, StepOptions, ToolOptions):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        WorkflowOptions().on_loop = "pause"  # type: ignore[misc]
    # The decorators' documented options are exactly the dataclasses' fields.
    assert {f.name for f in dataclasses.fields(WorkflowOptions)} == {
        "name", "serializer", "budget", "guards", "on_loop", "agent", "queue",
    }  # fmt: skip


# ------------------------------------------------------------------ every valid option applies
@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server


def test_budget_option_applies(configured: str, llm: LLMServer) -> None:
    llm.responder = lambda r: Reply("w " * 50)
    client = openai.OpenAI(base_url=llm.openai_url, api_key="t", max_retries=0)

    @wflo.workflow(name="opt-budget", budget=wflo.Budget(usd="0.000001"))
    def flow() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=10_000)  # type: ignore[arg-type]

    with pytest.raises(wflo.BudgetExceededError) as info:
        flow.options(id="opt-budget").run()
    assert info.value.scope == "run:opt-budget" and info.value.limit == Decimal("0.000001")
    assert not llm.requests  # refused before it was sent
    record = _config.get_store().get_run("opt-budget")
    assert record.options["budget"]["usd"] == "0.000001"
    client.close()


def test_guards_option_applies_and_false_switches_it_off(configured: str) -> None:
    @wflo.tool
    def poll(job: int) -> str:
        return "pending"

    @wflo.workflow(name="opt-guarded", guards=wflo.LoopGuard(max_repeats=2))
    def guarded() -> int:
        for _ in range(5):
            poll(1)
        return 5

    @wflo.workflow(name="opt-unguarded", guards=False)
    def unguarded() -> int:
        for _ in range(30):
            poll(1)
        return 30

    with pytest.raises(wflo.LoopDetectedError) as info:
        guarded.run()
    assert info.value.detector == "max_repeats"
    assert unguarded.run() == 30


def test_on_loop_agent_serializer_and_name_reach_the_run(configured: str) -> None:
    @wflo.workflow(name="opt-stored", on_loop="pause", agent="triage", serializer="pickle")
    def flow(x: Decimal) -> Decimal:
        return x * 2

    assert flow.name == "opt-stored" and flow.serializer == "pickle"
    assert flow.options(id="opt-stored").run(Decimal("1.5")) == Decimal("3.0")  # pickle keeps a Decimal
    options = _config.get_store().get_run("opt-stored").options
    assert options["on_loop"] == "pause" and options["agent"] == "triage" and options["serializer"] == "pickle"


def test_defaults_are_not_stored(configured: str) -> None:
    @wflo.workflow(name="opt-defaults", on_loop="stop")
    def flow() -> int:
        return 1

    assert flow.run_options() == {"serializer": "json"}


def test_step_options_apply(configured: str) -> None:
    attempts: list[int] = []

    @wflo.step(retries=2, retry_delay=0.001, name="opt-flaky")
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "ok"

    @wflo.step(timeout="50ms")
    def slow() -> None:
        import time

        time.sleep(1)

    @wflo.step(retry=RetryPolicy(attempts=2, backoff=0.001, jitter=False, retry_on=(KeyError,)))
    def policy() -> int:
        attempts.append(2)
        if attempts.count(2) < 2:
            raise KeyError("x")
        return 2

    @wflo.workflow(name="opt-steps")
    def flow() -> list[Any]:
        out: list[Any] = [flaky(), policy()]
        try:
            slow()
        except TimeoutError:
            out.append("timeout")
        return out

    assert flow.run() == ["ok", 2, "timeout"]
    assert attempts.count(1) == 3 and flaky.name == "opt-flaky"


def test_an_async_step_is_retried_by_its_policy() -> None:
    # The retry driver's "store" steps looked for the run on the io's ``run``, which was the
    # attempt method: every async step with a policy failed at its first retry (AttributeError).
    attempts: list[int] = []

    @wflo.step(retry=RetryPolicy(attempts=3, backoff=0.001, jitter=False))
    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return "ok"

    @wflo.workflow(name="opt-async-retry")
    async def flow() -> str:
        return await flaky()

    handle = flow.start()
    assert Worker(concurrency=1, workflows=["opt-async-retry"]).run(max_runs=1, idle_timeout=10) == 1
    assert handle.result(timeout=5) == "ok" and len(attempts) == 3
    types = [e.type for e in _config.get_store().events(handle.id)]
    assert types.count("call.retry") == 2 and types.count("call.completed") == 1, types


def test_tool_options_apply() -> None:
    policy = Approval(approvers=["role:ops"])

    @wflo.tool(description="Delete a file.", risk="high", approval=policy, at_most_once=True)
    def delete(path: str) -> None:
        """Unused docstring."""

    manifest = delete.manifest()
    assert manifest["description"] == "Delete a file." and manifest["risk"] == "high"
    assert manifest["approval"]["approvers"] == ["role:ops"] and delete.at_most_once
