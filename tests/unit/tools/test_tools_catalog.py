"""The catalog: every built-in tool's manifest is a valid OpenAI tool; ``wflo tools list`` prints it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from click.testing import CliRunner

import wflo.tools
from wflo.cli import cli
from wflo.tools import _builtin_tools, catalog

NAMES = [
    "sql_query",
    "http_get",
    "read_file",
    "list_dir",
    "write_file",
    "python",
    "git_log",
    "git_show",
    "git_diff",
    "csv_stats",
    "memory_get",
    "memory_set",
    "memory_list",
    "memory_delete",
]


def _openai_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {k: entry[k] for k in ("name", "description", "parameters")}}


def _assert_valid_openai_tool(schema: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator
    from openai.types.chat import ChatCompletionToolParam
    from pydantic import TypeAdapter

    TypeAdapter(ChatCompletionToolParam).validate_python(schema)
    fn = schema["function"]
    assert schema["type"] == "function"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", fn["name"]), fn["name"]
    assert isinstance(fn["description"], str) and 0 < len(fn["description"]) <= 1024
    params = fn["parameters"]
    Draft202012Validator.check_schema(params)
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert set(params["required"]) <= set(params["properties"])
    assert all(p["type"] in ("string", "integer", "number", "boolean", "array", "object")
               for p in params["properties"].values())  # fmt: skip


def test_catalog_lists_every_builtin_tool() -> None:
    entries = catalog()
    assert [e["name"] for e in entries] == NAMES
    risks = {e["name"]: e["risk"] for e in entries}
    assert risks == {"sql_query": "medium", "http_get": "medium", "read_file": "low", "list_dir": "low",
                     "write_file": "high", "python": "high"} | {n: "low" for n in NAMES[6:]}  # fmt: skip
    approvals = {e["name"] for e in entries if e["approval"]}
    assert approvals == {"write_file"}
    python_entry = next(e for e in entries if e["name"] == "python")
    assert python_entry["risk"] == "high" and "sandbox" in python_entry["description"]
    assert "wflo.Sandbox" in python_entry["factory"]
    json.dumps(entries)  # JSON-ready


@pytest.mark.parametrize("entry", catalog(), ids=lambda e: e["name"])
def test_every_catalog_entry_is_a_valid_openai_tool(entry: dict[str, Any]) -> None:
    _assert_valid_openai_tool(_openai_entry(entry))


@pytest.mark.parametrize("tool", _builtin_tools(), ids=lambda t: t.name)
def test_every_builtin_tool_converts_to_an_openai_schema(tool: wflo.tools.Tool[..., Any]) -> None:
    schema = tool.openai_schema()
    _assert_valid_openai_tool(schema)
    assert schema == _openai_entry(tool.manifest())


def test_tool_refused_is_a_user_error() -> None:
    assert issubclass(wflo.tools.ToolRefused, wflo.UserError)


def test_tools_list_table() -> None:
    result = CliRunner().invoke(cli, ["tools", "list"])
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert name in result.output
    assert "[path]" in result.output  # optional arguments shown in brackets, not eaten as markup


def test_tools_list_json() -> None:
    result = CliRunner().invoke(cli, ["tools", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [e["name"] for e in listed] == NAMES
    assert listed[0]["parameters"]["required"] == ["query"]
