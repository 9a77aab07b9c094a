"""How values cross the journal: JSON for plain data, pickle only when asked for."""

from __future__ import annotations

import base64
import importlib
import pickle
from typing import Any

from .._errors import SerializationError, StepFailedError, WfloError
from ..store import canonical_json

SERIALIZERS = ("json", "pickle")
_PICKLE_KEY = "__wflo_pickle__"


def check_serializer(name: str) -> str:
    if name not in SERIALIZERS:
        raise SerializationError(
            step="?", what="serializer", detail=f"unknown serializer {name!r}; use one of {SERIALIZERS}"
        )
    return name


def encode(value: Any, *, serializer: str, step: str, what: str) -> Any:
    """Turn ``value`` into JSON-ready data for the journal, or fail naming the step."""
    if serializer == "pickle":
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(step=step, what=what, detail=f"{type(exc).__name__}: {exc}") from None
        return {_PICKLE_KEY: base64.b64encode(blob).decode("ascii")}
    try:
        canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(step=step, what=what, detail=str(exc)) from None
    return value


def decode(data: Any) -> Any:
    """The value ``encode`` stored (JSON data comes back as lists/dicts)."""
    if isinstance(data, dict) and len(data) == 1 and _PICKLE_KEY in data:
        return pickle.loads(base64.b64decode(data[_PICKLE_KEY]))
    return data


def error_data(exc: BaseException) -> dict[str, Any]:
    """An exception as journal data: enough to rebuild it on replay without pickle."""
    cls = type(exc)
    data: dict[str, Any] = {"type": cls.__qualname__, "module": cls.__module__, "message": str(exc)}
    if isinstance(exc, WfloError):
        fields = exc.to_dict()
        data["code"] = fields.pop("code")
        fields.pop("type", None)
        fields.pop("message", None)
        try:
            canonical_json(fields)
            data["fields"] = fields
        except (TypeError, ValueError):
            pass
    return data


def rebuild_error(data: dict[str, Any], step: str) -> BaseException:
    """The exception ``error_data`` described, as close to the original as can be rebuilt."""
    module, qualname, message = data.get("module"), data.get("type", ""), data.get("message", "")
    cls: Any = None
    if module and qualname and "<" not in qualname:
        try:
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except Exception:
            cls = None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        if issubclass(cls, WfloError) and "fields" in data:
            try:
                return cls(**data["fields"])
            except Exception:
                pass
        try:
            return cls(message)
        except Exception:
            pass
    return StepFailedError(step=step, error_type=f"{module}.{qualname}", detail=message)
