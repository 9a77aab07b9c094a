"""``verify_export`` checks an export directory with no database: real exports from real stores,
then each forgery an auditor's copy could carry, made as a forger without the database would
(edit the events file, then reseal the manifest's hashes, sizes and chain entries to match)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from auditkit import make_run

from wflo.audit import (
    ExportReport,
    _verify_export,
    export,
    generate_key,
    load_private_key,
    load_public_key,
    make_checkpoint,
    prune,
    verify_export,
)
from wflo.store import GENESIS, SYSTEM_CHAIN, Head, NewEvent, link_hash, now_iso, open_store

OLD = "2020-01-01T00:00:00.000000Z"
FMTS = ["jsonl", "csv"]
BIG = "x" * 200_000  # over csv's default field size limit (131072)


def populate(store: Any) -> None:
    make_run(store, "r1")
    make_run(store, "r2", calls=2, status="failed")
    make_run(store, "r3", calls=1, finish=False)
    run, _ = store.create_run(run_id="r4-ünï", workflow="wf", input={"text": BIG, "q": 'a "b",\tc'}, owner="w1")
    store.append("r4-ünï", Head(run.last_seq, run.last_hash), [NewEvent("call.completed", {"out": "ok"})], owner="w1")


def exported(store_url: str, tmp_path: Path, fmt: str, name: str = "ex", **filters: Any) -> Path:
    with open_store(store_url) as store:
        if not store.events("r1"):
            populate(store)
        export(store, tmp_path / name, fmt=fmt, by="user:auditor", **filters)
    return tmp_path / name


# --------------------------------------------------------------------------- the forger's tools
def rows_of(out: Path) -> list[dict[str, Any]]:
    manifest = json.loads((out / "manifest.json").read_text())
    path = out / manifest["files"][0]["name"]
    if manifest["format"] == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as fh, _verify_export._csv_fields_up_to(1 << 20):
        return list(csv.DictReader(fh))


def lines_of(out: Path) -> tuple[Path, list[bytes]]:
    manifest = json.loads((out / "manifest.json").read_text())
    path = out / manifest["files"][0]["name"]
    return path, path.read_bytes().splitlines(keepends=True)


def index_of(out: Path, chain: str, seq: int) -> int:
    """The line (0-based, in the file) of an event."""
    header = 1 if (out / "events.csv").exists() else 0
    for i, r in enumerate(rows_of(out)):
        if r["chain"] == chain and int(r["seq"]) == seq:
            return i + header
    raise AssertionError((chain, seq))


def line_for(fmt: str, row: dict[str, Any]) -> bytes:
    if fmt == "jsonl":
        return (json.dumps(row, ensure_ascii=False) + "\n").encode()
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [row[c] for c in ("chain", "seq", "type", "at", "data", "prev_hash", "hash")]
    )
    return buf.getvalue().encode()


def reseal(out: Path, *, chains: bool = False) -> None:
    """Make the manifest's file hash and size match the edited file; with ``chains``, also
    every chain's entry and the counts: all that a forger without the database can do."""
    manifest = json.loads((out / "manifest.json").read_text())
    f = manifest["files"][0]
    data = (out / f["name"]).read_bytes()
    f["sha256"], f["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    if chains:
        rows = rows_of(out)
        entries: dict[str, dict[str, Any]] = {}
        for r in rows:
            e = entries.setdefault(r["chain"], {"chain": r["chain"], "first_seq": int(r["seq"]),
                                                "first_prev_hash": r["prev_hash"], "events": 0})  # fmt: skip
            e["last_seq"], e["head"] = int(r["seq"]), r["hash"]
            e["events"] += 1
        manifest["chains"] = list(entries.values())
        f["events"] = manifest["events"] = len(rows)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def rewrite_from(out: Path, fmt: str, chain: str, seq: int, edit: Any) -> None:
    """Change one event with ``edit(row)`` and recompute every hash of its chain from there on
    (a consistent rewrite, as someone with the export and time would make it)."""
    path, lines = lines_of(out)
    rows = rows_of(out)
    header = 1 if fmt == "csv" else 0
    prev = None
    for i, r in enumerate(rows):
        if r["chain"] != chain or int(r["seq"]) < seq:
            continue
        if int(r["seq"]) == seq:
            edit(r)
        r["prev_hash"] = prev if prev is not None else r["prev_hash"]
        r["hash"] = link_hash(r["prev_hash"], chain, int(r["seq"]), r["type"], r["at"], r["data"])
        r["seq"] = int(r["seq"])
        prev = r["hash"]
        lines[i + header] = line_for(fmt, r)
    path.write_bytes(b"".join(lines))


def kinds(report: ExportReport) -> tuple[list[str], list[tuple[str, Any, str | None]]]:
    return [p.kind for p in report.problems], [(r.chain, r.seq, r.kind) for r in report.chains if not r.ok]


# --------------------------------------------------------------------------- intact
@pytest.mark.parametrize("fmt", FMTS)
def test_a_real_export_verifies_offline(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    report = verify_export(out)
    assert report.ok, report.to_dict()
    assert report.format == fmt and report.events == 8 + 5 + 3 + 3
    assert sorted(r.chain for r in report.chains) == ["r1", "r2", "r3", "r4-ünï"]
    assert not report.starts and not report.holes and report.checkpoint is None
    # The second export holds the system chain too (the first one's audit.exported).
    again = exported(store_url, tmp_path, fmt, name="ex2")
    report = verify_export(again)
    assert report.ok and SYSTEM_CHAIN in {r.chain for r in report.chains}
    seen: list[int] = []
    assert verify_export(again, on_progress=lambda n, total: seen.append(n) or None).ok
    assert sum(seen) == report.events


def test_files_the_manifest_does_not_list_are_named_not_verified(sqlite_url: str, tmp_path: Path) -> None:
    """A file slipped into the export's directory (another events file, a "summary") is no
    part of what was verified: the report names it, and a clean export names nothing."""
    out = exported(sqlite_url, tmp_path, "jsonl")
    assert verify_export(out).unlisted == []
    (out / "events-extra.jsonl").write_text('{"chain": "r9"}\n')
    (out / "cp.json").write_text("{}")
    report = verify_export(out)
    assert report.ok and report.unlisted == ["cp.json", "events-extra.jsonl"]
    assert report.to_dict()["unlisted"] == ["cp.json", "events-extra.jsonl"]


def test_progress_comes_in_steps_with_the_manifest_total(sqlite_url: str, tmp_path: Path) -> None:
    with open_store(sqlite_url) as store:
        for i in range(30):
            make_run(store, f"r{i:02}", calls=40)
        export(store, tmp_path / "ex")
    calls: list[tuple[int, int]] = []
    assert verify_export(tmp_path / "ex", on_progress=lambda n, t: calls.append((n, t)) or None).ok
    assert len(calls) > 1 and {t for _, t in calls} == {30 * 43} and sum(n for n, _ in calls) == 30 * 43


# --------------------------------------------------------------------------- forgeries
@pytest.mark.parametrize("fmt", FMTS)
def test_an_edited_data_field(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    path, lines = lines_of(out)
    i = index_of(out, "r1", 4)
    edited = lines[i].replace(
        b'\\"i\\":1' if fmt == "jsonl" else b'""i"":1', b'\\"i\\":7' if fmt == "jsonl" else b'""i"":7'
    )
    assert edited != lines[i]
    lines[i] = edited
    path.write_bytes(b"".join(lines))
    assert kinds(verify_export(out)) == (["sha256"], [("r1", 4, "hash")])
    reseal(out)  # the file's hash made to match: the link still shows it
    assert kinds(verify_export(out)) == ([], [("r1", 4, "hash")])


@pytest.mark.parametrize("fmt", FMTS)
def test_a_deleted_line(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    path, lines = lines_of(out)
    del lines[index_of(out, "r1", 5)]
    path.write_bytes(b"".join(lines))
    problems, chains = kinds(verify_export(out))
    assert "size" in problems and "count" in problems and chains == [("r1", 5, "gap")]
    reseal(out, chains=True)
    report = verify_export(out)
    assert kinds(report) == ([], [("r1", 5, "gap")])
    assert report.chains[0].expected == "5" and report.chains[0].found == "6"


@pytest.mark.parametrize("fmt", FMTS)
def test_reordered_lines(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    path, lines = lines_of(out)
    a, b = index_of(out, "r1", 4), index_of(out, "r1", 5)
    lines[a], lines[b] = lines[b], lines[a]
    path.write_bytes(b"".join(lines))
    reseal(out)
    assert kinds(verify_export(out)) == ([], [("r1", 4, "gap")])
    # Whole chains moved apart: each chain must be in one piece.
    path, lines = lines_of(exported(store_url, tmp_path, fmt, name="ex2"))
    out = tmp_path / "ex2"
    i = index_of(out, "r2", 1)
    lines.append(lines.pop(i))
    path.write_bytes(b"".join(lines))
    reseal(out)
    problems, chains = kinds(verify_export(out))
    assert "order" in problems and ("r2", 1, "gap") in chains


@pytest.mark.parametrize("fmt", FMTS)
def test_a_changed_manifest_hash_and_size(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_export(out)
    assert kinds(report) == (["sha256"], []) and "the manifest says 0000" in report.problems[0].describe()
    manifest["files"][0]["sha256"] = "not hex"
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert kinds(verify_export(out)) == (["manifest"], [])


@pytest.mark.parametrize("fmt", FMTS)
def test_a_swapped_file(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    with open_store(f"sqlite:///{tmp_path}/other.db") as other:
        make_run(other, "r1", calls=6)  # the same run id, other events
        export(other, tmp_path / "other", fmt=fmt)
    name = f"events.{fmt}"
    (out / name).write_bytes((tmp_path / "other" / name).read_bytes())
    problems, chains = kinds(verify_export(out))
    assert "size" in problems or "sha256" in problems
    assert ("r1", 9, "head") in chains and ("r2", 1, "missing") in chains
    # The other export's manifest with this one's file: nothing lines up either.
    out = exported(store_url, tmp_path, fmt, name="ex2")
    (out / "manifest.json").write_bytes((tmp_path / "other" / "manifest.json").read_bytes())
    assert not verify_export(out).ok


@pytest.mark.parametrize("fmt", FMTS)
def test_a_truncated_file(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    path, _ = lines_of(out)
    data = path.read_bytes()
    cut = data.index(b"r2")  # inside the first line of r2
    path.write_bytes(data[: cut + 30])
    problems, chains = kinds(verify_export(out))
    assert problems[0] == "size" and "truncated" in problems and "count" in problems
    assert ("r2", 1, "missing") in chains and ("r3", 1, "missing") in chains
    # Cut at a line's end, manifest resealed to the file: the manifest's chains still say more.
    path.write_bytes(data[: data.index(b"\n", cut) + 1][: data.rindex(b"\n", 0, cut) + 1])
    reseal(out)
    assert kinds(verify_export(out))[1] == [("r2", 1, "missing"), ("r3", 1, "missing"), ("r4-ünï", 1, "missing")]


@pytest.mark.parametrize("fmt", FMTS)
def test_an_event_added_at_the_end_with_a_correct_link(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    last = [r for r in rows_of(out) if r["chain"] == "r3"][-1]
    seq = int(last["seq"]) + 1
    data = json.dumps({"output": 1}, separators=(",", ":"))
    at = last["at"]
    new = {"chain": "r3", "seq": seq, "type": "run.completed", "at": at, "data": data, "prev_hash": last["hash"],
           "hash": link_hash(last["hash"], "r3", seq, "run.completed", at, data)}  # fmt: skip
    path, lines = lines_of(out)
    lines.insert(index_of(out, "r3", seq - 1) + 1, line_for(fmt, new))
    path.write_bytes(b"".join(lines))
    reseal(out)  # the file's hash and size match; its chain entry does not
    report = verify_export(out)
    assert kinds(report) == (["count"], [("r3", seq, "head")])
    assert next(r.found for r in report.chains if r.chain == "r3").startswith(f"{seq}:")
    # With the chain entries resealed too it verifies: what only the database (or a checkpoint
    # signed after the event's time, which it is not) could contradict. docs/audit.md says so.
    reseal(out, chains=True)
    assert verify_export(out).ok


@pytest.mark.parametrize("fmt", FMTS)
def test_bytes_that_are_not_utf8(store_url: str, tmp_path: Path, fmt: str) -> None:
    out = exported(store_url, tmp_path, fmt)
    path, lines = lines_of(out)
    i = index_of(out, "r2", 3)
    lines[i] = lines[i].replace(b"call.completed", b"call.compl\xffted")
    path.write_bytes(b"".join(lines))
    reseal(out)
    report = verify_export(out)
    assert kinds(report) == (["encoding", "count"], [("r2", 3, "gap")])
    assert report.problems[0].line == i + 1 and "not UTF-8" in report.problems[0].describe()


def test_a_csv_with_an_extra_column(store_url: str, tmp_path: Path) -> None:
    out = exported(store_url, tmp_path, "csv")
    path, lines = lines_of(out)
    path.write_bytes(b"".join(line.rstrip(b"\n") + b",extra\n" for line in lines))
    reseal(out)
    report = verify_export(out)
    assert kinds(report)[0] == ["columns", "count"] and report.problems[0].line == 1
    assert all(r.kind == "missing" for r in report.chains)
    # The header intact and one row with an eighth field.
    out = exported(store_url, tmp_path, "csv", name="ex2")
    path, lines = lines_of(out)
    i = index_of(out, "r1", 2)
    lines[i] = lines[i].rstrip(b"\n") + b",extra\n"
    path.write_bytes(b"".join(lines))
    reseal(out)
    report = verify_export(out)
    assert kinds(report) == (["columns", "count"], [("r1", 2, "gap")]) and report.problems[0].line == i + 1


def test_a_jsonl_record_with_another_key(store_url: str, tmp_path: Path) -> None:
    out = exported(store_url, tmp_path, "jsonl")
    path, lines = lines_of(out)
    i = index_of(out, "r1", 2)
    lines[i] = lines[i].replace(b'{"chain"', b'{"note": "x", "chain"')
    path.write_bytes(b"".join(lines))
    reseal(out)
    assert kinds(verify_export(out)) == (["columns", "count"], [("r1", 2, "gap")])


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"format": "jsonl"}'])
def test_a_manifest_that_is_not_one(sqlite_url: str, tmp_path: Path, text: bytes) -> None:
    out = exported(sqlite_url, tmp_path, "jsonl")
    (out / "manifest.json").write_bytes(text)
    report = verify_export(out)
    assert not report.ok and len(report.problems) == 1 and report.problems[0].file == "manifest.json"
    assert report.problems[0].kind in ("manifest", "encoding") and report.events == 0


# --------------------------------------------------------------------------- odd files
def test_odd_files_are_refused_unread(sqlite_url: str, tmp_path: Path) -> None:
    out = exported(sqlite_url, tmp_path, "jsonl")
    events = out / "events.jsonl"
    # Larger than listed (a sparse 20 GiB file): refused on its size, never read.
    real = events.read_bytes()
    with events.open("r+b") as fh:
        fh.truncate(20 << 30)
    report = verify_export(out)
    assert kinds(report)[0] == ["size"] and report.events == 0
    # A FIFO (reading it would block), a symlink, a directory: not opened.
    events.unlink()
    os.mkfifo(events)
    assert kinds(verify_export(out))[0] == ["not-a-file"]
    events.unlink()
    (tmp_path / "elsewhere").write_bytes(real)
    events.symlink_to(tmp_path / "elsewhere")
    assert kinds(verify_export(out))[0] == ["not-a-file"]
    events.unlink()
    assert kinds(verify_export(out))[0] == ["missing"]
    # A manifest naming a path outside the directory.
    events.write_bytes(real)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][0]["name"] = "../elsewhere"
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_export(out)
    assert kinds(report)[0] == ["manifest"] and "unsafe file name" in report.problems[0].detail
    (out / "manifest.json").unlink()
    os.mkfifo(out / "manifest.json")
    assert kinds(verify_export(out))[0] == ["not-a-file"]


@pytest.mark.parametrize("fmt", FMTS)
def test_a_very_long_line_is_reported_not_held(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.setattr(_verify_export, "LINE_MAX", 100_000)
    out = exported(sqlite_url, tmp_path, fmt)  # r4's first event is over 200,000 bytes
    report = verify_export(out)
    assert kinds(report) == (["too-long", "count"], [("r4-ünï", 1, "gap")])
    assert report.problems[0].line == index_of(out, "r4-ünï", 1) + 1
    assert verify_export(exported(sqlite_url, tmp_path, fmt, name="ex2")).problems[0].kind == "too-long"


def test_not_a_directory_is_a_user_error(tmp_path: Path) -> None:
    from wflo.errors import UserError

    with pytest.raises(UserError, match="is not a directory"):
        verify_export(tmp_path / "nope")


# --------------------------------------------------------------------------- from the middle
def after_a_moment() -> str:
    """A cut-off between what was written before this call and what is written after it."""
    time.sleep(0.01)
    cut = now_iso()
    time.sleep(0.01)
    return cut


def test_a_since_export_starts_mid_chain_and_says_so(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        head = make_run(store, "old", calls=3, finish=False)  # seq 1..5
        cut = after_a_moment()
        head = store.append("old", head, [NewEvent("call.completed", {"late": 1})], owner="w1")
        # A writer whose clock was behind, between two later events: left out by --since.
        head = store.append("old", head, [NewEvent("call.completed", {"late": 2}, OLD)], owner="w1")
        store.append("old", head, [NewEvent("call.completed", {"late": 3})], owner="w1")
        make_run(store, "new")
        export(store, tmp_path / "ex", since=cut)
    report = verify_export(tmp_path / "ex")
    assert report.ok, report.to_dict()
    assert report.starts == {"old": 6} and report.holes == [("old", 7, 7)]
    # A deleted line there is a hole too (the --since filter cannot tell), but the count says it.
    path, lines = lines_of(tmp_path / "ex")
    del lines[index_of(tmp_path / "ex", "new", 4)]
    path.write_bytes(b"".join(lines))
    reseal(tmp_path / "ex")
    assert kinds(verify_export(tmp_path / "ex"))[1] == [("new", 8, "head")]
    # The start itself is the manifest's word: another first prev_hash is a "start" finding.
    rewrite_from(tmp_path / "ex", "jsonl", "old", 6, lambda r: r.update(prev_hash="1" * 64))
    assert ("old", 6, "start") in kinds(verify_export(tmp_path / "ex"))[1]


# --------------------------------------------------------------------------- checkpoints
def keys(tmp_path: Path) -> tuple[Any, Any]:
    generate_key(tmp_path / "k.pem")
    private = load_private_key(tmp_path / "k.pem")
    return private, load_public_key(tmp_path / "k.pem")


@pytest.mark.parametrize("fmt", FMTS)
def test_an_export_against_a_signed_checkpoint(store_url: str, tmp_path: Path, fmt: str) -> None:
    private, public = keys(tmp_path)
    with open_store(store_url) as store:
        populate(store)
        checkpoint = make_checkpoint(store, private, by="user:auditor")
        make_run(store, "later")  # after the checkpoint: rests on the export alone
        export(store, tmp_path / "ex", fmt=fmt)
    out = tmp_path / "ex"
    report = verify_export(out, checkpoint=checkpoint, public_key=public)
    assert report.ok and report.checkpoint is not None and report.checkpoint.pinned, report.to_dict()
    # A consistent rewrite of r1 (every hash and the manifest recomputed) passes the export's
    # own checks; the checkpoint names it.
    rewrite_from(out, fmt, "r1", 4, lambda r: r.update(data=r["data"].replace('"i":1', '"i":7')))
    reseal(out, chains=True)
    assert verify_export(out).ok
    report = verify_export(out, checkpoint=checkpoint, public_key=public)
    assert not report.ok and [(r.chain, r.kind) for r in report.checkpoint.reports] == [("r1", "rewritten")]
    # The tail of r2 cut and everything resealed: truncated against the checkpoint.
    out = exported(store_url, tmp_path, fmt, name="ex2")
    path, lines = lines_of(out)
    del lines[index_of(out, "r2", 5)]
    path.write_bytes(b"".join(lines))
    reseal(out, chains=True)
    assert verify_export(out).ok
    report = verify_export(out, checkpoint=checkpoint, public_key=public)
    assert [(r.chain, r.kind, r.found) for r in report.checkpoint.reports] == [("r2", "truncated", "4 events")]
    # A whole run left out of a full export: missing.
    out = exported(store_url, tmp_path, fmt, name="ex3")
    path, lines = lines_of(out)
    path.write_bytes(b"".join(line for line in lines if b"r3" not in line))
    reseal(out, chains=True)
    assert verify_export(out).ok
    report = verify_export(out, checkpoint=checkpoint, public_key=public)
    assert [(r.chain, r.kind) for r in report.checkpoint.reports] == [("r3", "missing")]
    # Another signer, and a doctored checkpoint file.
    (tmp_path / "o").mkdir()
    other, _ = keys(tmp_path / "o")
    with open_store(store_url) as store:
        forged = make_checkpoint(store, other, by="x")
    report = verify_export(tmp_path / "ex", checkpoint=forged, public_key=public)
    assert not report.ok and "not signed by the pinned public key" in str(report.checkpoint.problem)
    doctored = {**checkpoint, "chains": [{**c, "head": "0" * 64} for c in checkpoint["chains"]]}
    report = verify_export(tmp_path / "ex2", checkpoint=doctored)
    assert not report.ok and "bad signature" in str(report.checkpoint.problem)


def test_a_partial_export_against_a_checkpoint(store_url: str, tmp_path: Path) -> None:
    private, public = keys(tmp_path)
    with open_store(store_url) as store:
        head = make_run(store, "a", calls=3, finish=False)  # seq 1..5
        make_run(store, "b")  # finished before the cut-off: not in the --since export
        checkpoint = make_checkpoint(store, private, by="x")  # signs a at 5
        cut = after_a_moment()
        store.append("a", head, [NewEvent("call.completed", {"late": 1})], owner="w1")
        export(store, tmp_path / "since", since=cut)
        export(store, tmp_path / "run", run_id="a")
    # "a" is exported from seq 6: its first prev_hash is the signed head (seq 5).
    report = verify_export(tmp_path / "since", checkpoint=checkpoint, public_key=public)
    assert report.ok and report.starts == {"a": 6}, report.to_dict()
    assert report.uncovered == ["b"]  # filtered out: the export cannot speak to it
    rewrite_from(tmp_path / "since", "jsonl", "a", 6, lambda r: r.update(prev_hash="2" * 64))
    reseal(tmp_path / "since", chains=True)
    assert verify_export(tmp_path / "since").ok  # the start is the manifest's word alone…
    report = verify_export(tmp_path / "since", checkpoint=checkpoint, public_key=public)
    assert [(r.chain, r.kind) for r in report.checkpoint.reports] == [("a", "rewritten")]  # …not the checkpoint's
    report = verify_export(tmp_path / "run", checkpoint=checkpoint, public_key=public)
    assert report.ok and sorted(report.uncovered) == ["b"]


def test_a_pruned_run_against_a_checkpoint(store_url: str, tmp_path: Path) -> None:
    private, public = keys(tmp_path)
    with open_store(store_url) as store:
        make_run(store, "gone", at=OLD)
        make_run(store, "kept")
        checkpoint = make_checkpoint(store, private, by="x")
        prune(store, "2021-01-01T00:00:00.000000Z", by="user:ops", private_key=private)
        export(store, tmp_path / "signed")
    report = verify_export(tmp_path / "signed", checkpoint=checkpoint, public_key=public)
    assert report.ok, report.to_dict()  # the export's system chain holds the signed prune record
    with open_store(f"sqlite:///{tmp_path}/u.db") as store:
        make_run(store, "gone", at=OLD)
        checkpoint = make_checkpoint(store, private, by="x")
        prune(store, "2021-01-01T00:00:00.000000Z", by="user:ops")  # unsigned
        export(store, tmp_path / "unsigned")
    assert verify_export(tmp_path / "unsigned", checkpoint=checkpoint).ok  # no pinned key: believed
    report = verify_export(tmp_path / "unsigned", checkpoint=checkpoint, public_key=public)
    assert [(r.chain, r.kind) for r in report.checkpoint.reports] == [("gone", "unsigned-prune")]


def test_the_offline_check_is_the_chains_own_hash(sqlite_url: str, tmp_path: Path) -> None:
    """One hash implementation: the verifier's links are ``link_hash``'s, from genesis."""
    out = exported(sqlite_url, tmp_path, "jsonl")
    first = rows_of(out)[0]
    assert first["prev_hash"] == GENESIS
    assert link_hash(GENESIS, first["chain"], 1, first["type"], first["at"], first["data"]) == first["hash"]
    assert _verify_export._ChainCheck.__module__ == "wflo.audit._verify"
