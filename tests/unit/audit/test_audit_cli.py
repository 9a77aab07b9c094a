"""`wflo audit …` and `wflo report` as users run them: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from auditkit import admin, make_run

from wflo.store import NewEvent, open_store

OLD = "2020-01-01T00:00:00.000000Z"


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str


def wflo(*args: str, db: str, cwd: Path) -> Proc:
    """The command in-process (click's CliRunner): a subprocess per command added most of this
    file's time and nothing it checks. An exception escaping a command fails the test."""
    from click.testing import CliRunner

    from wflo import _config
    from wflo.cli import cli
    from wflo.store import open_store

    open_store(db).close()  # reading commands refuse a missing store; these tests start from an empty one
    before = os.getcwd()
    os.chdir(cwd)  # relative paths (key.pem, cp.json) resolve there, as in a shell
    try:
        result = CliRunner().invoke(cli, list(args), env={"WFLO_DATABASE_URL": db, "WFLO_PRINCIPAL": "user:auditor"})
    finally:
        os.chdir(before)
        _config.reset()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Proc(result.exit_code, result.stdout, result.stderr)


def one_line_error(proc: Proc, code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and text in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_keygen_checkpoint_verify_and_truncation(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        make_run(store, "r1")
        make_run(store, "r2")
    keygen = wflo("audit", "keygen", "--out", "key.pem", db=store_url, cwd=tmp_path)
    assert keygen.returncode == 0 and keygen.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "pub.pem").write_text(keygen.stdout)
    made = wflo("audit", "checkpoint", "--key", "key.pem", "--out", "cp.json", db=store_url, cwd=tmp_path)
    assert made.returncode == 0 and "2 chains" in made.stdout
    ok = wflo("audit", "verify", "--checkpoint", "cp.json", "--public-key", "pub.pem", db=store_url, cwd=tmp_path)
    assert ok.returncode == 0 and "extends checkpoint" in ok.stdout and "pinned" in ok.stdout
    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'r2' AND seq > 6")
        db.set_run_head("r2", 6, db.hash_at("r2", 6))
        db.run("UPDATE runs SET status = 'running', output = NULL WHERE id = 'r2'")  # its end gone too
    plain = wflo("audit", "verify", db=store_url, cwd=tmp_path)
    assert plain.returncode == 0  # the chains alone look fine
    bad = wflo("audit", "verify", "--checkpoint", "cp.json", "--json", db=store_url, cwd=tmp_path)
    assert bad.returncode == 10
    out = json.loads(bad.stdout)
    assert not out["ok"] and out["checkpoint"]["broken"][0]["chain"] == "r2"
    assert out["checkpoint"]["broken"][0]["kind"] == "truncated"
    text = wflo("audit", "verify", "--checkpoint", "cp.json", db=store_url, cwd=tmp_path)
    assert text.returncode == 10 and "r2" in text.stderr and "truncated" in text.stderr
    wrong = wflo("audit", "keygen", "--out", "other.pem", db=store_url, cwd=tmp_path)
    (tmp_path / "other.pub").write_text(wrong.stdout)
    pinned = wflo("audit", "verify", "--checkpoint", "cp.json", "--public-key", "other.pub", db=store_url, cwd=tmp_path)
    assert pinned.returncode == 10 and "pinned public key" in pinned.stderr


def test_prune_export_report_commands(sqlite_url: str, tmp_path: Path) -> None:
    with open_store(sqlite_url) as store:
        make_run(store, "old", at=OLD)
        make_run(store, "new")
    asked = wflo("audit", "prune", "--before", "2021-01-01", db=sqlite_url, cwd=tmp_path)
    one_line_error(asked, 2, "add --yes")
    done = wflo("audit", "prune", "--before", "2021-01-01", "--yes", "--json", db=sqlite_url, cwd=tmp_path)
    assert done.returncode == 0 and [p["chain"] for p in json.loads(done.stdout)["pruned"]] == ["old"]
    verify = wflo("audit", "verify", db=sqlite_url, cwd=tmp_path)
    assert verify.returncode == 0 and "1 pruned on record" in verify.stdout
    exported = wflo("audit", "export", "--format", "csv", "--out", "ex", db=sqlite_url, cwd=tmp_path)
    assert exported.returncode == 0 and (tmp_path / "ex" / "manifest.json").exists()
    assert json.loads((tmp_path / "ex" / "manifest.json").read_text())["by"] == "user:auditor"
    rep = wflo("report", "--since", "2000-01-01", "--out", "r.html", db=sqlite_url, cwd=tmp_path)
    assert rep.returncode == 0 and "intact" in rep.stdout
    page = (tmp_path / "r.html").read_text()
    assert "Configuration changes" in page and "audit.pruned" in page and "audit.exported" in page
    js = wflo("report", "--since", "30d", "--format", "json", db=sqlite_url, cwd=tmp_path)
    assert json.loads(js.stdout)["verification"]["ok"] is True


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["report", "--since", "last tuesday"], 2, "invalid --since 'last tuesday'"),
        (["report", "--since", "2026-02-01", "--until", "2026-01-01"], 2, "must be after"),
        (["audit", "prune", "--before", "2026-13-45", "--yes"], 2, "invalid --before"),
        (["audit", "export", "--since", "soon", "--out", "x"], 2, "invalid --since"),
        (["audit", "checkpoint", "--key", "missing.pem", "--out", "cp.json"], 2, "key file missing.pem not found"),
        (["audit", "checkpoint", "--key", "garbage.txt", "--out", "cp.json"], 2, "not an unencrypted PEM private key"),
        (["audit", "verify", "--checkpoint", "nope.json"], 2, "cannot read checkpoint nope.json"),
        (["audit", "verify", "--checkpoint", "garbage.txt"], 2, "is not JSON"),
        (["audit", "verify", "--checkpoint", "other.json"], 2, "not a wflo checkpoint"),
        (["audit", "verify", "--public-key", "k.pub"], 2, "cannot read public key k.pub"),
        (["report", "--since", "1d", "--checkpoint", "garbage.txt"], 2, "is not JSON"),
        (["audit", "verify-export", "nope"], 2, "nope is not a directory"),
        (["audit", "verify-export", "garbage.txt"], 2, "garbage.txt is not a directory"),
        (["audit", "verify-export", ".", "--public-key", "k.pub"], 2, "give --checkpoint FILE too"),
        (["audit", "verify-export", ".", "--checkpoint", "garbage.txt"], 2, "is not JSON"),
        (["audit", "verify-export", ".", "--checkpoint", "other.json"], 2, "not a wflo checkpoint"),
    ],
)
def test_bad_input_is_one_line(sqlite_url: str, tmp_path: Path, args: list[str], code: int, text: str) -> None:
    (tmp_path / "garbage.txt").write_text("this is not a key or JSON")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    one_line_error(wflo(*args, db=sqlite_url, cwd=tmp_path), code, text)


def test_verify_since_checks_only_recent_chains_whole(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        make_run(store, "r1")
        make_run(store, "r2")
    every = json.loads(wflo("audit", "verify", "--json", db=store_url, cwd=tmp_path).stdout)
    recent = json.loads(wflo("audit", "verify", "--since", "1d", "--json", db=store_url, cwd=tmp_path).stdout)
    future = json.loads(wflo("audit", "verify", "--since", "2999-01-01", "--json", db=store_url, cwd=tmp_path).stdout)
    assert every["ok"] and recent["ok"] and future["ok"]
    assert recent["chains"] == every["chains"] and recent["events"] == every["events"]
    assert future["chains"] == 0  # no run has events that late (and no system events exist here)
    with admin(store_url) as db:  # an old link broken in a recent chain is still found
        db.run("UPDATE events SET type = 'run.edited' WHERE chain = 'r1' AND seq = 1")
    broken = wflo("audit", "verify", "--since", "1d", db=store_url, cwd=tmp_path)
    assert broken.returncode == 10 and "r1" in broken.stderr
    one_line_error(wflo("audit", "verify", "--since", "yesterday-ish", db=store_url, cwd=tmp_path), 2, "--since")


def test_signed_prunes_and_a_forged_prune_record(store_url: str, tmp_path: Path) -> None:
    """Someone with write access deletes a run's events and files a fake audit.pruned record:
    plain verify cannot tell, verify --public-key can (only prunes signed by the key count)."""
    with open_store(store_url) as store:
        make_run(store, "old", at=OLD)
        victim = make_run(store, "victim", at=OLD)
    keygen = wflo("audit", "keygen", "--out", "key.pem", db=store_url, cwd=tmp_path)
    (tmp_path / "pub.pem").write_text(keygen.stdout)
    signed = wflo(
        "audit", "prune", "--before", "2021-01-01", "--yes", "--key", "key.pem", "--json", db=store_url, cwd=tmp_path
    )
    assert signed.returncode == 0 and len(json.loads(signed.stdout)["pruned"]) == 2
    trusted = wflo("audit", "verify", "--public-key", "pub.pem", db=store_url, cwd=tmp_path)
    assert trusted.returncode == 0 and "2 pruned on record" in trusted.stdout

    # The forgery: a new run's events deleted by hand, an unsigned prune record filed for it.
    with open_store(store_url) as store:
        head = make_run(store, "forged")
        store.append_system([NewEvent("audit.pruned", {"by": "user:mallory", "before": "2999-01-01", "events": head.seq,
                                                        "chains": [{"chain": "forged", "count": head.seq, "head": head.hash}]})])  # fmt: skip
    with admin(store_url) as db:
        db.run("DELETE FROM events WHERE chain = 'forged'")
    fooled = wflo("audit", "verify", db=store_url, cwd=tmp_path)
    assert fooled.returncode == 0  # without the key, a prune record is taken at its word
    caught = wflo("audit", "verify", "--public-key", "pub.pem", db=store_url, cwd=tmp_path)
    assert caught.returncode == 10 and "forged" in caught.stderr and "victim" not in caught.stderr
    assert victim.seq > 0


@pytest.mark.parametrize("bound", [1, 2, 100_000], ids=["distinct-walk", "at-bound", "by-time"])
def test_since_finds_the_same_chains_by_time_or_by_walk(
    store_url: str, tmp_path: Path, bound: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--since`` reads a small window's chains through the time index and a large one's in one
    DISTINCT walk; both give the recent chains, once each, and none older."""
    from wflo.audit import _tables

    monkeypatch.setattr(_tables, "SINCE_BY_TIME", bound)
    with open_store(store_url) as store:
        make_run(store, "old", at=OLD)
        make_run(store, "new1")
        make_run(store, "new2")
    with admin(store_url) as db:  # every event of "old" old (its chain broken: out of the window)
        db.run(f"UPDATE events SET at = '{OLD}' WHERE chain = 'old'")
    with open_store(store_url) as store:
        assert _tables.chains_since(store, "2021-01-01T00:00:00.000000Z") == {"new1", "new2"}
        assert _tables.chains_since(store, "2999-01-01T00:00:00.000000Z") == set()
        assert _tables.chains_since(store, "2000-01-01T00:00:00.000000Z") == {"old", "new1", "new2"}
    recent = json.loads(wflo("audit", "verify", "--since", "2021-01-01", "--json", db=store_url, cwd=tmp_path).stdout)
    assert recent["ok"] and recent["chains"] == 2


def test_verify_export_offline(sqlite_url: str, tmp_path: Path) -> None:
    """`wflo audit verify-export DIR` needs no database: it reads the directory alone."""
    import subprocess
    import sys

    with open_store(sqlite_url) as store:
        make_run(store, "r1")
        make_run(store, "r2", calls=2)
    assert wflo("audit", "keygen", "--out", "key.pem", db=sqlite_url, cwd=tmp_path).returncode == 0
    (tmp_path / "pub.pem").write_text(wflo("audit", "keygen", "--out", "k2.pem", db=sqlite_url, cwd=tmp_path).stdout)
    assert (
        wflo("audit", "checkpoint", "--key", "key.pem", "--out", "cp.json", db=sqlite_url, cwd=tmp_path).returncode == 0
    )
    assert wflo("audit", "export", "--out", "ex", db=sqlite_url, cwd=tmp_path).returncode == 0
    # No store at all: a database URL that does not exist is never opened.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3] / "src")
    proc = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "-d", f"sqlite:///{tmp_path}/none/x.db", "audit", "verify-export", "ex"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("intact: 3 chains, 14 events of ex verified against its manifest (jsonl)")
    assert "no checkpoint given" in proc.stdout and not (tmp_path / "none").exists()
    js = wflo("audit", "verify-export", "ex", "--json", db=sqlite_url, cwd=tmp_path)
    assert js.returncode == 0 and json.loads(js.stdout)["ok"] is True and json.loads(js.stdout)["events"] == 14
    # Against the signed checkpoint: with its own key, and with another one pinned.
    ok = wflo("audit", "verify-export", "ex", "--checkpoint", "cp.json", "--public-key", "key.pem",
              db=sqlite_url, cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0 and "extends checkpoint of" in ok.stdout and "(pinned key)" in ok.stdout
    wrong = wflo("audit", "verify-export", "ex", "--checkpoint", "cp.json", "--public-key", "pub.pem",
                 db=sqlite_url, cwd=tmp_path)  # fmt: skip
    assert wrong.returncode == 10 and "CHECKPOINT REFUSED" in wrong.stderr and "pinned public key" in wrong.stderr
    # An edited event: exit 10, the file and the link named, one line each.
    events = tmp_path / "ex" / "events.jsonl"
    events.write_bytes(events.read_bytes().replace(b'\\"i\\":1', b'\\"i\\":7', 1))
    broken = wflo("audit", "verify-export", "ex", db=sqlite_url, cwd=tmp_path)
    assert broken.returncode == 10 and "Traceback" not in broken.stderr
    assert broken.stderr.splitlines()[0].startswith("BROKEN events.jsonl: SHA-256 ")
    assert broken.stderr.splitlines()[1].startswith("BROKEN r1: at seq 4 (hash): expected ")
    assert broken.stdout.startswith("broken: 3 chains")
    js = json.loads(wflo("audit", "verify-export", "ex", "--json", db=sqlite_url, cwd=tmp_path).stdout)
    assert js["ok"] is False and [(b["chain"], b["seq"], b["kind"]) for b in js["broken"]] == [("r1", 4, "hash")]
    (tmp_path / "ex" / "manifest.json").write_text("{not json")
    bad = wflo("audit", "verify-export", "ex", db=sqlite_url, cwd=tmp_path)
    assert bad.returncode == 10 and bad.stderr.startswith("BROKEN manifest.json: not JSON")
