"""The LangGraph ``Checkpointer``'s reads on both stores: what ``get_tuple`` and ``list`` return
(latest or named checkpoint, pending writes in task order, namespaces, threads), and that a
checkpoint is read with its pending writes in one statement (one round trip on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("langgraph")

from langgraph.checkpoint.base import ERROR, CheckpointTuple, empty_checkpoint

from wflo.integrations.langgraph import Checkpointer


def _id(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012}"


def _config(thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> Any:
    conf = {"thread_id": thread_id, "checkpoint_ns": ns}
    if checkpoint_id is not None:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def _put(saver: Checkpointer, thread_id: str, ns: str, i: int, parent: int | None, step: int) -> Any:
    checkpoint = {**empty_checkpoint(), "id": _id(i), "channel_values": {"n": i}}
    return saver.put(_config(thread_id, ns, None if parent is None else _id(parent)), checkpoint, {"step": step}, {})


@pytest.fixture
def saver(store_url: str) -> Iterator[Checkpointer]:
    """Thread ``t``: checkpoints 1 ← 2 ← 3, writes pending on 2 from tasks ``b`` and ``a``
    (saved in that order, ``a``'s error with its negative idx); namespace ``sub`` of ``t``:
    checkpoint 4 with a write; thread ``u``: a checkpoint with the same id as 2, its own write."""
    saver = Checkpointer(store_url)
    try:
        _put(saver, "t", "", 1, None, -1)
        two = _put(saver, "t", "", 2, 1, 0)
        saver.put_writes(two, [("x", "b0"), ("y", {"b": 1})], "task-b")
        saver.put_writes(two, [("x", "a0")], "task-a")
        saver.put_writes(two, [(ERROR, "boom")], "task-a")
        _put(saver, "t", "", 3, 2, 1)
        saver.put_writes(_put(saver, "t", "sub", 4, None, 0), [("z", 4)], "task-s")
        saver.put_writes(_put(saver, "u", "", 2, None, 0), [("x", "u")], "task-u")
        yield saver
    finally:
        saver.close()


def _ids(tuples: Any) -> list[tuple[str, str, str]]:
    return [
        (c["thread_id"], c["checkpoint_ns"], c["checkpoint_id"]) for c in (t.config["configurable"] for t in tuples)
    ]


TWO_WRITES = [("task-a", ERROR, "boom"), ("task-a", "x", "a0"), ("task-b", "x", "b0"), ("task-b", "y", {"b": 1})]


def test_get_tuple_latest_named_and_missing(saver: Checkpointer) -> None:
    latest = saver.get_tuple(_config("t"))
    assert isinstance(latest, CheckpointTuple)
    assert latest.config == _config("t", "", _id(3))
    assert latest.checkpoint["id"] == _id(3) and latest.checkpoint["channel_values"] == {"n": 3}
    assert latest.metadata["step"] == 1
    assert latest.parent_config == _config("t", "", _id(2))
    assert latest.pending_writes == []

    two = saver.get_tuple(_config("t", "", _id(2)))
    assert two is not None and two.config == _config("t", "", _id(2))
    assert two.pending_writes == TWO_WRITES  # task id, then idx (the error's is negative)
    assert two.parent_config == _config("t", "", _id(1))

    one = saver.get_tuple(_config("t", "", _id(1)))
    assert one is not None and one.parent_config is None and one.pending_writes == []

    sub = saver.get_tuple(_config("t", "sub"))
    assert sub is not None and sub.config == _config("t", "sub", _id(4))
    assert sub.pending_writes == [("task-s", "z", 4)]
    assert saver.get_tuple(_config("t", "sub", _id(3))) is None  # 3 is in the root namespace only

    other = saver.get_tuple(_config("u", "", _id(2)))  # same id as t's 2, another thread
    assert other is not None and other.pending_writes == [("task-u", "x", "u")]

    assert saver.get_tuple(_config("nobody")) is None
    assert saver.get_tuple(_config("t", "", _id(9))) is None
    assert saver.get_tuple(_config("t", "nowhere")) is None
    saver.put_writes(_config("t", "", _id(8)), [("x", "orphan")], "task-o")  # writes, no checkpoint 8
    assert saver.get_tuple(_config("t", "", _id(8))) is None


def test_list_filters_order_and_writes(saver: Checkpointer) -> None:
    history = list(saver.list(_config("t", "")))
    assert _ids(history) == [("t", "", _id(3)), ("t", "", _id(2)), ("t", "", _id(1))]
    assert [t.pending_writes for t in history] == [[], TWO_WRITES, []]
    assert history[1] == saver.get_tuple(_config("t", "", _id(2)))

    assert _ids(saver.list(_config("t", ""), limit=1)) == [("t", "", _id(3))]
    assert _ids(saver.list(_config("t", ""), before=_config("t", "", _id(3)))) == [("t", "", _id(2)), ("t", "", _id(1))]
    assert _ids(saver.list(_config("t", ""), filter={"step": 0})) == [("t", "", _id(2))]
    assert _ids(saver.list(_config("t", ""), filter={"step": 0}, limit=1)) == [("t", "", _id(2))]
    assert _ids(saver.list(_config("t", "", _id(2)))) == [("t", "", _id(2))]
    assert _ids(saver.list(_config("t", "sub"))) == [("t", "sub", _id(4))]

    everything = list(saver.list(None))
    assert sorted(_ids(everything)) == sorted(
        [("t", "", _id(1)), ("t", "", _id(2)), ("t", "", _id(3)), ("t", "sub", _id(4)), ("u", "", _id(2))]
    )
    assert [t.checkpoint["id"] for t in everything] == sorted((t.checkpoint["id"] for t in everything), reverse=True)
    writes = {ids: t.pending_writes for ids, t in zip(_ids(everything), everything, strict=True)}
    assert writes[("t", "", _id(2))] == TWO_WRITES and writes[("u", "", _id(2))] == [("task-u", "x", "u")]
    assert writes[("t", "sub", _id(4))] == [("task-s", "z", 4)]
    assert list(saver.list(_config("nobody"))) == []


def _count_statements(saver: Checkpointer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement ``saver`` sends through its store's public interface from now on."""
    sent: list[str] = []
    store = saver.store

    def spy(name: str) -> Callable[..., Any]:
        real = getattr(store, name)

        def counted(sql: Any = None, *args: Any, **kwargs: Any) -> Any:
            sent.append(f"{name}: {sql}")
            return real(sql, *args, **kwargs)

        return counted

    for name in ("read", "read_one", "stream", "write", "write_rows", "write_batch"):
        monkeypatch.setattr(store, name, spy(name))
    return sent


def test_get_tuple_of_a_checkpoint_with_writes_is_one_statement(
    saver: Checkpointer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _count_statements(saver, monkeypatch)
    named = saver.get_tuple(_config("t", "", _id(2)))
    assert named is not None and named.pending_writes == TWO_WRITES
    assert len(sent) == 1, sent
    sent.clear()
    saver.put_writes(_config("t", "", _id(3)), [("x", "c0")], "task-c")
    sent.clear()
    latest = saver.get_tuple(_config("t"))
    assert latest is not None and latest.pending_writes == [("task-c", "x", "c0")]
    assert len(sent) == 1, sent


def test_list_is_one_statement_not_one_per_checkpoint(saver: Checkpointer, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _count_statements(saver, monkeypatch)
    assert len(list(saver.list(_config("t", "")))) == 3
    assert len(sent) == 1, sent
