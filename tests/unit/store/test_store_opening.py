"""Opening a store: misspelt URLs, damaged files and missing stores give one-line errors.

Issue 14 finding 8 and issue 15 item 6: a corrupt page gave a traceback from ``wflo runs
list``; ``sqlite:/abc.db`` raised ``IndexError``; ``sqlite://rel.db`` opened ``el.db``; a
read-only use of a missing store created its directories and an empty database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wflo._errors import ConfigurationError, StoreCorruptError, StoreNotFoundError, exit_code_for
from wflo.store import open_store


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("sqlite:/abc.db", "sqlite:///abc.db or sqlite:////abc.db"),
        ("sqlite://rel.db", "sqlite:///rel.db or sqlite:////rel.db"),
        ("sqlite:abc.db", "sqlite:///abc.db"),
        ("sqlite://", "sqlite:///relative/path.db"),
    ],
)
def test_misspelt_sqlite_urls_are_refused_with_the_right_spelling(
    url: str, hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"sqlite:///relative/path\.db") as info:
        open_store(url)
    assert hint in str(info.value)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no el.db, no abc.db


def test_relative_and_absolute_sqlite_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel.db") as store:
        assert store.path == "rel.db"  # type: ignore[attr-defined]
    assert (tmp_path / "rel.db").is_file()
    with open_store(f"sqlite:///{tmp_path}/abs.db") as store:
        assert store.path == f"{tmp_path}/abs.db"  # type: ignore[attr-defined]


def test_read_only_open_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    with pytest.raises(StoreNotFoundError) as info:
        open_store(f"sqlite:///{missing}", create=False)
    assert str(missing) in str(info.value) and "wflo db migrate" in str(info.value)
    assert exit_code_for(info.value) == 4
    assert not (tmp_path / "nonexistent").exists()
    # An existing store opens read-only as usual.
    with open_store(f"sqlite:///{tmp_path}/ok.db") as store:
        store.create_run(run_id="r", workflow="w", input={})
    with open_store(f"sqlite:///{tmp_path}/ok.db", create=False) as store:
        assert store.get_run("r").workflow == "w"


def test_a_file_that_is_not_a_database_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "wflo.db"
    path.write_bytes(b"this is not a database, just some text\n" * 200)
    with pytest.raises(StoreCorruptError) as info:
        open_store(f"sqlite:///{path}")
    message = str(info.value)
    assert str(path) in message and "restore it from a backup" in message and "\n" not in message
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


def _damage(path: Path) -> None:
    """Overwrite every page after the first two with garbage (the tables' b-tree pages)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for offset in range(2 * page, len(data), page):
        data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _filled(tmp_path: Path) -> Path:
    path = tmp_path / "wflo.db"
    with open_store(f"sqlite:///{path}") as store:
        for i in range(200):
            store.create_run(run_id=f"run-{i:04}", workflow="w", input={"pad": "x" * 200})
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    _damage(path)
    return path


def test_a_damaged_page_is_a_store_corrupt_error(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    with pytest.raises(StoreCorruptError, match="is damaged") as info, open_store(f"sqlite:///{path}") as store:
        store.list_runs(limit=500)
    assert str(path) in str(info.value)


def test_wflo_runs_list_on_a_damaged_store_prints_one_line(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    env = {**os.environ, "WFLO_DATABASE_URL": f"sqlite:///{path}", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "wflo.cli", "runs", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "damaged" in lines[0], proc.stderr
