"""The options of ``@wflo.workflow``, ``@wflo.step`` and ``@wflo.tool``: typed, checked when the
decorator runs.

A misspelt option used to be accepted silently (``@wflo.workflow(budjet=...)`` ran without a
budget); now an unknown name is an ``OptionError`` (a ``TypeError``) naming the closest valid
option, and a value of the wrong type is refused before any run exists.

Adding an option is one line: a field on the dataclass below, with its type and default, and a
docstring under it. The field's annotation is what the value is checked against (classes,
``X | None``, ``Literal[...]``, ``tuple[X, ...]``); a workflow option whose value is a plain
scalar, or an object with ``to_run_options()``, is stored with each run by
:meth:`WorkflowOptions.run_options` (so any worker resumes the run under the same rules).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from .._errors import OptionError

if TYPE_CHECKING:  # runtime checks resolve these lazily: cost and guards import the engine
    from ..approvals import Approval
    from ..cost import Budget
    from ..guards import LoopGuard, RetryPolicy
    from ..tools import Capabilities, Effects
    from ._queues import Queue


# To add an option: one field below (type, default) with a docstring under it; it is checked
# against its annotation at the decorator, and stored with each run if it is a scalar or has
# ``to_run_options()``. Name it in the ``workflow()`` overload in _workflow.py for type checkers.
@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkflowOptions:
    """``@wflo.workflow(...)``'s options."""

    name: str | None = None
    """Journal name (default ``module.qualname``); a run resumes under the same name."""
    serializer: Literal["json", "pickle"] = "json"
    """How the workflow's input and output are stored."""
    budget: Budget | None = None
    """Spending limit of each run (``wflo.Budget(usd="0.50")``)."""
    guards: LoopGuard | Literal[False] | None = None
    """Runaway protection (``wflo.LoopGuard(...)``); ``None``: the defaults; ``False``: off."""
    on_loop: Literal["stop", "pause"] = "stop"
    """What a detected loop does: stop the run, or pause it for a person to decide."""
    agent: str | None = None
    """The agent's name, recorded on the run's spans (``gen_ai.agent.name``)."""
    queue: Queue | str | None = None
    """The named queue its runs start on (a ``wflo.Queue`` or its name; default: none)."""

    def run_options(self) -> dict[str, Any]:
        """Options stored with each run (only those set away from their default)."""
        options: dict[str, Any] = {"serializer": self.serializer}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("name", "serializer", "queue") or value == field.default:  # queue: a column
                continue
            to_options = getattr(value, "to_run_options", None)
            if to_options is not None:
                options.update(to_options())
            elif field.name == "guards" and value is False:
                options["loop_guard"] = False  # runaway protection switched off on purpose
            elif isinstance(value, str | int | float | bool):
                options[field.name] = value
        return options


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepOptions:
    """``@wflo.step(...)``'s options."""

    name: str | None = None
    """Journal name (default ``module.qualname``)."""
    retries: int = 0
    """Extra attempts on any exception of the step (not wflo's own), with doubling delay."""
    retry_delay: float = 0.5
    """First backoff in seconds (doubles each attempt)."""
    retry: RetryPolicy | None = None
    """A ``wflo.RetryPolicy`` instead of ``retries``: retries only retryable errors."""
    timeout: float | str | None = None
    """Limit for each attempt (``30``, ``"30s"``)."""
    at_most_once: bool = False
    """If the run dies while the step is in flight, fail the run rather than run it again."""
    serializer: Literal["json", "pickle"] = "json"
    """How the step's input and output are stored."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolOptions(StepOptions):
    """``@wflo.tool(...)``'s options: a step's, plus the tool's manifest."""

    description: str | None = None
    """What the tool does, for the model (default: the docstring's first paragraph)."""
    approval: Approval | None = None
    """The approval policy every call of the tool passes (``wflo.Approval(...)``)."""
    risk: Literal["low", "medium", "high"] = "low"
    """Risk level shown in the manifest and the panel."""
    effects: Effects | None = None
    """What a call does (``read_only``, ``destructive``, …) for the manifest and grants."""
    capabilities: Capabilities | None = None
    """What the tool may reach (paths, hosts, secrets, limits), declared in its manifest."""


_O = typing.TypeVar("_O")


def check_options(cls: type[_O], given: Mapping[str, Any], *, what: str) -> _O:
    """``cls(**given)`` after checking every name and type; ``OptionError`` names the fix."""
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=2)
            hint = (
                f"; did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else f"; valid options: {', '.join(sorted(known))}"
            )
            raise OptionError(f"@wflo.{what}() got an unknown option {key!r}{hint}", option=key, of=what)
    hints = _hints(cls)
    for key, value in given.items():
        expected = hints.get(key)
        if expected is not None and not _matches(value, expected):
            allowed = _describe(expected)
            raise OptionError(f"@wflo.{what}(): {key} must be {allowed}, got {value!r}", option=key, of=what)
    return cls(**given)


def _hints(cls: type[Any]) -> dict[str, Any]:
    # The annotations name classes of packages that import the engine, so they are resolved
    # here, when a decorator runs (every package is loaded by then), not at import.
    from ..approvals import Approval
    from ..cost import Budget
    from ..guards import LoopGuard, RetryPolicy
    from ..tools import Capabilities, Effects
    from ._queues import Queue

    names = {"Queue": Queue, "Approval": Approval, "Budget": Budget, "LoopGuard": LoopGuard, "RetryPolicy": RetryPolicy,
             "Capabilities": Capabilities, "Effects": Effects}  # fmt: skip
    return typing.get_type_hints(cls, localns=names)


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin is Literal:
        return any(
            value is option or (value == option and type(value) is type(option)) for option in typing.get_args(expected)
        )
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is not None:  # tuple[X, ...], list[X]: the container's type is checked, not each item
        return isinstance(value, origin)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # a form this checker does not know: accepted, as before


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin is Literal:
        return " or ".join(repr(option) for option in typing.get_args(expected))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return "None"
    if origin is not None:
        return f"a {origin.__name__}"
    name = getattr(expected, "__name__", str(expected))
    public = {"Budget", "LoopGuard", "RetryPolicy", "Approval"}
    return f"wflo.{name}(...)" if name in public else f"a {name}"
