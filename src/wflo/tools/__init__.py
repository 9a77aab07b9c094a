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


def catalog(*, packages: bool = False) -> list[dict[str, Any]]:
    """The built-in tools: name, description, risk, default approval policy, argument schema
    and the factory that builds each (what ``wflo tools list`` prints).

    ``packages=True``: the installed packages' tools too (their manifests), every entry with its
    ``source`` (``"built-in"`` or the distribution and version); a package's tool whose name
    another source declares also has ``clash``, a line saying why ``load`` refuses it (grants
    name tools). The built-in of a name a package also declares is unharmed and has none."""
    entries = [t.manifest() for t in _builtin_tools()]
    for entry in entries:
        entry["factory"] = _FACTORIES[entry["name"]]
    if not packages:
        return entries
    for entry in entries:
        entry["source"] = "built-in"
    for pkg in installed():
        entries.append({**pkg.to_dict(), "source": f"{pkg.distribution} {pkg.dist_version}".strip()})
    sources: dict[str, list[str]] = {}
    for entry in entries:
        sources.setdefault(entry["name"], []).append(entry["source"])
    for entry in entries:
        if len(sources[entry["name"]]) > 1 and entry["source"] != "built-in":
            entry["clash"] = _clash_line(entry["name"], sources[entry["name"]])
    return entries


def _clash_line(name: str, sources: list[str]) -> str:
    if "built-in" in sources:
        others = ", ".join(s for s in sources if s != "built-in")
        return f"{name!r} is a built-in tool's name and {others} declares it too: wflo.tools.load refuses the package's"
    return (
        f"{name!r} is declared by {len(sources)} packages ({', '.join(sources)}): wflo.tools.load refuses it, "
        f"since grants name tools; uninstall one (wflo tools remove DISTRIBUTION)"
    )
