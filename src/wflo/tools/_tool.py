"""``@wflo.tool``: a journaled step that an agent (or an LLM) calls, with a manifest and policies."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

from .._errors import UserError
from ..approvals import Approval
from ..engine import Call, Step, ToolOptions, check_options
from ._manifest import Capabilities, Effects, Manifest

P = ParamSpec("P")
R = TypeVar("R")
RISKS = ("low", "medium", "high")
_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


class Tool(Step[P, R]):
    """A tool: journaled like a step, guarded (loop guard, approval policy), described by a
    manifest that converts to an OpenAI tool schema."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        description: str | None = None,
        approval: Approval | None = None,
        risk: str = "low",
        effects: Effects | None = None,
        capabilities: Capabilities | None = None,
        **options: Any,
    ) -> None:
        if approval is not None and not isinstance(approval, Approval):
            raise UserError("approval= takes a wflo.Approval(...)")
        if risk not in RISKS:
            raise UserError(f"risk must be one of {', '.join(RISKS)}, got {risk!r}")
        name: str = options.pop("name", None) or getattr(fn, "__name__", "")  # not a function: Step says so
        super().__init__(fn, name=name, kind="tool", **options)
        self.description = description or inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0] or name
        self.approval = approval
        self.risk = risk
        self.effects = effects or Effects()
        self.capabilities = capabilities or Capabilities()
        self.approval_waived = False
        """The developer built a destructive tool with ``approval=None`` on purpose."""
        self.packaged = False

    def _call(self, ctx: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        call = super()._call(ctx, args, kwargs)
        call.meta["fn"] = self.fn
        if self.capabilities.cost_usd is not None:  # the budget guard reserves and charges it
            call.meta["cost_usd"] = self.capabilities.cost_usd
        if self.approval is not None:
            call.meta["approval"] = self.approval
        from ._grants import apply_grant

        apply_grant(self, call)
        return call

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        from ..engine import aguarded_call, current_run, guarded_call

        ctx = current_run()
        if ctx is None:
            return self.fn(*args, **kwargs)  # outside a workflow a tool is a plain function
        call = self._call(ctx, args, kwargs)
        refusal = call.meta.get("grant_refused")
        if self.is_async:
            if refusal is not None:

                async def arefuse(*_a: Any, **_k: Any) -> Any:
                    raise refusal

                return cast(R, aguarded_call(call, arefuse))
            return cast(R, aguarded_call(call, cast(Any, self._target(call))))
        if refusal is not None:

            def refuse(*_a: Any, **_k: Any) -> Any:
                raise refusal

            return cast(R, guarded_call(call, refuse))
        return cast(R, guarded_call(call, self._target(call)))

    def _target(self, call: Call) -> Callable[..., Any]:
        """What runs for ``call`` (a packaged tool adds what it learns to the call's event)."""
        return self.fn

    @property
    def spec(self) -> Manifest:
        """The tool's manifest (effects and capabilities; ``enforcement: in-process``)."""
        return Manifest(
            name=self.name, version="builtin" if type(self).__module__.startswith("wflo.") else "0",
            description=self.description, input_schema=self.parameters(), effects=self.effects,
            capabilities=self.capabilities, publisher="wflo" if self.fn.__module__.startswith("wflo.") else "",
            enforcement="in-process",
        )  # fmt: skip

    def parameters(self) -> dict[str, Any]:
        """JSON schema of the arguments, from the signature's annotations."""
        hints = typing.get_type_hints(self.fn)
        props: dict[str, Any] = {}
        required = []
        for pname, param in inspect.signature(self.fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            hint = hints.get(pname)
            kind = _JSON_TYPES.get(typing.get_origin(hint) or hint, "string")
            props[pname] = {"type": kind}
            if param.default is param.empty:
                required.append(pname)
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

    def manifest(self) -> dict[str, Any]:
        """Name, description, argument schema, risk level and default approval policy."""
        policy = None
        if self.approval is not None:
            a = self.approval
            policy = {"approvers": list(a.approvers), "quorum": a.quorum, "timeout_s": a.timeout_seconds,
                      "on_timeout": a.on_timeout, "conditional": a.when is not None}  # fmt: skip
        spec = self.spec.to_dict()
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters(),
            "risk": self.risk,
            "approval": policy,
            **{k: spec[k] for k in ("version", "effects", "capabilities", "publisher", "enforcement")},
        }

    def openai_schema(self) -> dict[str, Any]:
        """The tool as an OpenAI ``tools=[...]`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters()},
        }


@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...
@overload
def tool(
    *, name: str | None = ..., description: str | None = ..., approval: Approval | None = ..., risk: str = ...,
    retries: int = ..., at_most_once: bool = ..., effects: Effects | None = ..., capabilities: Capabilities | None = ...,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...  # fmt: skip
def tool(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a guarded, journaled tool: ``@wflo.tool`` or ``@wflo.tool(approval=wflo.Approval(...))``."""
    if fn is not None:
        return Tool(fn)
    check_options(ToolOptions, options, what="tool")  # a misspelt option fails at the decorator
    return lambda f: Tool(f, **options)
