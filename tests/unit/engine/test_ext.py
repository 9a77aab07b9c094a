"""An integration written against ``wflo.ext`` alone: its calls are journaled and guarded."""

from __future__ import annotations

import contextlib
from typing import Any

import wflo
from wflo import _config
from wflo.ext import Call, Guard, Outcome, add_guard_factory, current_run, guarded_call

WORKFLOW = "ext-integration"
seen: list[tuple[str, str]] = []
effects: list[str] = []


class RefuseDeletes(Guard):
    """Before: refuse a tool named ``delete*``. After: note what ran."""

    def before(self, call: Call) -> None:
        if call.name.startswith("delete"):
            raise wflo.UserError(f"{call.name} is not allowed here")

    def after(self, call: Call, outcome: Outcome) -> None:
        seen.append((call.call_id, call.name))


# Only for this test's workflow: a factory sees every run of the process.
add_guard_factory(lambda wf, record: [RefuseDeletes()] if record.workflow == WORKFLOW else [])


def framework_tool(name: str, fn: Any, *args: Any) -> Any:
    """What a framework adapter does with each tool call the framework makes."""
    run = current_run()
    assert run is not None
    return guarded_call(Call(kind="tool", name=name, args=args, kwargs={}, run=run), fn)


def lookup(q: str) -> str:
    effects.append(q)
    return q.upper()


@wflo.workflow(name=WORKFLOW)
def agent(q: str) -> str:
    found = framework_tool("lookup", lookup, q)
    with contextlib.suppress(wflo.UserError):
        framework_tool("delete_all", lambda: effects.append("deleted"))
    return str(found)


def test_an_extension_built_on_wflo_ext(configured: str) -> None:
    seen.clear()
    effects.clear()
    assert agent.options(id="ext-1").run("otters") == "OTTERS"
    assert effects == ["otters"]  # the refused call never ran
    assert ("1", "lookup") in seen
    events = [e for e in _config.get_store().events("ext-1") if e.type in ("call.completed", "call.failed")]
    assert [(e.type, e.data["name"]) for e in events] == [("call.completed", "lookup"), ("call.failed", "delete_all")]
    # The same id again: the recorded result, nothing runs again.
    assert agent.options(id="ext-1").run("otters") == "OTTERS" and effects == ["otters"]


def test_guards_are_only_added_where_the_factory_says(configured: str) -> None:
    @wflo.workflow(name="ext-other")
    def other() -> str:
        return str(framework_tool("delete_tmp", lambda: "ok"))

    assert other.run() == "ok"  # another workflow: the factory added no guard to it
