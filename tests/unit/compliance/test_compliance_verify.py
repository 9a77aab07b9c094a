"""`wflo compliance verify` finds every way a pack can be changed after it was signed; the CLI
answers in one line with exit 10; user mistakes are one line too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from compliancekit import MONTH, scripted_month

from wflo.audit import generate_key
from wflo.audit._checkpoint import load_private_key, sign_record
from wflo.compliance import build_pack, verify_pack
from wflo.store import open_store


def wflo(*args: str, db: str | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env["WFLO_PRINCIPAL"] = "user:auditor"
    cmd = [sys.executable, "-m", "wflo.cli", *(["-d", db] if db else []), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pack")
    generate_key(root / "k.pem")
    generate_key(root / "other.pem")
    url = f"sqlite:///{root / 'wflo.db'}"
    with open_store(url) as store:
        scripted_month(store)
    done = wflo("compliance", "report", "--since", MONTH[0], "--until", MONTH[1], "--format", "json",
                "--out", str(root / "pack"), "--key", str(root / "k.pem"), db=url, cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "evidence pack written" in done.stdout
    return root


def _copy(pack: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(pack / "pack", target)
    return target


def test_intact_pack_verifies_on_the_cli(pack: Path) -> None:
    done = wflo("compliance", "verify", str(pack / "pack"), cwd=pack)
    assert done.returncode == 0 and "intact" in done.stdout
    pinned = wflo("compliance", "verify", str(pack / "pack"), "--public-key", str(pack / "k.pem"), cwd=pack)
    assert pinned.returncode == 0
    other = wflo("compliance", "verify", str(pack / "pack"), "--public-key", str(pack / "other.pem"), cwd=pack)
    assert other.returncode == 10 and "not signed by the pinned public key" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and "Traceback" not in other.stderr


def _altered_figure(d: Path) -> None:
    text = (d / "evidence.json").read_text()
    (d / "evidence.json").write_text(text.replace('"loop_stops": 3', '"loop_stops": 0', 1))


def _altered_record(d: Path) -> None:
    lines = (d / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["at"] = "2020-01-01T00:00:00.000000Z"
    (d / "records.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")


def _resigned_with_another_key(d: Path) -> None:
    """Alter a record and re-sign the manifest with a key that is not the audit key."""
    from wflo.compliance._pack import _sha256

    _altered_record(d)
    manifest = json.loads((d / "manifest.json").read_text())
    for f in manifest["files"]:
        f["sha256"], f["bytes"] = _sha256(d / f["name"]), (d / f["name"]).stat().st_size
    manifest = {k: v for k, v in manifest.items() if k not in ("signature", "public_key")}
    key = load_private_key(d.parent / "other.pem") if (d.parent / "other.pem").exists() else None
    assert key is not None
    (d / "manifest.json").write_text(json.dumps(sign_record(manifest, key)))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_altered_figure, "evidence.json was altered"),
        (lambda d: (d / "checkpoint.json").unlink(), "checkpoint.json is missing"),
        (lambda d: (d / "notes.txt").write_text("added later"), "notes.txt is not part of the pack (extra file)"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
        (
            lambda d: (d / "manifest.json").write_text(
                (d / "manifest.json").read_text().replace('"framework": "all"', '"framework": "soc2"')
            ),
            "bad signature",
        ),
        (_altered_record, "records.jsonl was altered"),
    ],
    ids=["figure", "missing", "extra", "no-manifest", "manifest-edited", "record"],
)
def test_verify_detects(pack: Path, tmp_path: Path, change: object, reason: str) -> None:
    copy = _copy(pack, tmp_path)
    assert verify_pack(copy).ok
    change(copy)  # type: ignore[operator]
    result = verify_pack(copy)
    assert not result.ok and reason in str(result.problem)
    done = wflo("compliance", "verify", str(copy), cwd=tmp_path)
    assert done.returncode == 10 and reason in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_resigned_pack_fails_the_pinned_key(pack: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pack"
    shutil.copytree(pack / "pack", copy)
    shutil.copy(pack / "other.pem", tmp_path / "other.pem")
    _resigned_with_another_key(copy)
    # The manifest is consistent again, but a record's hash is no longer its link hash ...
    result = verify_pack(copy)
    assert not result.ok and "records.jsonl line 1" in str(result.problem)
    # ... and pinned to the audit key, the signer is refused outright.
    assert "pinned public key" in str(verify_pack(copy, load_private_key(pack / "k.pem").public_key()).problem)


def test_unsafe_names_in_a_manifest_are_refused(pack: Path, tmp_path: Path) -> None:
    copy = _copy(pack, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"].append({"name": "../k.pem", "sha256": "0", "bytes": 0})
    manifest = {k: v for k, v in manifest.items() if k not in ("signature", "public_key")}
    (copy / "manifest.json").write_text(json.dumps(sign_record(manifest, load_private_key(pack / "k.pem"))))
    assert "unsafe file name" in str(verify_pack(copy).problem)


def test_user_mistakes_are_one_line(pack: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{pack / 'wflo.db'}"
    cases = [
        (["compliance", "report", "--since", "2026-03-01", "--out", str(tmp_path / "a")], "audit key"),
        (["compliance", "report", "--since", "2026-03-01", "--out", str(tmp_path / "b"), "--key", "nope.pem"], "not found"),
        (["compliance", "report", "--since", "2026-03-01", "--until", "2026-02-01", "--out", str(tmp_path / "c"),
          "--key", str(pack / "k.pem")], "must be after"),
        (["compliance", "report", "--since", "2026-03-01", "--out", str(pack / "pack"), "--key", str(pack / "k.pem")],
         "already holds a pack"),
        (["compliance", "verify", str(tmp_path / "absent")], "not a directory"),
    ]  # fmt: skip
    for args, message in cases:
        done = wflo(*args, db=url, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_python_api_refuses_a_non_empty_folder(tmp_path: Path, sqlite_url: str) -> None:
    generate_key(tmp_path / "k.pem")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    from wflo._errors import UserError

    with open_store(sqlite_url) as store, pytest.raises(UserError, match="not empty"):
        build_pack(store, tmp_path / "busy", since=MONTH[0], until=MONTH[1], private_key=load_private_key(tmp_path / "k.pem"))  # fmt: skip
