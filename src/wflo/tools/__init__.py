"""Tools: the ``@wflo.tool`` decorator and the catalog of secure tools.

The secure tools are factories: the developer configures them (a database, an allowlist, a
root directory), the agent calls the tool they return with simple arguments. Each one checks
its input before acting and raises ``ToolRefused`` when it will not act.
"""

from __future__ import annotations

import os
from typing import Any

from ._catalog import csv_stats, git, git_tools, memory
from ._errors import ToolRefused, UntrustedTool
from ._files import files
from ._grants import Grant, grant, grants, revoke
from ._http import http_get
from ._manifest import Capabilities, Effects, Manifest, ToolLimits
from ._packages import PackagedTool, ToolPackage, installed, load
from ._python import python
from ._signing import sign_package, trust, trusted_keys, untrust
from ._sql import sql_query
from ._tool import Tool, tool

__all__ = [
    "Capabilities",
    "Effects",
    "Grant",
    "Manifest",
    "PackagedTool",
    "Tool",
    "ToolLimits",
    "ToolPackage",
    "ToolRefused",
    "UntrustedTool",
    "catalog",
    "csv_stats",
    "files",
    "git",
    "grant",
    "grants",
    "http_get",
    "installed",
    "load",
    "memory",
    "python",
    "revoke",
    "sign_package",
    "sql_query",
    "tool",
    "trust",
    "trusted_keys",
    "untrust",
]

_FACTORIES = {
    "sql_query": "wflo.tools.sql_query(database_url, max_rows=1000, timeout='5s')",
    "http_get": "wflo.tools.http_get(allow=[...], max_bytes='1MiB', timeout='10s', max_redirects=3)",
    "read_file": "wflo.tools.files(root)",
    "list_dir": "wflo.tools.files(root)",
    "write_file": "wflo.tools.files(root, writable=True)",
    "python": "wflo.tools.python(wflo.Sandbox(...))",
    "git_log": "wflo.tools.git(repo)",
    "git_show": "wflo.tools.git(repo)",
    "git_diff": "wflo.tools.git(repo)",
    "csv_stats": "wflo.tools.csv_stats(root)",
    "memory_get": "wflo.tools.memory(path, agent=NAME)",
    "memory_set": "wflo.tools.memory(path, agent=NAME)",
    "memory_list": "wflo.tools.memory(path, agent=NAME)",
    "memory_delete": "wflo.tools.memory(path, agent=NAME)",
}


def _builtin_tools() -> list[Tool[..., Any]]:
    """One instance of each built-in tool, configured with placeholders (nothing is opened)."""
    return [
        sql_query("sqlite:///example.db"),
        http_get(allow=["example.com"]),
        *files("/", writable=True),
        python(),
        *git_tools("/nonexistent", max_bytes="256KiB", timeout="10s", prefix="git_"),
        csv_stats("/"),
        *memory(os.devnull, agent="example"),
    ]


def catalog() -> list[dict[str, Any]]:
    """The built-in tools: name, description, risk, default approval policy, argument schema
    and the factory that builds each (what ``wflo tools list`` prints)."""
    entries = [t.manifest() for t in _builtin_tools()]
    for entry in entries:
        entry["factory"] = _FACTORIES[entry["name"]]
    return entries
