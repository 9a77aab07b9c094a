"""What an approver may change: a tool's parameters as JSON schema, and edits checked against it.

The schema is taken from the tool's signature when the request is filed (in the agent's
process, where the function exists) and stored with the request, so a decision made from
another process (the CLI, the API) is validated against the signature without importing the
agent's code.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._errors import UserError
from ..store import canonical_json

_SIMPLE: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
_ARRAYS = (list, tuple, set, frozenset, Sequence)
_OBJECTS = (dict, Mapping)


def _schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type annotation (``{}``, anything, where it can't be expressed)."""
    if hint is None or hint is type(None):
        return {"type": "null"}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [_schema(a) for a in typing.get_args(hint)]}
    if origin is typing.Annotated:
        return _schema(typing.get_args(hint)[0])
    base = origin or hint
    if isinstance(base, type) and issubclass(base, _OBJECTS):
        return {"type": "object"}
    if isinstance(base, type) and issubclass(base, _ARRAYS) and not issubclass(base, str | bytes):
        args = typing.get_args(hint)
        return {"type": "array", "items": _schema(args[0])} if len(args) == 1 else {"type": "array"}
    return {}


def params_of(fn: Callable[..., Any] | None) -> dict[str, Any] | None:
    """The parameters of ``fn`` as a JSON schema object, or ``None`` when there is no function."""
    if fn is None:
        return None
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that can't be resolved here: check names, not types
        hints = {}
    props: dict[str, Any] = {}
    extra = False
    for name, p in sig.parameters.items():
        if p.kind is p.VAR_KEYWORD:
            extra = True
        elif p.kind is not p.VAR_POSITIONAL:
            props[name] = _schema(hints.get(name, Any))
    return {"type": "object", "properties": props, "additionalProperties": extra}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }.get(kind, True)


def _check(value: Any, schema: dict[str, Any], where: str) -> Any:
    """``value`` if it fits ``schema`` (an integer given for a number becomes a float); else raise."""
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            try:
                return _check(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}={value!r} does not fit the tool's signature ({_describe(schema)})")
    if "enum" in schema and value not in schema["enum"]:
        raise UserError(f"{where}={value!r} must be one of {', '.join(map(repr, schema['enum']))}")
    kind = schema.get("type")
    if kind is None:
        return value
    if not _type_ok(value, kind):
        raise UserError(f"{where}={value!r} must be {_describe(schema)}")
    if kind == "number" and isinstance(value, int):
        return float(value)
    if kind == "array" and "items" in schema:
        return [_check(v, schema["items"], f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _describe(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    kind = schema.get("type", "any value")
    return {"integer": "an integer", "object": "an object", "array": "an array", "null": "null"}.get(kind, f"a {kind}")


def edited_action(action: dict[str, Any], edits: Any, params: dict[str, Any] | None) -> dict[str, Any]:
    """The action an approver decides when changing ``edits`` (argument name → value).

    Checked against the tool's parameters (its signature, stored with the request): unknown
    names and values of the wrong type are refused with a one-line ``UserError``. Without a
    stored signature, only arguments the action already has may change, keeping their JSON type.
    """
    if not isinstance(edits, dict) or not edits:
        raise UserError("edited arguments must be a non-empty JSON object of argument names to values")
    try:  # what is hashed, stored and run is JSON: NaN and Infinity are not (Python's parser takes them)
        canonical_json(edits)
    except (TypeError, ValueError):
        raise UserError(f"edited arguments must be JSON values (no NaN or Infinity), got {edits!r}") from None
    current = dict(action.get("kwargs", {}))
    positional = action.get("args") or []
    changed: dict[str, Any] = {}
    for name, value in edits.items():
        if positional and name not in current:
            # The call passed positional values (its function takes *args): the name may be one
            # of them, and a call with it given twice could not run once approved.
            raise UserError(
                f"{action.get('tool')} was called with positional arguments ({len(positional)}); only the ones "
                f"passed by name can change ({', '.join(current) or 'none'}), not {name!r}"
            )
        if params is not None:
            props = params.get("properties", {})
            if name not in props and not params.get("additionalProperties"):
                known = ", ".join(props) or "none"
                raise UserError(f"{action.get('tool')} has no argument {name!r} (its arguments: {known})")
            changed[name] = _check(value, props.get(name, {}), name)
        else:
            if name not in current:
                raise UserError(f"{action.get('tool')} was called without {name!r}; only its arguments can change")
            old = current[name]
            if old is not None and not _same_json_type(old, value):
                raise UserError(f"{name}={value!r} must have the type of the requested value {old!r}")
            changed[name] = value
    return {**action, "kwargs": {**current, **changed}}


def _same_json_type(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, int | float):
        return isinstance(new, int | float)
    return type(old) is type(new)


def action_text(action: dict[str, Any], limit: int = 300) -> str:
    """``refund(order_id='A-17', amount=250.0)``: an action as the approver reads it."""
    parts = [repr(a) for a in action.get("args", [])] + [f"{k}={v!r}" for k, v in action.get("kwargs", {}).items()]
    text = f"{action.get('tool')}({', '.join(parts)})"
    return text if len(text) <= limit else text[: limit - 3] + "..."
