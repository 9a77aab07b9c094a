"""A completed call's record is stored as the plain encoder's text (issue 20, `sqlcpu`).

A step's record text is put together from the texts its checks already made (the input's
when the call began, the output's when it ended: ``_boundary._completed_text``), and a
scalar's or a string's text is written without the encoder (``_serialize.encode_text``).
Each must give exactly ``canonical_json`` of the event's data, or ``wflo audit verify``
would fail. Regression pins: they pass on the code before the shortcut too (there the store
encoded the data), and fail if the shortcut ever changes a byte.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wflo
from wflo import _config
from wflo.audit import verify_chain
from wflo.engine._serialize import encode, encode_input_text, encode_text
from wflo.errors import SerializationError


def _plain(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(_scalars, st.lists(_scalars, max_size=3)))
def test_a_values_text_is_the_plain_encoders(value: Any) -> None:
    try:
        stored, text = encode_text(value, serializer="json", step="s", what="output", limit=None)
    except SerializationError:  # a lone surrogate: refused, as the plain text cannot be UTF-8
        with pytest.raises(UnicodeEncodeError):
            _plain(value).encode("utf-8")
        return
    assert stored is value
    assert text == _plain(value)


@settings(max_examples=300, deadline=None)
@given(
    args=st.lists(_scalars, max_size=3).map(tuple),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=6), _scalars, max_size=3),
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=40)),
)
def test_a_flat_inputs_texts_are_the_plain_encoders(
    args: tuple[Any, ...], kwargs: dict[str, Any], limit: int | None
) -> None:
    value = {"args": list(args), "kwargs": kwargs}
    try:
        got, digest_text, text = encode_input_text(args, kwargs, serializer="json", step="s", limit=limit)
    except SerializationError as exc:  # the same refusal as the general path's
        with pytest.raises(SerializationError) as general:
            encode_text(value, serializer="json", step="s", what="input", limit=limit)
        assert str(exc) == str(general.value)
        return
    assert got == value
    assert digest_text == _plain([list(args), kwargs])
    assert text == _plain(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_float_json_cannot_hold_is_refused(value: float) -> None:
    with pytest.raises(SerializationError, match="Out of range float"):
        encode(value, serializer="json", step="s", what="output")


def test_an_int_too_long_to_print_is_refused_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "set_int_max_str_digits", sys.set_int_max_str_digits)
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        with pytest.raises(SerializationError, match="integer string conversion"):
            encode(10**700, serializer="json", step="s", what="output")
    finally:
        sys.set_int_max_str_digits(old)


def test_a_string_over_the_limit_is_refused_before_its_copy() -> None:
    with pytest.raises(SerializationError, match="more than 10 bytes"):
        encode_text("x" * 11, serializer="json", step="s", what="output", limit=10)
    with pytest.raises(SerializationError, match="lone surrogate"):
        encode("a\ud800", serializer="json", step="s", what="output")


def _completed(run_id: str) -> list[Any]:
    return [e for e in _config.get_store().events(run_id) if e.type == "call.completed"]


def test_steps_records_are_the_plain_encoders_text(configured: str) -> None:
    counter = {"n": 0}

    @wflo.step
    def scalar(a: int, b: float, c: str, d: bool, e: None) -> Any:
        return a

    # JSON escapes in the name (quote, backslash), an astral character; a line separator is refused now.
    @wflo.step(name='ünïcode "step" \\ \U0001f9a6')
    def named(x: str, *, k: str = "", n: int = 0) -> str:
        return x + k

    @wflo.step
    def nested(items: list[int], conf: dict[str, Any]) -> dict[str, Any]:
        items.append(99)  # the step changes its own argument: recorded as it ends, as before
        return {"z": items, "a": conf}

    @wflo.step(retries=2, retry_delay=0.001)
    def flaky() -> float:
        counter["n"] += 1
        if counter["n"] < 2:
            raise ValueError("once")
        return 0.1 + 0.2

    @wflo.step(serializer="pickle")
    def pickled(x: int) -> set[int]:
        return {x}

    @wflo.workflow
    def flow() -> list[Any]:
        return [
            scalar(1, 2.5, "é", True, None),
            scalar(-(10**30), -0.0, "", False, None),
            named('a"\\\n', k="\U0001f600", n=3),
            named("plain"),
            nested([1, 2], {"y": [1.5, None], "x": "é"}),
            flaky(),
            sorted(pickled(3)),
            scalar(10**20, 1e300, "\t", True, None),
        ]

    flow.options(id="rt-1").run()
    events = _completed("rt-1")
    assert len(events) == 8
    for event in events:
        assert event.data_json == _plain(event.data)
    assert events[4].data["input"]["args"][0] == [1, 2, 99]
    assert events[5].data["attempts"] == 2
    assert verify_chain(_config.get_store(), "rt-1").ok


def test_a_guards_fields_and_an_input_changed_in_place_are_encoded_by_the_store(configured: str) -> None:
    from wflo.engine import Guard, add_guard_factory
    from wflo.engine._executor import _guard_factories

    class Stamp(Guard):
        def before(self, call: Any) -> None:
            if call.name.endswith("stamped"):
                call.event["zz_stamp"] = "é"
            if call.name.endswith("bumped"):
                call.kwargs["n"] = 5  # in place: the input recorded is the dict as it is at the end

    def factory(wf: Any, record: Any) -> list[Guard]:
        return [Stamp()]

    @wflo.step
    def stamped(x: int) -> int:
        return x

    @wflo.step
    def bumped(*, n: int) -> int:
        return n

    @wflo.workflow
    def flow() -> int:
        return stamped(1) + bumped(n=1)

    add_guard_factory(factory)
    try:
        flow.options(id="rt-2").run()
    finally:
        _guard_factories.remove(factory)
    first, second = _completed("rt-2")
    assert first.data["zz_stamp"] == "é"
    assert second.data["input"] == {"args": [], "kwargs": {"n": 5}}
    for event in (first, second):
        assert event.data_json == _plain(event.data)
    assert verify_chain(_config.get_store(), "rt-2").ok
