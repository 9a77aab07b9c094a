"""Counting runs by status from trigger-kept counters (issue 20): always equal to counting the
runs themselves, on both stores, whatever changes them and however many threads at once."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from wflo._errors import RunNotFoundError
from wflo.store import Head, NewEvent, Store, open_store


def _truth(store: Store) -> dict[str, int]:
    return {s: int(n) for s, n in store.read("SELECT status, COUNT(*) FROM runs GROUP BY status")}


def _finish(store: Store, run_id: str, owner: str, status: str = "succeeded") -> None:
    run = store.get_run(run_id)
    store.append(run_id, Head(run.last_seq, run.last_hash), [NewEvent(f"run.{status}", {})], owner=owner,
                 status=status, output=1, finish=True)  # fmt: skip


def test_counts_follow_every_change(store_url: str) -> None:
    with open_store(store_url) as store:
        assert store.count_runs_by_status() == {}
        for i in range(5):
            store.create_run(run_id=f"q{i}", workflow="w", input={})
        for i in range(4):
            store.create_run(run_id=f"r{i}", workflow="w", input={}, owner="me")
        store.create_run(run_id="r0", workflow="w", input={}, owner="me")  # exists: counted once
        assert store.count_runs_by_status() == {"queued": 5, "running": 4} == _truth(store)
        claimed = store.claim_next("me", 30)
        assert claimed is not None
        _finish(store, "r0", "me")
        _finish(store, "r1", "me", "failed")
        store.request_cancel("q4")
        store.release("r2", "me")
        assert store.count_runs_by_status() == _truth(store)
        assert store.count_runs_by_status() == {"queued": 3, "running": 3, "succeeded": 1, "failed": 1,
                                                "cancelled": 1}  # fmt: skip
        store.write(lambda cur: store.execute(cur, "DELETE FROM runs WHERE id IN ('q0', 'r0')"))
        assert store.count_runs_by_status() == _truth(store)


@pytest.mark.postgres
def test_a_run_counted_in_another_shard_still_moves_exactly(pg_url: str) -> None:
    """Runs counted before the shards existed sit in shard 0 (m015's seed), not their id's
    shard: moving such a run's status must still leave each status's sum exact (its old
    shard's row may go below zero; only sums are read)."""
    with open_store(pg_url) as store:
        store.create_run(run_id="seeded", workflow="w", input={}, owner="me")

        def to_shard_zero(cur: object) -> None:
            store.execute(cur, "DELETE FROM run_counts")
            store.execute(cur, "INSERT INTO run_counts (status, shard, n) VALUES ('running', 0, 1)")

        store.write(to_shard_zero)
        _finish(store, "seeded", "me")
        assert store.count_runs_by_status() == {"succeeded": 1} == _truth(store)


@pytest.mark.parametrize("threads", [6])
def test_counts_stay_exact_when_many_threads_change_statuses_at_once(store_url: str, threads: int) -> None:
    with open_store(store_url) as store:
        per = 15
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                for i in range(per):
                    rid = f"t{t}-{i}"
                    store.create_run(run_id=rid, workflow="w", input={}, owner=f"o{t}")
                    _finish(store, rid, f"o{t}", "succeeded" if i % 3 else "failed")
                    store.create_run(run_id=f"{rid}-q", workflow="w", input={})
            except BaseException as exc:  # reported below
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        assert errors == []
        want = Counter({"succeeded": threads * 10, "failed": threads * 5, "queued": threads * per})
        assert store.count_runs_by_status() == dict(want) == _truth(store)


def test_a_run_by_prefix_is_exact_about_wildcards(store_url: str) -> None:
    with open_store(store_url) as store:
        for rid in ("abcd_1", "abcdX2", "abce-3", "ab%d-4"):
            store.create_run(run_id=rid, workflow="w", input={})
        assert store.find_run("abcd_").id == "abcd_1"  # "_" is not a wildcard
        assert store.find_run("ab%d").id == "ab%d-4"  # nor is "%"
        assert store.find_run("abce").id == "abce-3"
        with pytest.raises(RunNotFoundError):
            store.find_run("abcd")  # two runs start so: not unique
        with pytest.raises(RunNotFoundError):
            store.find_run("abcz")
        assert store.find_run("abce-3").id == "abce-3"


def _count_trigger_calls(store: Store) -> None:
    """Make ``wflo_run_counts`` note each of its calls in a table ``calls`` (its body as is)."""

    def wrap(cur: object) -> None:
        store.execute(cur, "CREATE TABLE calls (op TEXT NOT NULL)")
        (body,) = store.read("SELECT pg_get_functiondef('wflo_run_counts'::regproc)")[0]
        assert "\nBEGIN\n" in body
        store.execute(cur, body.replace("\nBEGIN\n", "\nBEGIN\n    INSERT INTO calls (op) VALUES (TG_OP);\n", 1))

    store.write(wrap)


def _steps(store: Store, run_id: str, owner: str, n: int) -> None:
    for i in range(n):
        run = store.get_run(run_id)
        store.append(run_id, Head(run.last_seq, run.last_hash), [NewEvent("step.completed", {"i": i})], owner=owner)


@pytest.mark.postgres
def test_a_step_on_postgres_does_not_call_the_count_trigger(pg_url: str) -> None:
    """m021: a step's head move names ``status`` in its UPDATE without changing it; only a
    change of status calls the counting function, and the counts stay exact."""
    with open_store(pg_url) as store:
        _count_trigger_calls(store)
        store.create_run(run_id="r", workflow="w", input={}, owner="me")
        _steps(store, "r", "me", 10)
        assert store.read("SELECT op, COUNT(*) FROM calls GROUP BY op") == [("INSERT", 1)]
        _finish(store, "r", "me")
        assert sorted(store.read("SELECT op, COUNT(*) FROM calls GROUP BY op")) == [("INSERT", 1), ("UPDATE", 1)]
        assert store.count_runs_by_status() == {"succeeded": 1} == _truth(store)


@pytest.mark.postgres
def test_a_store_at_m020_upgrades_to_the_split_count_triggers(pg_url: str) -> None:
    """A store migrated before m021 (one trigger for every change) upgrades in place: its
    counts stay exact through steps and status changes afterwards."""
    with open_store(pg_url) as store:
        store.create_run(run_id="old", workflow="w", input={}, owner="me")

        def back_to_m020(cur: object) -> None:
            store.execute(cur, "DROP TRIGGER wflo_run_counts ON runs")
            store.execute(cur, "DROP TRIGGER wflo_run_counts_status ON runs")
            store.execute(
                cur,
                "CREATE TRIGGER wflo_run_counts AFTER INSERT OR DELETE OR UPDATE OF status ON runs "
                "FOR EACH ROW EXECUTE FUNCTION wflo_run_counts()",
            )
            store.execute(cur, "UPDATE wflo_meta SET value = '20' WHERE key = 'schema_version'")

        store.write(back_to_m020)
        assert store.migrate()[:1] == ["m021_stepcost_status_trigger"]  # and those after it
        triggers = sorted(r[0] for r in store.read("SELECT tgname FROM pg_trigger WHERE tgrelid = 'runs'::regclass"))
        assert triggers == ["wflo_run_counts", "wflo_run_counts_status"]
        store.create_run(run_id="new", workflow="w", input={}, owner="me")
        _steps(store, "old", "me", 3)
        _finish(store, "old", "me")
        _steps(store, "new", "me", 3)
        store.release("new", "me")
        assert store.count_runs_by_status() == {"succeeded": 1, "running": 1} == _truth(store)


def _move(store: Store, run_id: str, status: str) -> None:
    store.write(lambda cur: store.execute(cur, "UPDATE runs SET status = ? WHERE id = ?", (status, run_id)))


@pytest.mark.postgres
def test_status_moves_either_way_keep_the_counts_exact_without_a_sort(pg_url: str) -> None:
    """m026: a change of status writes its two counts in status order without sorting them (no
    ``ORDER BY`` in the function), whichever of the two statuses sorts first, and runs counted
    in another shard (m015's seed, shard 0) still move exactly."""
    with open_store(pg_url) as store:
        (body,) = store.read("SELECT pg_get_functiondef('wflo_run_counts'::regproc)")[0]
        assert "ORDER BY" not in body.upper()
        for i in range(4):
            store.create_run(run_id=f"m{i}", workflow="w", input={}, owner="me")

        def seed(cur: object) -> None:  # m2, m3 counted in shard 0, as m015 counted old runs
            store.execute(
                cur, "UPDATE run_counts SET n = n - 1 WHERE status = 'running' AND shard = hashtext('m2') & 15"
            )
            store.execute(
                cur, "UPDATE run_counts SET n = n - 1 WHERE status = 'running' AND shard = hashtext('m3') & 15"
            )
            store.execute(cur, "INSERT INTO run_counts (status, shard, n) VALUES ('running', 0, 2) "
                               "ON CONFLICT (status, shard) DO UPDATE SET n = run_counts.n + 2")  # fmt: skip

        store.write(seed)
        assert store.count_runs_by_status() == {"running": 4} == _truth(store)
        for run_id in ("m0", "m2"):
            _move(store, run_id, "waiting")  # r < w: the old status's row first
            assert store.count_runs_by_status() == _truth(store)
            _move(store, run_id, "running")  # w > r: the new status first
            assert store.count_runs_by_status() == _truth(store)
            _move(store, run_id, "queued")  # r > q
            assert store.count_runs_by_status() == _truth(store)
        _finish(store, "m1", "me")
        _finish(store, "m3", "me", "failed")
        assert store.count_runs_by_status() == {"queued": 2, "succeeded": 1, "failed": 1} == _truth(store)


@pytest.mark.postgres
def test_a_store_at_m025_upgrades_to_the_ordered_count_moves(pg_url: str) -> None:
    """A store migrated before m026 (m020's sorted upsert) upgrades in place; counts stay exact."""
    from wflo.store import MIGRATIONS
    from wflo.store._migrations import _PG_RUN_COUNTS_ONE_STATEMENT

    index = [m.name for m in MIGRATIONS].index("m026_pgempty_count_moves")
    with open_store(pg_url) as store:
        store.create_run(run_id="old", workflow="w", input={}, owner="me")

        def back(cur: object) -> None:
            store.execute(cur, _PG_RUN_COUNTS_ONE_STATEMENT)
            store.execute(cur, f"UPDATE wflo_meta SET value = '{index}' WHERE key = 'schema_version'")

        store.write(back)
        assert "ORDER BY" in store.read("SELECT pg_get_functiondef('wflo_run_counts'::regproc)")[0][0]
        assert store.migrate()[:1] == ["m026_pgempty_count_moves"]
        assert "ORDER BY" not in store.read("SELECT pg_get_functiondef('wflo_run_counts'::regproc)")[0][0]
        store.create_run(run_id="new", workflow="w", input={}, owner="me")
        _finish(store, "old", "me")
        _move(store, "new", "waiting")
        _move(store, "new", "running")
        assert store.count_runs_by_status() == {"succeeded": 1, "running": 1} == _truth(store)
