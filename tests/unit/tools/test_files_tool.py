"""files: every path walked from the root without following links; writes atomic and opt-in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from wflo import UserError
from wflo.tools import Tool, ToolRefused, files


def _tools(root: Path, **options: Any) -> dict[str, Tool[..., dict[str, Any]]]:
    return {t.name: t for t in files(root, **options)}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("hello")
    (tmp_path / "outside.txt").write_text("secret")
    return root


def test_read_and_list(workspace: Path) -> None:
    t = _tools(workspace)
    assert t["read_file"]("docs/a.txt") == {"path": "docs/a.txt", "size": 5, "truncated": False, "content": "hello"}
    assert t["read_file"]("./docs//a.txt")["content"] == "hello"
    assert t["list_dir"]()["entries"] == [{"name": "docs", "type": "dir", "size": None}]
    assert t["list_dir"]("docs")["entries"] == [{"name": "a.txt", "type": "file", "size": 5}]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../outside.txt", r"'\.\.' is not allowed"),
        ("docs/../../outside.txt", r"'\.\.' is not allowed"),
        ("../../../../etc/passwd", r"'\.\.' is not allowed"),
        ("/etc/passwd", "absolute paths"),
        ("docs/missing.txt", "does not exist"),
        ("docs", "not a regular file"),
        ("a\x00b", "NUL"),
    ],
)
def test_paths_outside_or_odd_are_refused(workspace: Path, path: str, reason: str) -> None:
    with pytest.raises(ToolRefused, match=reason):
        _tools(workspace)["read_file"](path)


def test_symlink_file_pointing_outside_is_refused(workspace: Path) -> None:
    (workspace / "link.txt").symlink_to(workspace.parent / "outside.txt")
    (workspace / "inner.txt").symlink_to(workspace / "docs" / "a.txt")  # even one that stays inside
    t = _tools(workspace, writable=True, approval=None)
    for name in ("link.txt", "inner.txt"):
        with pytest.raises(ToolRefused, match="symbolic link"):
            t["read_file"](name)
        with pytest.raises(ToolRefused, match="symbolic link"):
            t["write_file"](name, "overwritten")
    assert (workspace.parent / "outside.txt").read_text() == "secret"


def test_symlinked_directory_component_is_refused(workspace: Path) -> None:
    (workspace / "etc").symlink_to("/etc")
    (workspace / "up").symlink_to(workspace.parent)
    t = _tools(workspace, writable=True, approval=None)
    with pytest.raises(ToolRefused, match="symbolic link"):
        t["read_file"]("etc/passwd")
    with pytest.raises(ToolRefused, match="symbolic link"):
        t["list_dir"]("up")
    with pytest.raises(ToolRefused, match="symbolic link"):
        t["write_file"]("up/outside.txt", "overwritten")
    assert (workspace.parent / "outside.txt").read_text() == "secret"


def test_hardlink_to_an_outside_file_is_refused(workspace: Path) -> None:
    os.link(workspace.parent / "outside.txt", workspace / "hard.txt")
    t = _tools(workspace, writable=True, approval=None)
    with pytest.raises(ToolRefused, match="hard links"):
        t["read_file"]("hard.txt")
    with pytest.raises(ToolRefused, match="hard links"):
        t["write_file"]("hard.txt", "overwritten")
    assert (workspace.parent / "outside.txt").read_text() == "secret"


def test_device_and_fifo_are_refused(workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")
    with pytest.raises(ToolRefused, match="not a regular file"):
        _tools(workspace)["read_file"]("pipe")  # and it does not hang


def test_not_writable_means_no_write_tool(workspace: Path) -> None:
    t = _tools(workspace)
    assert set(t) == {"read_file", "list_dir"}
    assert all(tool.risk == "low" for tool in t.values())


def test_write_is_atomic_and_confined(workspace: Path) -> None:
    t = _tools(workspace, writable=True, approval=None)
    assert t["write_file"]("docs/b.txt", "new") == {"path": "docs/b.txt", "bytes": 3}
    assert t["write_file"]("docs/a.txt", "replaced")["bytes"] == 8
    assert (workspace / "docs" / "b.txt").read_text() == "new"
    assert (workspace / "docs" / "a.txt").read_text() == "replaced"
    assert sorted(p.name for p in (workspace / "docs").iterdir()) == ["a.txt", "b.txt"]  # no temp files left
    with pytest.raises(ToolRefused, match="does not exist"):
        t["write_file"]("nodir/c.txt", "x")
    with pytest.raises(ToolRefused, match=r"'\.\.' is not allowed"):
        t["write_file"]("../escape.txt", "x")
    assert not (workspace.parent / "escape.txt").exists()


def test_size_cap(workspace: Path) -> None:
    (workspace / "big.txt").write_text("y" * 5000)
    t = _tools(workspace, writable=True, max_bytes="1KiB", approval=None)
    out = t["read_file"]("big.txt")
    assert out["truncated"] is True and len(out["content"]) == 1024 and out["size"] == 5000
    with pytest.raises(ToolRefused, match="at most 1024 may be written"):
        t["write_file"]("c.txt", "z" * 1025)
    assert not (workspace / "c.txt").exists()


def test_write_needs_approval_by_default(workspace: Path) -> None:
    write = _tools(workspace, writable=True)["write_file"]
    manifest = write.manifest()
    assert manifest["risk"] == "high" and manifest["approval"] is not None
    assert _tools(workspace, writable=True, approval=None)["write_file"].manifest()["approval"] is None


def test_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="existing directory"):
        files(tmp_path / "nope")


def test_prefix_names_the_tools(workspace: Path) -> None:
    assert set(_tools(workspace, prefix="docs_")) == {"docs_read_file", "docs_list_dir"}


def test_a_long_file_name_is_written_or_refused_with_the_reason(workspace: Path) -> None:
    # The temporary file was named after the file plus 25 characters: a name of 231 to 255 bytes,
    # which the system takes, failed with a raw OSError (ENAMETOOLONG) from inside.
    write = _tools(workspace, writable=True, approval=None)["write_file"]
    assert write(path="a" * 250, content="x")["bytes"] == 1
    assert (workspace / ("a" * 250)).read_text() == "x"
    with pytest.raises(ToolRefused, match="too long"):
        write(path="b" * 300, content="x")
    assert not [p for p in workspace.iterdir() if p.name.startswith(".wflo-tmp")]
