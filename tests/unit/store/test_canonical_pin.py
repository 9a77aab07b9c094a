"""The bytes a step's event is stored and hashed as are pinned (issue 20, `steppy`).

The step path builds its event's JSON with shortcuts (``canonical_json`` calls the C encoder
directly; a call's input and its argument digest come from one encoding of the arguments):
each must give exactly the text the plain ``json`` encoder gives, or ``wflo audit verify``
would fail on chains written before (or after) the change. Regression pins: they pass on the
code before the shortcuts too, and fail if a shortcut ever changes a byte. The clock's text
(``now_iso``, formatted once per second) is checked against ``datetime``'s form.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wflo
from wflo import _config
from wflo.audit import verify_chain
from wflo.engine._boundary import Call
from wflo.engine._serialize import encode_input
from wflo.store import canonical_json, link_hash


def _plain(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),  # any code point, lone surrogates and controls included
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=_json)
def test_canonical_json_is_the_plain_encoders_text(value: Any) -> None:
    assert canonical_json(value) == _plain(value)


@pytest.mark.parametrize(
    "value",
    [float("nan"), {"a": [float("inf")]}, {"a": object()}, {1: 2, "a": 3}, b"bytes"],
    ids=["nan", "inf", "object", "mixed-keys", "bytes"],
)
def test_canonical_json_refuses_what_the_plain_encoder_refuses(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)) as plain:
        _plain(value)
    with pytest.raises(type(plain.value)) as ours:
        canonical_json(value)
    assert str(ours.value) == str(plain.value)


def test_canonical_json_refuses_a_circular_value() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference detected"):
        canonical_json({"a": loop})
    assert canonical_json({"a": [1]}) == '{"a":[1]}'  # nothing of the refused value stays behind


@settings(max_examples=200, deadline=None)
@given(
    args=st.lists(_json, max_size=3).map(tuple),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=6), _json, max_size=3),
)
def test_input_and_digest_from_one_encoding(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        value, text = encode_input(args, kwargs, serializer="json", step="s")
    except wflo.errors.SerializationError:  # a lone surrogate: refused, as encode() refuses it
        with pytest.raises(UnicodeEncodeError):
            _plain({"args": list(args), "kwargs": kwargs}).encode("utf-8")
        return
    assert value == {"args": list(args), "kwargs": kwargs}
    assert text == _plain([list(args), kwargs])
    # The digest a call is journaled with is the one computed from its arguments alone.
    call = Call(kind="step", name="s", args=args, kwargs=kwargs, run=None)  # type: ignore[arg-type]
    assert hashlib.sha256(text.encode()).hexdigest() == call.args_digest


def test_a_steps_event_is_stored_as_before(configured: str) -> None:
    @wflo.step
    def greet(name: str, *, times: int = 1, note: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"hi": name * times, "ratio": 0.1 + 0.2, "none": None}

    @wflo.workflow
    def flow() -> dict[str, Any]:
        return greet("é\u2028", times=2, note={"b": [1.5, True], "a": "z"})

    assert flow.options(id="pin-1").run() == {"hi": "é\u2028é\u2028", "ratio": 0.30000000000000004, "none": None}
    store = _config.get_store()
    (event,) = [e for e in store.events("pin-1") if e.type == "call.completed"]
    assert event.data_json == _plain(event.data)  # canonical, as the auditor re-serialises it
    assert event.data["input"] == {"args": ["é\u2028"], "kwargs": {"times": 2, "note": {"b": [1.5, True], "a": "z"}}}
    assert event.data["output"] == {"hi": "é\u2028é\u2028", "ratio": 0.30000000000000004, "none": None}
    # The digest of ``[args, kwargs]`` in canonical form, pinned as a constant.
    assert (
        event.data["digest"]
        == hashlib.sha256('[["é\u2028"],{"note":{"a":"z","b":[1.5,true]},"times":2}]'.encode()).hexdigest()
    )
    assert event.hash == link_hash(event.prev_hash, "pin-1", event.seq, event.type, event.at, event.data_json)
    assert verify_chain(store, "pin-1").ok


def test_now_iso_formats_the_second_once_and_the_microseconds_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import types
    from datetime import UTC, datetime

    from wflo.store import _records

    clock = iter([1_764_483_599_999_999_500, 1_764_483_599_000_000_000 + 10**9 - 1, 1_764_483_600_000_000_999])
    monkeypatch.setattr(_records, "time", types.SimpleNamespace(time_ns=lambda: next(clock)))

    def expected(ns: int) -> str:
        second, micro = divmod(ns // 1000, 1_000_000)
        return datetime.fromtimestamp(second, UTC).replace(microsecond=micro).strftime(_records._TIME_FORMAT)

    assert [_records.now_iso() for _ in range(3)] == [
        expected(1_764_483_599_999_999_500),  # floored to the microsecond, as datetime.now
        expected(1_764_483_599_999_999_999),
        expected(1_764_483_600_000_000_999),  # the next second: its own date and time
    ]


def test_a_c_encoder_that_does_not_give_the_encoders_text_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another Python's ``c_make_encoder`` with other arguments or output: the plain encoder."""
    from wflo.store import _chain

    assert _chain._checked_c_encoder() is not None  # this Python's passes the probe

    def other_order(*args: Any) -> Any:
        return lambda value, level: iter([json.dumps(value)])  # spaces, unsorted keys

    monkeypatch.setattr(json.encoder, "c_make_encoder", other_order)
    assert _chain._checked_c_encoder() is None
    monkeypatch.setattr(json.encoder, "c_make_encoder", lambda *args: 1 / 0)
    assert _chain._checked_c_encoder() is None
    # No C encoder at all: the plain encoder's pure-Python path gives the same text.
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    monkeypatch.setattr(_chain, "_c_encoder", _chain._checked_c_encoder())
    assert _chain._c_encoder is None
    assert canonical_json({"b": 1, "a": [2.5, "é"]}) == '{"a":[2.5,"é"],"b":1}'
