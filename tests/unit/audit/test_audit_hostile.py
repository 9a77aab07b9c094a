"""A hostile sweep of the flight recorder: someone with write access to the database (or to an
exported file or a pack) tries to hide or change what happened. Each test is a way that worked
before it was closed; both stores wherever storage is involved."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditkit import admin, make_run

from wflo.audit import build_report, verify_all, verify_run
from wflo.store import Store, open_store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as st:
        make_run(st, "ok1")  # seq 1 created, 2 started, 3..7 calls, 8 run.completed
        make_run(st, "bad1", status="failed")  # ... 8 run.failed
        make_run(st, "live1", finish=False)  # 7 events, still running
        yield st


def broken(store: Store) -> list[tuple[str, int | None, str | None]]:
    return [(r.chain, r.seq, r.kind) for r in verify_all(store) if not r.ok]


def cli_verify(store_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"WFLO_DATABASE_URL": store_url, "PYTHONPATH": ":".join(sys.path)}
    return subprocess.run([sys.executable, "-m", "wflo.cli", "audit", "verify"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


# --------------------------------------------------------------------------- the runs projection
# The ``runs`` row is what the panel, `wflo runs`, the report and the costs group by; it is not
# chained. Verify said "intact" for every edit below, and the report counted the forged values.


def test_a_failed_run_turned_succeeded_in_its_row_is_found(store: Store, store_url: str, tmp_path: Path) -> None:
    with admin(store_url) as db:
        db.run("UPDATE runs SET status = 'succeeded', output = '\"all good\"', error = NULL WHERE id = 'bad1'")
    assert broken(store) == [("bad1", 8, "projection")]
    report = verify_run(store, "bad1")  # the panel's run page and `wflo audit verify RUN`
    assert not report.ok and "status 'failed'" in report.describe() and "'succeeded'" in report.describe()
    # The report still reads the row, but the verification it carries now says the history is not intact.
    assert build_report(store, since="2000-01-01T00:00:00.000000Z")["verification"]["ok"] is False
    proc = cli_verify(store_url, tmp_path)
    assert proc.returncode == 10 and "bad1" in proc.stderr and "projection" in proc.stderr


def test_an_edited_output_and_a_run_moved_to_another_tenant_are_found(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("UPDATE runs SET output = '99' WHERE id = 'ok1'")
        db.run("UPDATE runs SET tenant = 'acme' WHERE id = 'bad1'")
        db.run("UPDATE runs SET workflow = 'other' WHERE id = 'live1'")
    assert broken(store) == [("bad1", 1, "projection"), ("live1", 1, "projection"), ("ok1", 8, "projection")]


def test_a_running_run_marked_ended_and_an_ended_run_marked_running_are_found(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("UPDATE runs SET status = 'cancelled' WHERE id = 'live1'")
        db.run("UPDATE runs SET status = 'running' WHERE id = 'ok1'")
    assert broken(store) == [("live1", 7, "projection"), ("ok1", 8, "projection")]


def test_a_finished_runs_tail_cut_with_its_head_moved_back_is_found_without_a_checkpoint(
    store: Store, store_url: str
) -> None:
    # The chain and its recorded head agree, but the row still says the run ended: its end is gone.
    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'bad1' AND seq >= 7")
        db.set_run_head("bad1", 6, db.hash_at("bad1", 6))
    assert broken(store) == [("bad1", 6, "projection")]


def test_a_runs_row_deleted_to_hide_the_run_is_found(store: Store, store_url: str) -> None:
    with admin(store_url) as db:
        db.run("DELETE FROM runs WHERE id = 'bad1'")
    assert broken(store) == [("bad1", 8, "head")]
    assert "no runs row" in verify_run(store, "bad1").describe()


# --------------------------------------------------------------------------- damaged text
# SQLite stores whatever bytes it is given as TEXT; Python's sqlite3 then refuses to read the
# row, and the whole verification (and `wflo audit verify`) died with a traceback. PostgreSQL
# refuses text that is not UTF-8 on write, so only SQLite can hold such a row.


@pytest.mark.parametrize("column", ["data", "type", "at", "hash", "prev_hash", "chain"])
def test_a_row_that_is_not_utf8_is_reported_where_it_is(sqlite_url: str, tmp_path: Path, column: str) -> None:
    with open_store(sqlite_url) as st:
        make_run(st, "a1")
        make_run(st, "b1")
        make_run(st, "c1")
    with admin(sqlite_url) as db:
        db.run(f"UPDATE events SET {column} = CAST(x'7b2261223a22ff227d' AS TEXT) WHERE chain = 'b1' AND seq = 4")
    with open_store(sqlite_url) as st:
        reports = verify_all(st)
        bad = [r for r in reports if not r.ok]
        assert [r.chain for r in reports if r.ok] == ["a1", "c1"]  # the chains after it are still verified
        if column == "chain":  # the row moved to a chain of its own, named as best it can be
            assert sorted((r.chain, r.seq) for r in bad) == [("b1", 4), ('{"a":"\ufffd"}', 1)]
        else:
            assert [(r.chain, r.seq) for r in bad] == [("b1", 4)]
            one = verify_run(st, "b1")  # one chain read alone takes the same way round
            assert not one.ok and one.seq == 4
        for workers in (2,):  # the second process reports it too, and its report crosses as JSON
            from wflo.audit._verify import _verify_every_chain

            assert [r.chain for r in _verify_every_chain(st, workers) if r.ok] == ["a1", "c1"]
    proc = cli_verify(sqlite_url, tmp_path)
    assert proc.returncode == 10 and "Traceback" not in proc.stderr and "b1" in proc.stderr
    as_json = subprocess.run([sys.executable, "-m", "wflo.cli", "-d", sqlite_url, "audit", "verify", "--json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert as_json.returncode == 10 and "Traceback" not in as_json.stderr, as_json.stderr


def test_a_nul_in_stored_data_is_text_that_hashes(store_url: str) -> None:
    # wflo writes NUL as the JSON escape \u0000 (PostgreSQL text cannot hold a NUL byte); a raw
    # NUL put into SQLite by hand is a changed row like any other.
    from wflo.store import Head, NewEvent

    with open_store(store_url) as st:
        run, _ = st.create_run(run_id="n1", workflow="wf", input={"x": "a\x00b"}, owner="w1")
        st.append("n1", Head(run.last_seq, run.last_hash), [NewEvent("note", {"t": "\x00"})], owner="w1")
        assert broken(st) == [] and st.events("n1")[-1].data == {"t": "\x00"}
    if store_url.startswith("sqlite"):
        with admin(store_url) as db:
            db.run("UPDATE events SET data = ? WHERE chain = 'n1' AND seq = 3", ('{"t":"\x00"}',))
        with open_store(store_url) as st:
            assert broken(st) == [("n1", 3, "hash")]


# --------------------------------------------------------------------------- what "intact" means
def test_intact_without_a_checkpoint_says_what_it_cannot_show(store: Store, store_url: str, tmp_path: Path) -> None:
    # A consistent rewrite verifies: the line under "intact" says so, and how to catch it.
    with admin(store_url) as db:
        db.run("UPDATE events SET data = replace(data, '\"i\":0', '\"i\":100') WHERE chain = 'ok1' AND seq = 3")
        seq, head = db.rehash_from("ok1", 3)
        db.set_run_head("ok1", seq, head)
    proc = cli_verify(store_url, tmp_path)
    assert proc.returncode == 0 and "intact" in proc.stdout
    assert "no checkpoint given" in proc.stdout and "--checkpoint" in proc.stdout


# --------------------------------------------------------------------------- evidence packs
def test_a_pack_member_swapped_for_a_huge_file_is_refused_without_reading_it(tmp_path: Path, sqlite_url: str) -> None:
    import time

    from wflo.audit import generate_key
    from wflo.audit._checkpoint import load_private_key
    from wflo.compliance import build_pack, verify_pack

    generate_key(tmp_path / "k.pem")
    with open_store(sqlite_url) as st:
        make_run(st, "p1")
        build_pack(st, tmp_path / "pack", since="2000-01-01T00:00:00.000000Z", until="2999-01-01T00:00:00.000000Z",
                   private_key=load_private_key(tmp_path / "k.pem"), fmt="json", by="user:auditor")  # fmt: skip
    with (tmp_path / "pack" / "records.jsonl").open("r+b") as fh:
        fh.truncate(64 << 30)  # 64 GiB, sparse: hashing it first took minutes
    started = time.monotonic()
    result = verify_pack(tmp_path / "pack")
    assert not result.ok and "records.jsonl was altered" in str(result.problem)
    assert time.monotonic() - started < 5
