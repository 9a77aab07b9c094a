"""A full disk is a fault of the host, not of the run: the run stays resumable and finishes
once space is freed. Real SQLite on a real, size-capped filesystem (a tmpfs mount)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import wflo
from wflo import _config


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem of its own (tmpfs with ``size=``); fails in CI if it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0777", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        why = f"cannot mount a size-capped tmpfs (needs root): {proc.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mnt
    finally:
        _config.reset()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill the disk (as another process would), then free ``leave`` bytes: small writes fit, big ones don't."""
    spare = disk / "spare"
    spare.write_bytes(b"\0" * leave)
    filler = disk / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    spare.unlink()
    return filler


@pytest.mark.parametrize("where", ["journal", "step"])
def test_a_run_hit_by_a_full_disk_stays_resumable_and_finishes_after_space_is_freed(
    small_disk: Path, where: str
) -> None:
    wflo.configure(database=f"sqlite:///{small_disk}/wflo.db", lease_seconds=5.0, poll_interval=0.05)
    state: dict[str, object] = {"filler": None, "ran": 0}

    @wflo.step
    def first() -> str:
        return "first"

    @wflo.step
    def big() -> str:
        state["ran"] = int(str(state["ran"])) + 1
        if state["filler"] is None:
            state["filler"] = _fill(small_disk, leave=256 * 1024)
        if where == "step":
            # The step's own write hits the full disk (ENOSPC from the OS).
            (small_disk / "report.bin").write_bytes(b"r" * (1024 * 1024))
        return "x" * (1024 * 1024)  # journaling this 1 MiB output needs more than is left

    @wflo.workflow
    def report() -> int:
        return len(first() + big())

    with pytest.raises(Exception) as info:
        report.options(id=f"full-{where}").run()
    from wflo.engine._executor import disk_full

    assert disk_full(info.value) is not None, repr(info.value)
    store = _config.get_store()
    run = store.get_run(f"full-{where}")
    assert not run.done, run  # today's code: failed for good
    assert not [e for e in store.events(run.id) if e.type in ("call.failed", "run.failed")]
    if where == "journal":
        # 256 KiB were left: enough for the evidence, which says what to do.
        assert run.status == "blocked" and run.lease_owner is None, run
        blocked = [e.data for e in store.events(run.id) if e.type == "run.blocked"][-1]
        assert blocked["reason"] == "disk_full" and "free disk space" in blocked["fix"]
    else:
        # The step's write took the last byte: not even the evidence fits. The run stays
        # running under its lease (which expires), never failed.
        assert run.status in ("running", "blocked"), run
    # Space is freed; resuming reruns the step whose result was never journaled, and finishes.
    Path(str(state["filler"])).unlink()
    with contextlib.suppress(FileNotFoundError):
        (small_disk / "report.bin").unlink()
    assert wflo.resume(run.id) == len("first") + 1024 * 1024
    assert store.get_run(run.id).status == "succeeded"
    assert state["ran"] == 2
    names = [e.data["name"] for e in store.events(run.id) if e.type == "call.completed"]
    assert [n.rsplit(".", 1)[-1] for n in names] == ["first", "big"]


def test_disk_full_recognises_the_forms_it_takes() -> None:
    import sqlite3

    from wflo.engine._executor import disk_full

    assert disk_full(OSError(errno.ENOSPC, "No space left on device")) is not None
    assert disk_full(sqlite3.OperationalError("database or disk is full")) is not None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert disk_full(outer) is not None
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(ValueError("disk")) is None
