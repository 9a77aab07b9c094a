"""Issue 14 finding 8: values that cannot or should not go into the journal are refused with a
one-line ``SerializationError`` before anything is written (both stores)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

import wflo
from wflo import _config
from wflo.engine._serialize import MAX_DEPTH


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _nested_dict(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


def _runs() -> int:
    return sum(_config.get_store().count_runs_by_status().values())


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_lone_surrogate_input_is_a_serialization_error_and_no_run(configured: str) -> None:
    @wflo.workflow(name="echo")
    def echo(text: str) -> str:
        return text

    with pytest.raises(wflo.errors.SerializationError) as info:  # today: UnicodeEncodeError from the store
        echo.run("bad \ud800 text")
    assert "lone surrogate \\ud800" in _one_line(info.value) and "input of step 'echo'" in str(info.value)
    assert _runs() == 0
    assert echo.run("fine é ☃") == "fine é ☃"


def test_lone_surrogate_step_output_fails_the_call_not_the_store(configured: str) -> None:
    @wflo.step
    def read() -> str:
        return b"\xff\xfe".decode("utf-8", "surrogateescape")

    @wflo.workflow(name="reader")
    def reader() -> str:
        return read()

    with pytest.raises(wflo.errors.SerializationError, match=r"output of step .*lone surrogate"):
        reader.options(id="sur-1").run()
    handle = wflo.RunHandle("sur-1")
    assert handle.status() == "failed"
    (failed,) = [e for e in handle.events() if e.type == "call.failed"]
    assert failed.data["error"]["type"] == "SerializationError"


@pytest.mark.parametrize("make", [_nested, _nested_dict])
def test_deep_nesting_is_refused_before_the_step_runs(configured: str, make: Any) -> None:
    ran: list[int] = []

    @wflo.step
    def take(value: Any) -> int:
        ran.append(1)
        return 1

    @wflo.workflow(name="deep")
    def deep(depth: int) -> int:
        return take(make(depth))

    with pytest.raises(wflo.errors.SerializationError) as info:  # today: RecursionError
        deep.options(id="deep-1").run(100_000)
    assert f"nested more than {MAX_DEPTH} levels" in _one_line(info.value)
    assert ran == []
    assert wflo.RunHandle("deep-1").status() == "failed"
    assert deep.options(id="deep-2").run(MAX_DEPTH - 5) == 1  # deep but within the limit


def test_a_value_holding_itself_is_refused_at_the_depth_limit(configured: str) -> None:
    # Walked depth first: a list holding itself twice is refused at MAX_DEPTH, not expanded
    # level by level (2**500 items).
    loop: list[Any] = []
    loop += [loop, loop]

    @wflo.step
    def take(value: Any) -> int:
        return 1

    @wflo.workflow(name="selfish")
    def selfish() -> int:
        return take(loop)

    with pytest.raises(wflo.errors.SerializationError, match=f"nested more than {MAX_DEPTH} levels"):
        selfish.options(id="selfish-1").run()


def test_deep_workflow_input_and_result(configured: str) -> None:
    @wflo.workflow(name="deep-io")
    def deep_io(value: Any, depth: int) -> Any:
        return _nested(depth)

    with pytest.raises(wflo.errors.SerializationError, match="input of step 'deep-io'"):
        deep_io.run(_nested(100_000), 1)
    assert _runs() == 0
    with pytest.raises(wflo.errors.SerializationError, match="result of step 'deep-io'"):
        deep_io.options(id="deep-io-1").run(1, 100_000)
    assert wflo.RunHandle("deep-io-1").status() == "failed"


def test_a_100mb_argument_is_refused_before_it_is_copied_or_stored(configured: str) -> None:
    """Today: accepted, about 725 MB of memory and 200 MB in the store."""

    @wflo.workflow(name="big")
    def big(blob: str) -> int:
        return len(blob)

    blob = "x" * 100_000_000
    tracemalloc.start()
    try:
        with pytest.raises(wflo.errors.SerializationError) as info:
            big.run(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = _one_line(info.value)
    assert "max_value_bytes=4000000" in text and "WFLO_MAX_VALUE_BYTES" in text
    assert peak < 20_000_000, f"refusing took {peak // 1_000_000} MB"
    assert _runs() == 0


def test_step_output_cap_and_configuration(configured: str, monkeypatch: pytest.MonkeyPatch) -> None:
    @wflo.step
    def produce(n: int) -> str:
        return "y" * n

    @wflo.step(serializer="pickle")
    def produce_bytes(n: int) -> bytes:
        return b"z" * n

    @wflo.workflow(name="producer")
    def producer(n: int, pickled: bool) -> int:
        return len(produce_bytes(n) if pickled else produce(n))

    with pytest.raises(
        wflo.errors.SerializationError, match=r"output of step .*produce'.*over the max_value_bytes=4000000"
    ):
        producer.options(id="p-1").run(5_000_000, False)
    (failed,) = [e for e in wflo.RunHandle("p-1").events() if e.type == "call.failed"]
    assert len(str(failed.data)) < 2000  # the refusal is journaled, not the value
    with pytest.raises(wflo.errors.SerializationError, match="max_value_bytes=4000000"):
        producer.options(id="p-2").run(3_500_000, True)  # 4.67 MB once in base64
    assert producer.options(id="p-3").run(1_000_000, False) == 1_000_000

    _config.configure(database=configured, max_value_bytes=10_000_000)
    assert producer.options(id="p-4").run(5_000_000, False) == 5_000_000
    _config.configure(database=configured, max_value_bytes=1000)
    with pytest.raises(wflo.errors.SerializationError, match="max_value_bytes=1000 setting"):
        producer.options(id="p-5").run(2000, False)

    monkeypatch.setenv("WFLO_MAX_VALUE_BYTES", "none")
    assert _config.configure(database=configured).max_value_bytes is None
    assert producer.options(id="p-6").run(5_000_000, False) == 5_000_000
    monkeypatch.setenv("WFLO_MAX_VALUE_BYTES", "2_000")
    assert _config.configure(database=configured).max_value_bytes == 2000
    for bad in ("lots", "1.5"):
        monkeypatch.setenv("WFLO_MAX_VALUE_BYTES", bad)
        with pytest.raises(wflo.errors.ConfigurationError, match="WFLO_MAX_VALUE_BYTES"):
            _config.configure(database=configured)
    monkeypatch.delenv("WFLO_MAX_VALUE_BYTES")
    for value in (0, -5, True, "10"):
        with pytest.raises(wflo.errors.ConfigurationError, match="max_value_bytes"):
            _config.configure(database=configured, max_value_bytes=value)


def test_refusals_pickle_and_keep_their_fields(configured: str) -> None:
    import pickle

    from wflo.engine._serialize import encode

    with pytest.raises(wflo.errors.SerializationError) as info:
        encode(["\udc80"], serializer="json", step="s", what="input")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.step == "s" and again.what == "input"
    assert info.value.code == "serialization_error"


def test_child_workflow_arguments_are_refused_the_same_way(configured: str) -> None:
    """A child run's arguments pass the call boundary (its digest) before they are encoded."""

    @wflo.workflow(name="kid")
    def kid(value: Any) -> int:
        return 1

    @wflo.workflow(name="parent")
    def parent(which: str) -> int:
        return kid(_nested(100_000) if which == "deep" else "x\ud800")

    with pytest.raises(wflo.errors.SerializationError, match=r"input of step 'kid'.*nested more than"):
        parent.options(id="par-1").run("deep")  # today: RecursionError
    with pytest.raises(wflo.errors.SerializationError, match=r"input of step 'kid'.*lone surrogate"):
        parent.options(id="par-2").run("surrogate")  # today: UnicodeEncodeError
