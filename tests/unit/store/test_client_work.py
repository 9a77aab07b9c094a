"""The client's work per run, pinned where it is easy to lose (issue 20: on PostgreSQL an
empty workflow is CPU-bound, much of it in this process).

Building a ``json.JSONEncoder`` (what ``json.dumps`` with options does on every call), reading
a workflow's signature, formatting times with ``strftime`` or building ``uuid.UUID`` objects
cost microseconds each, several times per run; the hot path does none of them. What the
shortcuts produce is pinned against the slow forms they replace.
"""

from __future__ import annotations

import inspect
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import wflo
from wflo import _config as config
from wflo.store import canonical_json, link_hash, open_store
from wflo.store._records import iso, new_id, now_iso


@wflo.workflow(name="tests.client_work.empty")
def empty(x: int = 0) -> int:
    return x


def test_an_empty_run_builds_no_json_encoder_and_reads_no_signature(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.configure(database=store_url, lease_seconds=5.0)
    try:
        assert empty.run(1) == 1  # the store opened, the signature read once
        built: list[Any] = []
        init = json.JSONEncoder.__init__

        def counted(self: json.JSONEncoder, *args: Any, **kwargs: Any) -> None:
            built.append(kwargs)
            init(self, *args, **kwargs)

        monkeypatch.setattr(json.JSONEncoder, "__init__", counted)
        signatures: list[Any] = []
        read = inspect.signature
        monkeypatch.setattr(inspect, "signature", lambda *a, **k: signatures.append(a) or read(*a, **k))
        for i in range(3):
            assert empty.run(i) == i
        assert built == []
        assert signatures == []
        with pytest.raises(wflo.errors.UserError, match="cannot take these inputs"):
            empty.run(1, 2)  # the signature kept still refuses what the function cannot take
    finally:
        config.reset()


def _slow_link_hash(prev_hash: str, chain: str, seq: int, type_: str, at: str, data_json: str) -> str:
    """The link hash as the audit format defines it, written the slow, obvious way."""
    import hashlib

    envelope = {"at": at, "chain": chain, "data": json.loads(data_json), "seq": seq, "type": type_}
    text = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


@pytest.mark.parametrize("chain", ["run-1", "é✓\u2028", 'q"\\{,}'])
@pytest.mark.parametrize("type_", ["run.created", 'x"\\é', "NULL"])
def test_link_hash_and_canonical_json_match_their_definitions(chain: str, type_: str) -> None:
    data = {"b": [1, 2.5, None, True, 'é\u2028"\\'], "a": {"z": -0.0, "y": 1e300}}
    data_json = canonical_json(data)
    assert data_json == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for seq in (1, 10**12):
        got = link_hash("0" * 64, chain, seq, type_, "2026-11-29T19:49:50.557226Z", data_json)
        assert got == _slow_link_hash("0" * 64, chain, seq, type_, "2026-11-29T19:49:50.557226Z", data_json)
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical_json({"x": {1, 2}})


def test_times_and_ids_keep_their_forms() -> None:
    for moment in (
        datetime(2026, 1, 2, 3, 4, 5, 0, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        assert iso(moment) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert iso(moment, 1.5) == (moment + timedelta(seconds=1.5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    local = datetime(2026, 6, 1, 12, 0, 0, 7, tzinfo=UTC).astimezone()  # another zone, same moment
    assert iso(local) == "2026-06-01T12:00:00.000007Z"
    now = now_iso()
    assert len(now) == 27 and now.endswith("Z") and datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ")
    for _ in range(100):
        run_id = new_id()
        parsed = uuid.UUID(run_id)
        assert str(parsed) == run_id and parsed.version == 7 and parsed.variant == uuid.RFC_4122


@pytest.mark.postgres
def test_array_literals_read_back_exactly(pg_url: str) -> None:
    from wflo.store._pgdirect import array_text

    cases: list[tuple[Any, ...]] = [
        (), ("",), ("NULL",), (None,), ("a", None, "b"), (1, 2, 10**12), ("a,b", "{x}", " ", "\t\n"),
        ('"', "\\", '\\"', "é✓"), ('{"x":"\\\\n"}', "plain"), ("2026-11-29T19:49:50.557226Z", "0" * 64),
    ]  # fmt: skip
    with open_store(pg_url) as store, store._connection() as conn:
        for values in cases:
            got = conn.execute("SELECT %s::text[]", (array_text(values),)).fetchone()[0]
            assert got == [None if v is None else str(v) for v in values], values


@pytest.mark.postgres
def test_a_new_run_is_not_sent_back_but_its_record_is_the_stored_row(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run's creation answers with its lease's expiry alone (the caller wrote the rest):
    the record ``create_run`` gives is the row as stored; an id that exists still comes back
    whole (created = false)."""
    from wflo.store._postgres import PostgresStore

    answers: list[list[Any]] = []
    direct = PostgresStore._direct

    def kept(self: PostgresStore, conn: Any, stmt: Any, params: Any) -> Any:
        result = direct(self, conn, stmt, params)
        answers.append([result.get_value(0, i) for i in range(result.nfields)] if result.ntuples else [])
        return result

    monkeypatch.setattr(PostgresStore, "_direct", kept)
    with open_store(pg_url) as store:
        options = {"budget": {"usd": "0.50", "alerts": [50]}, "tags": ("a", "b")}
        record, created = store.create_run(
            run_id="r-new", workflow="w", input={"args": [1, (2, 3)], "kwargs": {"é": None}}, options=options,
            tenant="acme", owner="me", lease_seconds=30.0, queue=None,
        )  # fmt: skip
        assert created
        sent_back = [v for v in answers[-1][:-2] if v is not None]
        assert sent_back == [record.lease_expires_at.encode()], answers[-1]
        assert record == store.get_run("r-new")
        again, created = store.create_run(run_id="r-new", workflow="w", input={}, owner="other")
        assert not created and again == record
        queued, created = store.create_run(run_id="r-queued", workflow="w", input=[])
        assert created and queued.lease_expires_at is None and queued == store.get_run("r-queued")


@pytest.mark.parametrize(
    ("workflow", "tenant", "parent_id", "owner"),
    [("w", None, None, "me"), ('é✓\u2028"\\', "acme é", "p-1", 'o"w\\n é'), ("w", "t", None, None)],
)
def test_a_new_runs_events_hold_the_canonical_json_of_their_data(
    store_url: str, workflow: str, tenant: str | None, parent_id: str | None, owner: str | None
) -> None:
    """A new run's input is serialised once: the events' JSON is written around its text (and
    the caller's, when it has it), the same bytes as ``canonical_json`` of the events' data, so
    the chain's hashes are what the audit format defines."""
    from wflo.audit import verify_run

    value = {"args": [1, 2.5, "é\n", None, [True, {}]], "kwargs": {"z": -0.0, "a": {"b": "\u2028"}}}
    with open_store(store_url) as store:
        for i, given in enumerate((None, canonical_json(value))):
            record, created = store.create_run(
                run_id=f"r-{i}", workflow=workflow, input=value, options={"k": ("v",)}, tenant=tenant,
                parent_id=parent_id, owner=owner, input_json=given,
            )  # fmt: skip
            assert created and record == store.get_run(record.id)
            assert record.input == value and record.options == {"k": ["v"]}
            expected = [{"workflow": workflow, "input": value, "parent_id": parent_id, "tenant": tenant}]
            if owner is not None:
                expected.append({"attempt": 1, "worker": owner})
            events = store.events(record.id)
            assert [e.data for e in events] == expected
            assert [e.data_json for e in events] == [canonical_json(data) for data in expected]
            assert verify_run(store, record.id).ok
        with_data, _ = store.create_run(run_id="r-data", workflow=workflow, input=value, event_data={"x": 1})
        assert store.events(with_data.id)[0].data == {**expected[0], "tenant": None, "parent_id": None, "x": 1}
        assert verify_run(store, with_data.id).ok


@pytest.mark.parametrize("output", [0, "é\u2028", [1, (2, 3)], {"b": {"a": -0.0}, "a": None}, None])
def test_a_runs_output_is_stored_and_recorded_as_its_canonical_json(store_url: str, output: Any) -> None:
    """A run's output is serialised once for its end: ``runs.output`` and the ``run.completed``
    event's data are the canonical JSON of what the workflow returned (tuples as lists)."""
    from wflo.audit import verify_run

    @wflo.workflow(name="tests.client_work.output")
    def give() -> Any:
        return output

    @wflo.workflow(name="tests.client_work.aoutput")
    async def agive() -> Any:
        return output

    config.configure(database=store_url, lease_seconds=5.0)
    try:
        import asyncio

        give.options(id="out-sync").run()
        asyncio.run(agive.options(id="out-async").arun())
        store = config.get_store()
        stored = json.loads(json.dumps(output))
        for run_id in ("out-sync", "out-async"):
            assert store.get_run(run_id).output == stored
            end = store.events(run_id)[-1]
            assert (end.type, end.data, end.data_json) == (
                "run.completed",
                {"output": stored},
                canonical_json({"output": output}),
            )
            assert verify_run(store, run_id).ok
    finally:
        config.reset()
