"""How values cross the journal: JSON for plain data, pickle only when asked for."""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import pickle
from json.encoder import encode_basestring
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


MAX_DEPTH = 500
"""Deepest nesting of lists and dicts a journaled value may have: deeper data would make
``json`` recurse past Python's stack (a ``RecursionError``, here or when read back)."""


_settings: Any = None


def _limit() -> int | None:
    global _settings
    if _settings is None:  # imported on first use (not at import), then kept: ~1 µs a call
        from .._config import settings

        _settings = settings
    return _settings().max_value_bytes  # type: ignore[no-any-return]


def _refuse(step: str, what: str, detail: str, fix: str) -> SerializationError:
    # An explicit message: the class's default advice (plain JSON or pickle) does not fix these.
    return SerializationError(
        f"cannot store the {what} of step {step!r}: {detail}; {fix}", step=step, what=what, detail=detail
    )


def _too_large(step: str, what: str, size: int | None, limit: int) -> SerializationError:
    return _refuse(
        step,
        what,
        f"it is {size if size is not None else 'more than ' + str(limit)} bytes, over the max_value_bytes={limit} setting",
        "pass a reference (a path, an id) instead of the data, or raise the cap with "
        "wflo.configure(max_value_bytes=...) or WFLO_MAX_VALUE_BYTES",
    )


def _precheck(value: Any, limit: int | None, step: str, what: str) -> None:
    """Walk ``value`` without recursion: refuse nesting past ``MAX_DEPTH``, and a value whose
    strings alone pass ``limit``, before ``json`` builds a text of it (100 MB of argument
    would otherwise be copied in full before being refused)."""
    if not isinstance(value, _WALKED):
        return  # a number, a bool, None, or what ``json`` refuses: nothing to walk
    # Depth first, so a value that contains itself is refused at MAX_DEPTH, not walked level
    # by level (which doubles a level's size at each list holding itself twice). Numbers,
    # bools and None are not pushed: they count for neither check (half the time for the few
    # small values a step's input and output usually are).
    stack: list[tuple[Any, int]] = [(value, 1)]
    push = stack.append
    approx = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            approx += len(item)
        else:
            if depth > MAX_DEPTH:
                raise _deep(step, what)
            depth += 1
            if isinstance(item, dict):
                for key, sub in item.items():
                    if isinstance(key, str):
                        approx += len(key)
                    if isinstance(sub, _WALKED):
                        push((sub, depth))
            else:
                for sub in item:
                    if isinstance(sub, _WALKED):
                        push((sub, depth))
        if limit is not None and approx > limit:
            raise _too_large(step, what, None, limit)


_WALKED = (str, dict, list, tuple)


def _deep(step: str, what: str) -> SerializationError:
    return _refuse(
        step, what, f"it is nested more than {MAX_DEPTH} levels deep", "flatten the data or pass a reference"
    )


def encode(value: Any, *, serializer: str, step: str, what: str) -> Any:
    """Turn ``value`` into JSON-ready data for the journal, or fail naming the step.

    Refused with ``SerializationError`` (before anything is written): values JSON cannot
    hold, text that is not valid Unicode (a lone surrogate), nesting deeper than
    ``MAX_DEPTH``, and a value larger than the ``max_value_bytes`` setting.
    """
    return encode_text(value, serializer=serializer, step=step, what=what, limit=_limit())[0]


def encode_text(value: Any, *, serializer: str, step: str, what: str, limit: int | None) -> tuple[Any, str | None]:
    """:func:`encode` with the ``max_value_bytes`` setting given (``limit``), and the canonical
    text of the stored value when it was made on the way (JSON; ``None`` for pickle): a call's
    record reuses it rather than encoding the value again (``_boundary._end_event``)."""
    if serializer == "pickle":
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # RecursionError included: too deep for pickle too
            raise SerializationError(step=step, what=what, detail=f"{type(exc).__name__}: {exc}") from None
        stored = (len(blob) + 2) // 3 * 4  # its base64 form, what the journal holds
        if limit is not None and stored > limit:
            raise _too_large(step, what, stored, limit)
        return {_PICKLE_KEY: base64.b64encode(blob).decode("ascii")}, None
    # Nothing to walk, one text, no encoder built (a string over the limit: refused by
    # ``_precheck`` before its copy, below).
    text = None if limit is not None and type(value) is str and len(value) > limit else _scalar_json(value)
    if text is not None:
        _checked(text, limit, step, what)
        return value, text
    if inspect.iscoroutine(value):
        value.close()  # never awaited: closed here rather than warned about at exit
        raise _refuse(
            step,
            what,
            "it is a coroutine (an async function called without await)",
            "await it; an async step is awaited in an async workflow (or run with asyncio.run)",
        )
    _precheck(value, limit, step, what)
    # A workflow's input is {"args": [...], "kwargs": {...}}: its parts are named args[0], kwargs['x'].
    call = what == "input" and type(value) is dict and value.keys() == {"args", "kwargs"}
    text = _json_text(value, step, what, None if call else "")
    _checked(text, limit, step, what)
    return value, text


def as_replayed(value: Any, text: str) -> Any:
    """``value`` as a replay reads it back from the journal (``text``, its JSON): itself when
    JSON gives it back unchanged (lists, dicts with text keys, exact scalars), else the parsed
    ``text``, so that a step returning a tuple, or a dict with int keys, gives its workflow
    the same list, or the same text keys, the first time as on every replay."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is list:
            stack.extend(item)
        elif kind is dict:
            for key, sub in item.items():
                if type(key) is not str:
                    return json.loads(text)
                stack.append(sub)
        elif kind not in _PLAIN:
            return json.loads(text)
    return value


_PLAIN = (str, int, float, bool, type(None))


def _scalar_json(value: Any) -> str | None:
    """``canonical_json(value)`` for a string or an exact int, float, bool or None (what the C
    encoder writes: ``encode_basestring``, ``int.__repr__``, ``float.__repr__``, constants);
    ``None`` for anything else, and for what the encoder refuses (NaN, infinities, an int
    with more digits than ``sys.set_int_max_str_digits`` allows): the general path decides."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        try:
            return int.__repr__(value)
        except ValueError:
            return None
    if kind is float:
        return float.__repr__(value) if value - value == 0.0 else None  # NaN, infinities: not 0
    if kind is bool:
        return "true" if value else "false"
    return "null" if value is None else None


def _flat_texts(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int | None) -> tuple[str, str] | None:
    """For a call's input ``{"args": [...], "kwargs": {...}}`` whose arguments are all scalars
    or strings (keyword names strings) and within what :func:`_precheck` allows (the keys'
    and strings' lengths within ``limit``; it nests 3 levels, far from ``MAX_DEPTH``): the
    canonical texts of its args list and kwargs dict (keys sorted), without the encoder;
    ``None`` otherwise (the general path checks, encodes or refuses it)."""
    size = 10  # "args", "kwargs"
    if limit is not None and size > limit:
        return None
    parts = []
    for arg in args:
        if type(arg) is str:
            size += len(arg)
            if limit is not None and size > limit:
                return None
        text = _scalar_json(arg)
        if text is None:
            return None
        parts.append(text)
    if not kwargs:
        return f"[{','.join(parts)}]", "{}"
    items = []
    for key in sorted(kwargs) if all(type(key) is str for key in kwargs) else ():
        arg = kwargs[key]
        size += len(key) + (len(arg) if type(arg) is str else 0)
        if limit is not None and size > limit:
            return None
        text = _scalar_json(arg)
        if text is None:
            return None
        items.append(f"{encode_basestring(key)}:{text}")
    if len(items) != len(kwargs):
        return None
    return f"[{','.join(parts)}]", f"{{{','.join(items)}}}"


def encode_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, serializer: str, step: str
) -> tuple[Any, str | None]:
    """:func:`encode` of a call's input ``{"args": [...], "kwargs": {...}}``, and for JSON the
    canonical text of ``[args, kwargs]`` (what a call's argument digest hashes; ``None`` for
    pickle): the arguments are encoded once for both."""
    value, digest_text, _ = encode_input_text(args, kwargs, serializer=serializer, step=step, limit=_limit())
    return value, digest_text


def encode_input_text(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, serializer: str, step: str, limit: int | None
) -> tuple[Any, str | None, str | None]:
    """:func:`encode_input`, and the canonical text of the stored input when its arguments are
    all scalars or strings (``None`` otherwise, and for pickle)."""
    value = {"args": list(args), "kwargs": kwargs}
    if serializer != "json":
        return encode_text(value, serializer=serializer, step=step, what="input", limit=limit)[0], None, None
    flat = _flat_texts(args, kwargs, limit)
    if flat is None:
        _precheck(value, limit, step, "input")
        arg_text = _json_text(value["args"], step, "input", "args")
        kw_text = _json_text(kwargs, step, "input", "kwargs") if kwargs else "{}"
    else:
        arg_text, kw_text = flat
    # The canonical text of ``value`` in pieces (its keys sorted: "args" < "kwargs"), the same
    # bytes as ``canonical_json(value)``.
    text = f'{{"args":{arg_text},"kwargs":{kw_text}}}'
    _checked(text, limit, step, "input")
    # The stored input's text only for scalars and strings: a container among the arguments
    # may still change (the call's own code may fill a list it was given) before the record.
    return value, f"[{arg_text},{kw_text}]", None if flat is None else text


def _json_text(value: Any, step: str, what: str, root: str | None = "") -> str:
    """``canonical_json(value)``, or ``SerializationError`` naming the part of ``value`` that
    JSON cannot hold (``args[1]``, ``kwargs['when']``, ``['items'][3]``) under ``root``
    (``None``: ``value`` is a dict whose keys are named bare)."""
    try:
        return canonical_json(value)
    except RecursionError:
        raise _refuse(step, what, "it is nested too deeply to encode", "flatten the data or pass a reference") from None
    except (TypeError, ValueError) as exc:
        where = _where(value, root)
        detail = f"{where}: {exc}" if where else str(exc)
        raise SerializationError(step=step, what=what, detail=detail) from None


def _where(value: Any, root: str | None) -> str:
    """The path, under ``root``, of the first part of ``value`` JSON cannot hold (``""``: the
    value itself). Only called once ``_precheck`` passed: the value is not too deep to walk."""
    stack: list[tuple[Any, str | None]] = [(value, root)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            for key in reversed(list(item)):
                if key is not None and not isinstance(key, str | int | float | bool):
                    return f"{at or ''} (its key {key!r})".strip()
                stack.append((item[key], str(key) if at is None else f"{at}[{key!r}]"))
        elif isinstance(item, list | tuple):
            stack.extend((item[i], f"{at or ''}[{i}]") for i in reversed(range(len(item))))
        else:
            try:
                canonical_json(item)
            except (TypeError, ValueError):
                return at or ""
    return root or ""


def _checked(text: str, limit: int | None, step: str, what: str) -> None:
    """Refuse a canonical text that is not valid Unicode or is over ``limit`` bytes."""
    if text.isascii():  # its length is its size, and it is surely valid
        if limit is not None and len(text) > limit:
            raise _too_large(step, what, len(text), limit)
        return
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise _refuse(
            step,
            what,
            f"its text is not valid Unicode (a lone surrogate {bad})",
            "decode bytes with errors='replace' or pass them as base64",
        ) from None
    if limit is not None and size > limit:
        raise _too_large(step, what, size, limit)


def decode(data: Any) -> Any:
    """The value ``encode`` stored (JSON data comes back as lists/dicts)."""
    if isinstance(data, dict) and len(data) == 1 and _PICKLE_KEY in data:
        return pickle.loads(base64.b64decode(data[_PICKLE_KEY]))
    return data


MAX_GROUP = 100
"""The most sub-exceptions of an exception group journaled (each nested group counts its own):
the rest are left out of the record (its ``"more"`` says how many), and of the group rebuilt."""
_GROUP_DEPTH = 10
"""How deep exception groups nested in one another are journaled (a deeper one is recorded,
and rebuilt, as a plain error of its class)."""


def error_data(exc: BaseException, _depth: int = 0) -> dict[str, Any]:
    """An exception as journal data: enough to rebuild it on replay without pickle.

    An exception group (``ExceptionGroup``: what a ``TaskGroup`` or ``asyncio.gather``-style
    code raises) keeps its own message and its sub-exceptions (``"group"``), so that replay
    raises a group that ``except*`` matches as the first run's did."""
    cls = type(exc)
    data: dict[str, Any] = {"type": cls.__qualname__, "module": cls.__module__, "message": str(exc)}
    if isinstance(exc, BaseExceptionGroup) and _depth < _GROUP_DEPTH:
        subs = exc.exceptions
        group: dict[str, Any] = {
            "message": str(exc.message),
            "exceptions": [error_data(e, _depth + 1) for e in subs[:MAX_GROUP]],
        }
        if len(subs) > MAX_GROUP:
            group["more"] = len(subs) - MAX_GROUP
        data["group"] = group
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
    group = data.get("group")
    if isinstance(group, dict) and isinstance(group.get("exceptions"), list) and group["exceptions"]:
        return _rebuild_group(cls, group, step)
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


def _rebuild_group(cls: Any, group: dict[str, Any], step: str) -> BaseException:
    """The exception group ``error_data`` described: of its class when that can be made with
    ``(message, exceptions)``, else a plain ``BaseExceptionGroup`` (an ``ExceptionGroup``
    when every sub-exception is an ``Exception``), so ``except*`` sees the same errors."""
    message = str(group.get("message", ""))
    subs = [rebuild_error(d if isinstance(d, dict) else {}, step) for d in group["exceptions"]]
    if isinstance(cls, type) and issubclass(cls, BaseExceptionGroup):
        try:
            rebuilt = cls(message, subs)
            if isinstance(rebuilt, BaseExceptionGroup):
                return rebuilt
        except Exception:
            pass
    return BaseExceptionGroup(message, subs)
