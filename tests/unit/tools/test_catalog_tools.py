"""The second catalog: read-only git, CSV statistics, a key-value memory per agent."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import wflo
from wflo._errors import UserError
from wflo.tools import ToolRefused, csv_stats, git, memory


def _git(repo: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "GIT_AUTHOR_NAME": "Ann", "GIT_AUTHOR_EMAIL": "ann@x", "GIT_COMMITTER_NAME": "Ann",
           "GIT_COMMITTER_EMAIL": "ann@x", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)}  # fmt: skip
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    (r / "a.txt").write_text("one\n")
    _git(r, "add", "a.txt")
    _git(r, "commit", "-q", "-m", "first")
    (r / "a.txt").write_text("one\ntwo\n")
    _git(r, "commit", "-q", "-am", "second")
    return r


def test_git_log_show_diff(repo: Path) -> None:
    log, show, diff = git(repo)
    lines = log()["output"].strip().splitlines()
    assert [ln.split("\t")[3] for ln in lines] == ["second", "first"]
    assert log(path="a.txt", max_count=1)["output"].count("\n") == 1
    assert "+two" in show()["output"] and show(rev="HEAD~1", path="a.txt")["output"] == "one\n"
    assert "+two" in diff(base="HEAD~1")["output"]
    assert git(repo, max_bytes=10)[0]()["truncated"] is True


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda t: t[1](rev="--output=/tmp/pwned"), "not a revision"),
        (lambda t: t[2](base="HEAD", head="-p"), "not a revision"),
        (lambda t: t[1](rev="HEAD", path="../../etc/passwd"), "relative to the repository"),
        (lambda t: t[0](path="/etc"), "relative to the repository"),
        (lambda t: t[0](max_count=10**6), "max_count"),
        (lambda t: t[1](rev="nope"), "git:"),
    ],
)
def test_git_refuses_options_and_escapes(repo: Path, call: object, match: str, tmp_path: Path) -> None:
    tools = git(repo)
    with pytest.raises(ToolRefused, match=match):
        call(tools)  # type: ignore[operator]
    assert not Path("/tmp/pwned").exists()


def test_git_ignores_a_hostile_repository_config(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _git(repo, "config", "core.fsmonitor", f"touch {marker}; false")
    _git(repo, "config", "diff.external", f"sh -c 'touch {marker}'")
    log, show, diff = git(repo)
    log()
    diff(base="HEAD~1")
    show()
    assert not marker.exists()


def test_git_needs_a_repository(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="git repository"):
        git(tmp_path)


def test_csv_stats(tmp_path: Path) -> None:
    (tmp_path / "sales.csv").write_text("region,amount,note\nnorth,10,a\nsouth,30,\nnorth,20,b\n")
    tool = csv_stats(tmp_path)
    out = tool(path="sales.csv", sample_rows=1)
    assert out["rows"] == 3 and out["sample"] == [["north", "10", "a"]]
    region, amount, note = out["columns"]
    assert region["type"] == "text" and region["top"][0] == {"value": "north", "count": 2}
    assert amount == {"name": "amount", "missing": 0, "type": "number", "min": 10.0, "max": 30.0, "mean": 20.0,
                      "median": 20.0}  # fmt: skip
    assert note["missing"] == 1
    (tmp_path / "semi.csv").write_text("a;b\n1;2\n3;4\n")
    assert [c["name"] for c in tool(path="semi.csv")["columns"]] == ["a", "b"]
    os.symlink("/etc/passwd", tmp_path / "link.csv")
    for bad in ("../x.csv", "/etc/passwd", "link.csv", "missing.csv"):
        with pytest.raises(ToolRefused):
            tool(path=bad)


def test_memory_per_agent(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    get, put, keys, forget = memory(db, agent="scout")
    other_get = memory(db, agent="writer")[0]
    assert get(key="plan")["found"] is False
    assert put(key="plan", value="read the docs")["stored"] is True
    assert get(key="plan")["value"] == "read the docs"
    assert other_get(key="plan")["found"] is False  # each agent sees only its own keys
    put(key="plan/2", value="x")
    assert keys(starts_with="plan")["keys"] == ["plan", "plan/2"]
    assert forget(key="plan")["deleted"] is True and get(key="plan")["found"] is False
    with pytest.raises(ToolRefused, match="at most"):
        memory(db, agent="scout", max_value_bytes=4)[1](key="k", value="too long")
    with pytest.raises(ToolRefused, match="keys"):
        small = memory(db, agent="tiny", max_keys=1)
        small[1](key="a", value="1")
        small[1](key="b", value="2")
    with pytest.raises(ToolRefused, match="starts_with is text"):  # was a TypeError from inside
        keys(starts_with=123)


@wflo.workflow(name="remembering")
def remembering(db: str) -> str:
    get, put, _, _ = memory(db, agent="scout")
    put(key="k", value="v1")
    return str(get(key="k")["value"])


def test_memory_calls_are_journaled(configured: str, tmp_path: Path) -> None:
    handle = remembering.options(id="mem-1").run(str(tmp_path / "m.db"))
    assert handle == "v1"
    from wflo.engine import RunHandle

    names = [e.data["name"] for e in RunHandle("mem-1").events() if e.type == "call.completed"]
    assert names == ["memory_set", "memory_get"]
