"""More built-in tools: read-only git, CSV statistics, and a key-value memory per agent.

Like the first four, each is a factory the developer configures (a repository, a directory, a
memory file) whose tools check their input before acting, raise ``ToolRefused`` with a reason
for the model, and declare their effects and capabilities.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sqlite3
import statistics
import subprocess
import threading
from typing import Any

from .._errors import UserError
from ..approvals import parse_duration
from ..sandbox import parse_size
from ._errors import ToolRefused
from ._files import _Root
from ._manifest import Capabilities, Effects
from ._tool import Tool

_READ = Effects(read_only=True, idempotent=True)
_REV = re.compile(r"^[A-Za-z0-9_./~^@{}-]{1,200}$")
_GIT_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "HOME")


# --------------------------------------------------------------------------- git
def git(
    repo: str | os.PathLike[str], *, max_bytes: int | str = "256KiB", timeout: float | str = "10s", prefix: str = "git_"
) -> list[Tool[..., dict[str, Any]]]:
    """Read-only tools on one git repository: ``git_log(path?, max_count?)``,
    ``git_show(rev, path?)`` and ``git_diff(base, head?, path?)``.

    Revisions must look like revisions (no option can be smuggled in as ``--output=…``), paths
    are relative to the repository and cannot leave it, and git runs with no pager, no external
    diff or text conversion, no fsmonitor or hooks, the system and global configuration ignored,
    under a time limit; output is cut at ``max_bytes``."""
    root = os.path.realpath(os.fspath(repo))
    if not os.path.isdir(os.path.join(root, ".git")) and not os.path.isfile(os.path.join(root, "HEAD")):
        raise UserError(f"git(repo=...) must be a git repository, got {os.fspath(repo)!r}")
    return git_tools(root, max_bytes=max_bytes, timeout=timeout, prefix=prefix)


def git_tools(root: str, *, max_bytes: int | str, timeout: float | str, prefix: str) -> list[Tool[..., dict[str, Any]]]:
    """``git``'s tools for ``root`` (not checked: the catalog describes them without a repository)."""
    cap = parse_size(max_bytes, "max_bytes")
    seconds = parse_duration(timeout, "timeout")

    def run(tool: str, args: list[str]) -> dict[str, Any]:
        env = {k: os.environ[k] for k in _GIT_ENV_KEEP if k in os.environ}
        env |= {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
                "GIT_OPTIONAL_LOCKS": "0"}  # fmt: skip
        # The repository's own config is the attacker's: nothing in it may name a program that
        # these commands run (log.showSignature makes log and show run gpg.program on any
        # signed commit, and the repository can hold a fake signature).
        argv = ["git", "-C", root, "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
                "-c", "diff.external=", "-c", "log.showSignature=false", "-c", "gpg.program=false",
                "-c", "gpg.ssh.program=false", "-c", "gpg.x509.program=false", "--no-pager", *args]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, timeout=seconds, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolRefused(tool=prefix + tool, reason=f"git took longer than {seconds:g}s") from None
        if done.returncode != 0:
            msg = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"]
            raise ToolRefused(tool=prefix + tool, reason=f"git: {msg[0][:300]}")
        out = done.stdout
        return {"output": out[:cap].decode("utf-8", "replace"), "truncated": len(out) > cap}

    def check_rev(tool: str, value: str) -> str:
        if not isinstance(value, str) or not _REV.match(value) or value.startswith("-") or ".." in value:
            raise ToolRefused(tool=prefix + tool, reason=f"{value!r} is not a revision (a branch, tag or commit)")
        return value

    def path_args(tool: str, path: str | None) -> list[str]:
        if path in (None, "", "."):
            return []
        assert path is not None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if path.startswith("/") or ".." in parts or "\x00" in path or path.startswith(":"):
            raise ToolRefused(tool=prefix + tool, reason=f"{path!r}: give a path relative to the repository")
        return ["--", "/".join(parts)]

    def git_log(path: str = "", max_count: int = 20) -> dict[str, Any]:
        if isinstance(max_count, bool) or not isinstance(max_count, int) or not 1 <= max_count <= 500:
            raise ToolRefused(tool=prefix + "log", reason="max_count must be an integer from 1 to 500")
        fmt = "--format=%H%x09%an%x09%aI%x09%s"
        return run("log", ["log", "--no-color", f"--max-count={max_count}", fmt, *path_args("log", path)])

    def git_show(rev: str = "HEAD", path: str = "") -> dict[str, Any]:
        r = check_rev("show", rev)
        if path:
            paths = path_args("show", path)
            return run("show", ["show", "--no-color", "--no-ext-diff", "--no-textconv", f"{r}:{paths[1]}"])
        return run("show", ["show", "--no-color", "--no-ext-diff", "--no-textconv", "--stat", "--patch", r])

    def git_diff(base: str, head: str = "HEAD", path: str = "") -> dict[str, Any]:
        args = [
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            check_rev("diff", base),
            check_rev("diff", head),
        ]
        return run("diff", [*args, *path_args("diff", path)])

    caps = Capabilities(read=(root,))
    return [
        Tool(git_log, name=prefix + "log", risk="low", effects=_READ, capabilities=caps,
             description="List commits of the repository (newest first): hash, author, date, subject; "
                         "optionally only those touching a path."),
        Tool(git_show, name=prefix + "show", risk="low", effects=_READ, capabilities=caps,
             description="Show a commit (its message and patch), or a file as of a revision when a path is given."),
        Tool(git_diff, name=prefix + "diff", risk="low", effects=_READ, capabilities=caps,
             description="The diff between two revisions (base and head, default HEAD), optionally for one path."),
    ]  # fmt: skip


# --------------------------------------------------------------------------- csv
def csv_stats(
    root: str | os.PathLike[str], *, max_bytes: int | str = "8MiB", name: str = "csv_stats"
) -> Tool[..., dict[str, Any]]:
    """A tool summarising a CSV file under ``root``: columns, row count, and for each column its
    type (number or text), missing values, min/max/mean/median of numbers or the most frequent
    texts, plus the first rows. Paths are opened like ``files(root)`` does (no links, no escape)."""
    path = os.path.realpath(os.fspath(root))
    if not os.path.isdir(path):
        raise UserError(f"csv_stats(root=...) must be an existing directory, got {os.fspath(root)!r}")
    where = _Root(path, parse_size(max_bytes, "max_bytes"), "")

    def summarize(path: str, sample_rows: int = 5) -> dict[str, Any]:
        if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or not 0 <= sample_rows <= 50:
            raise ToolRefused(tool=name, reason="sample_rows must be an integer from 0 to 50")
        try:
            got = where.read(path)
        except ToolRefused as refused:
            raise ToolRefused(tool=name, reason=refused.reason) from None
        text = got["content"]
        if got["truncated"]:  # the last line may be cut: drop it
            text = text[: text.rfind("\n") + 1]
        try:
            rows = list(csv.reader(io.StringIO(text), delimiter=_delimiter(text)))
        except csv.Error as exc:  # a field over the csv module's limit (128 KiB), say
            raise ToolRefused(tool=name, reason=f"{path!r} is not a CSV file this tool can read: {exc}") from None
        if not rows:
            raise ToolRefused(tool=name, reason=f"{path!r} is empty")
        header, body = rows[0], rows[1:]
        columns = []
        for i, col in enumerate(header):
            values = [r[i].strip() for r in body if i < len(r)]
            present = [v for v in values if v != ""]
            numbers = []
            for v in present:
                try:
                    number = float(v)
                except ValueError:
                    break
                if not math.isfinite(number):  # "nan", "inf": no JSON for them, so not numbers here
                    break
                numbers.append(number)
            info: dict[str, Any] = {"name": col, "missing": len(body) - len(present)}
            if present and len(numbers) == len(present):
                info |= {"type": "number", "min": min(numbers), "max": max(numbers),
                         "mean": round(statistics.fmean(numbers), 6), "median": statistics.median(numbers)}  # fmt: skip
            else:
                counts: dict[str, int] = {}
                for v in present:
                    counts[v] = counts.get(v, 0) + 1
                top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
                info |= {"type": "text", "distinct": len(counts), "top": [{"value": v, "count": n} for v, n in top]}
            columns.append(info)
        return {"path": got["path"], "rows": len(body), "columns": columns, "sample": body[:sample_rows],
                "truncated": got["truncated"]}  # fmt: skip

    return Tool(summarize, name=name, risk="low", effects=_READ, capabilities=Capabilities(read=(path,)),
                description="Summarise a CSV file (path relative to the data directory): row count and, per column, "
                            "type, missing values and statistics, plus the first rows.")  # fmt: skip


def _delimiter(text: str) -> str:
    """The delimiter of ``text`` among ``,`` ``;`` tab ``|``: the one that splits the first
    lines into the same number of fields (most fields wins), ``,`` when none does. Linear in
    the sample: ``csv.Sniffer``'s regular expressions take quadratic time on a few kilobytes
    of quotes and newlines, holding the interpreter for seconds per call."""
    sample = "\n".join(text[:65536].splitlines()[:50])
    best, score = ",", (0, 0)
    for candidate in (",", ";", "\t", "|"):
        try:
            rows = [r for r in csv.reader(io.StringIO(sample), delimiter=candidate) if r]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        here = (sum(len(r) == width for r in rows), width)
        if here > score:
            best, score = candidate, here
    return best


# --------------------------------------------------------------------------- memory
_KEY = re.compile(r"^[^\x00-\x1f]{1,200}$")


def memory(
    path: str | os.PathLike[str], *, agent: str, max_value_bytes: int | str = "64KiB", max_keys: int = 10_000,
    prefix: str = "memory_",
) -> list[Tool[..., Any]]:  # fmt: skip
    """A key-value memory for one agent, kept in a SQLite file: ``memory_get(key)``,
    ``memory_set(key, value)``, ``memory_list(prefix?)`` and ``memory_delete(key)``.

    Each agent sees only its own keys (several agents can share the file). Inside a run the
    calls are journaled like any tool call, so a resumed run reads what it read before."""
    if not isinstance(agent, str) or not agent:
        raise UserError("memory(..., agent=NAME) needs the agent's name")
    cap = parse_size(max_value_bytes, "max_value_bytes")
    file = os.fspath(path)
    lock = threading.Lock()

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(file, timeout=10)
        db.execute("CREATE TABLE IF NOT EXISTS memory (agent TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
                   "PRIMARY KEY (agent, key))")  # fmt: skip
        return db

    def key_of(tool: str, key: str) -> str:
        if not isinstance(key, str) or not _KEY.match(key):
            raise ToolRefused(tool=prefix + tool, reason="a key is 1 to 200 printable characters")
        return key

    def memory_get(key: str) -> dict[str, Any]:
        with lock, connect() as db:
            row = db.execute(
                "SELECT value FROM memory WHERE agent = ? AND key = ?", (agent, key_of("get", key))
            ).fetchone()
        return {"key": key, "found": row is not None, "value": row[0] if row else None}

    def memory_set(key: str, value: str) -> dict[str, Any]:
        key_of("set", key)
        if not isinstance(value, str) or len(value.encode()) > cap:
            raise ToolRefused(tool=prefix + "set", reason=f"the value must be text of at most {cap} bytes")
        with lock, connect() as db:
            count = db.execute("SELECT count(*) FROM memory WHERE agent = ?", (agent,)).fetchone()[0]
            exists = db.execute("SELECT 1 FROM memory WHERE agent = ? AND key = ?", (agent, key)).fetchone()
            if not exists and count >= max_keys:
                raise ToolRefused(tool=prefix + "set", reason=f"the memory holds {max_keys} keys; delete some first")
            db.execute("INSERT INTO memory (agent, key, value) VALUES (?, ?, ?) "
                       "ON CONFLICT (agent, key) DO UPDATE SET value = excluded.value", (agent, key, value))  # fmt: skip
        return {"key": key, "stored": True}

    def memory_list(starts_with: str = "") -> dict[str, Any]:
        if not isinstance(starts_with, str):  # an agent's 123 was a TypeError from inside
            raise ToolRefused(tool=prefix + "list", reason="starts_with is text (a prefix of the keys)")
        with lock, connect() as db:
            keys = [r[0] for r in db.execute("SELECT key FROM memory WHERE agent = ? ORDER BY key", (agent,))]
        keys = [k for k in keys if k.startswith(starts_with)]
        return {"keys": keys[:1000], "truncated": len(keys) > 1000}

    def memory_delete(key: str) -> dict[str, Any]:
        with lock, connect() as db:
            n = db.execute("DELETE FROM memory WHERE agent = ? AND key = ?", (agent, key_of("delete", key))).rowcount
        return {"key": key, "deleted": bool(n)}

    caps = Capabilities(read=(os.path.realpath(file),), write=(os.path.realpath(file),))
    return [
        Tool(memory_get, name=prefix + "get", risk="low", effects=_READ, capabilities=caps,
             description="Recall what you stored under a key (found: false if nothing)."),
        Tool(memory_set, name=prefix + "set", risk="low", effects=Effects(idempotent=True), capabilities=caps,
             description=f"Remember a text value under a key (replaces the old value; at most {cap} bytes)."),
        Tool(memory_list, name=prefix + "list", risk="low", effects=_READ, capabilities=caps,
             description="List your memory's keys (optionally those starting with a prefix)."),
        # Forgetting its own note is not destructive to anyone else's data: no approval by default.
        Tool(memory_delete, name=prefix + "delete", risk="low", effects=Effects(idempotent=True), capabilities=caps,
             description="Forget a key."),
    ]  # fmt: skip
