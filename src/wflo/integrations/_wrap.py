"""``wflo.wrap(obj, ...)``: put an existing agent object (a compiled LangGraph graph, a CrewAI
crew, an OpenAI Agents SDK agent, a pydantic-ai agent) under wflo with one line.

Each framework lives in its own module, imported only when an object of that framework is
wrapped, so ``import wflo`` never imports a framework.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._errors import UserError

# (framework name, extra, top-level module of the wrapped object's class, wflo module). The first
# row whose module prefix matches one of the object's classes (its MRO) handles it.
ADAPTERS: tuple[tuple[str, str, str, str], ...] = (
    ("LangGraph", "langgraph", "langgraph", "wflo.integrations.langgraph"),
    ("CrewAI", "crewai", "crewai", "wflo.integrations.crewai"),
    ("OpenAI Agents SDK", "agents", "agents", "wflo.integrations.agents"),
    ("pydantic-ai", "pydantic-ai", "pydantic_ai", "wflo.integrations.pydantic_ai"),
)


def _adapter_for(obj: Any) -> tuple[str, str, str] | None:
    modules = [(getattr(cls, "__module__", "") or "") for cls in type(obj).__mro__]
    for name, extra, prefix, module in ADAPTERS:
        if any(m == prefix or m.startswith(prefix + ".") for m in modules):
            return name, extra, module
    return None


def wrap(obj: Any, **options: Any) -> Any:
    """Return ``obj`` under wflo: same API, every LLM and tool call budgeted, loop-guarded,
    approval-gated and journaled as one wflo run per invocation.

    Options (all optional): ``budget=wflo.Budget(...)``, ``guards=wflo.LoopGuard(...)``,
    ``name=`` (the workflow name, default from the object), ``tenant=``, ``approvals={tool: wflo.Approval}``.
    """
    found = _adapter_for(obj)
    if found is None:
        supported = ", ".join(f"{name} (pip install 'wflo[{extra}]')" for name, extra, _, _ in ADAPTERS)
        raise UserError(
            f"wflo.wrap does not know how to wrap a {type(obj).__module__}.{type(obj).__qualname__}; "
            f"it supports: {supported}. For plain OpenAI/Anthropic SDK code use @wflo.workflow instead."
        )
    name, extra, module = found
    try:
        adapter = importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"wrapping a {name} object needs wflo's {name} integration: {exc} "
                        f"(pip install 'wflo[{extra}]')") from None  # fmt: skip
    result: Any = adapter.wrap(obj, **options)
    return result
