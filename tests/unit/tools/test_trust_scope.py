"""A trusted publisher key vouches for the tool names it was trusted for, not for any name.

Grants name tools, not publishers: publisher B, trusted for its own tools, shipped a package
declaring A's granted tool ``shout``; wherever A's package was not installed (uninstalled, a
fresh machine), ``require_signed_tools`` loaded B's ``shout`` under A's grants. Real signed
packages in a real site directory, both stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from toolpkg import make_keys, make_package

import wflo
from wflo import _config
from wflo._errors import UserError
from wflo.cli import cli
from wflo.store import MIGRATIONS
from wflo.tools import UntrustedTool, grant, installed, load, sign_package, trust, trusted_keys

CODE = "def shout(text):\n    return text.upper() + '!'\n"
EVIL = "def shout(text):\n    return 'PWNED'\n\ndef bark(text):\n    return 'WOOF ' + text\n"
SHOUT = {
    "name": "shout", "version": "1", "description": "Shout a text.",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "effects": {"read_only": True}, "capabilities": {"limits": {"wall": "10s"}},
}  # fmt: skip
BARK = {**SHOUT, "name": "bark", "description": "Bark a text."}


def _system(kind: str) -> list[dict[str, object]]:
    return [e.data for e in _config.get_store().events("system") if e.type == kind]


def test_a_key_trusted_for_its_own_tools_does_not_vouch_for_another_publishers_tool_name(
    site: Path, configured: str, tmp_path: Path
) -> None:
    # A's "shout" is granted without approval; A's package is not installed here. B, trusted
    # for its own "bark", ships a package declaring "shout" too: it loaded, and ran under A's grant.
    (b,) = make_keys(tmp_path, "b")
    _config.configure(database=configured, require_signed_tools=True, require_tool_grants=True)
    sign_package(make_package(site, "evil_tools", EVIL, [BARK, SHOUT]), b)
    kid = trust(str(tmp_path / "b.pub"), name="B", tools=("bark",))
    grant("shout", "workflow:publish", approval="none")
    with pytest.raises(UntrustedTool) as refused:
        load("shout")
    message = str(refused.value)
    assert len(message.splitlines()) == 1, message
    assert f"signed by key {kid}, which is trusted only for bark, not for 'shout'" in message
    assert f"wflo tools trust {kid} --tools bark,shout" in message
    # B's own tool, in the same signed package, still loads and runs
    assert load("bark")(text="hi") == "WOOF hi"
    status = {p.manifest.name: p.to_dict()["signature"] for p in installed()}
    assert status == {
        "bark": f"signed by {kid} (trusted for bark)",
        "shout": f"signed by {kid} (trusted only for bark: wflo tools trust {kid} --tools bark,shout)",
    }


def test_a_key_trusted_for_a_tool_loads_it_and_its_grant_applies(site: Path, configured: str, tmp_path: Path) -> None:
    a, b = make_keys(tmp_path, "a", "b")
    _config.configure(database=configured, require_signed_tools=True, require_tool_grants=True)
    sign_package(make_package(site, "shouty", CODE, [SHOUT]), a)
    sign_package(make_package(site, "barky", EVIL.replace("def shout", "def _shout"), [BARK]), b)
    trust(str(tmp_path / "a.pub"), name="A", tools="shout")
    trust(str(tmp_path / "b.pub"), name="B", tools=["bark", "yelp"])
    shout, bark = load("shout"), load("bark")
    grant("shout", "workflow:scoped")

    @wflo.workflow(name="scoped")
    def scoped() -> str:
        return shout(text="hi")

    assert scoped.run() == "HI!" and bark(text="x") == "WOOF x"
    by_tool = {p.manifest.name: p.to_dict()["signature"] for p in installed()}
    assert by_tool["shout"].endswith("(trusted for shout)") and by_tool["bark"].endswith("(trusted for bark, yelp)")


def test_a_key_trusted_before_scopes_still_vouches_for_any_name(site: Path, configured: str, tmp_path: Path) -> None:
    """The upgrade: a ``tool_trust`` row from before m029 (no ``tools`` column) is a key
    trusted for any tool name, as it was; m029 re-run over a store that has its column is a no-op."""
    (b,) = make_keys(tmp_path, "b")
    _config.configure(database=configured, require_signed_tools=True)
    store = _config.get_store()
    index = [m.name for m in MIGRATIONS].index("m029_tool_trust_scope")
    kid = trust(str(tmp_path / "b.pub"), name="B")
    # set the store back to before m029, as an old wflo left it: the row, without the column
    store.write(lambda cur: store.execute(cur, "ALTER TABLE tool_trust DROP COLUMN tools"))
    store.write(lambda cur: store.execute(cur, f"UPDATE wflo_meta SET value = '{index}' WHERE key = 'schema_version'"))
    assert store.migrate() == ["m029_tool_trust_scope"]
    assert trusted_keys()[kid]["tools"] is None
    sign_package(make_package(site, "evil_tools", EVIL, [BARK, SHOUT]), b)
    assert load("shout")(text="hi") == "PWNED"  # the legacy meaning, documented: any name
    store.write(lambda cur: store.execute(cur, f"UPDATE wflo_meta SET value = '{index}' WHERE key = 'schema_version'"))
    assert store.migrate() == ["m029_tool_trust_scope"]  # again, over the column: no error
    trust(kid, tools="bark")  # re-scoped by its id: the name stays
    assert trusted_keys()[kid] | {"trusted_at": "-"} == {
        "public_key": trusted_keys()[kid]["public_key"], "name": "B", "trusted_by": _config.settings().principal,
        "trusted_at": "-", "tools": ["bark"],
    }  # fmt: skip
    with pytest.raises(UntrustedTool, match=r"trusted only for bark, not for 'shout'"):
        load("shout")


def test_the_system_chain_records_the_scope(configured: str, tmp_path: Path) -> None:
    make_keys(tmp_path, "a")
    kid = trust(str(tmp_path / "a.pub"), tools=("yell", "shout", "shout"))
    trust(str(tmp_path / "a.pub"))
    first, second = _system("tool.key_trusted")
    assert first["key_id"] == kid and first["tools"] == ["shout", "yell"]
    assert second["key_id"] == kid and second["tools"] is None
    assert trusted_keys()[kid]["tools"] is None  # trusting again replaces the scope


@pytest.mark.parametrize(
    "tools",
    ["", " , ", "no spaces", "shout,", "9lives", "a" * 65, ("shout", 3), ()],
)
def test_a_scope_that_names_no_tool_or_not_a_tool_name_is_refused(
    configured: str, tmp_path: Path, tools: object
) -> None:
    make_keys(tmp_path, "a")
    with pytest.raises(UserError) as refused:
        trust(str(tmp_path / "a.pub"), tools=tools)  # type: ignore[arg-type]
    assert len(str(refused.value).splitlines()) == 1 and "--tools" in str(refused.value)
    assert trusted_keys() == {} and _system("tool.key_trusted") == []


def test_cli_trust_with_and_without_tools(configured: str, tmp_path: Path) -> None:
    make_keys(tmp_path, "a", "b")
    runner = CliRunner(env={"WFLO_DATABASE_URL": configured})
    scoped = runner.invoke(cli, ["tools", "trust", str(tmp_path / "a.pub"), "--name", "A", "--tools", "yell,shout"])
    assert scoped.exit_code == 0, scoped.output
    assert scoped.stdout.strip().endswith("(A) for shout, yell") and scoped.stderr == ""
    anyone = runner.invoke(cli, ["tools", "trust", str(tmp_path / "b.pub"), "--name", "B"])
    assert anyone.exit_code == 0, anyone.output
    assert anyone.stdout.strip().endswith("(B) for any tool")
    (warning,) = anyone.stderr.strip().splitlines()
    assert "may vouch for any tool name" in warning and "--tools" in warning
    listed = runner.invoke(cli, ["tools", "trusted"], terminal_width=300)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.strip().splitlines()
    assert any("A  tools: shout, yell" in line for line in lines), lines
    assert any("B  any tool" in line for line in lines), lines
    as_json = json.loads(runner.invoke(cli, ["tools", "trusted", "--json"]).stdout)
    assert sorted((v["name"], v["tools"]) for v in as_json.values()) == [("A", ["shout", "yell"]), ("B", None)]
    for args, words in [
        (["--tools", ""], "--tools names no tool"),
        (["--tools", "no spaces"], "'no spaces' is not a tool name"),
    ]:
        bad = runner.invoke(cli, ["tools", "trust", str(tmp_path / "a.pub"), *args])
        assert bad.exit_code != 0 and words in bad.stderr, bad.output
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.output, bad.output
    unknown = runner.invoke(cli, ["tools", "trust", "0123456789abcdef", "--tools", "shout"])
    assert unknown.exit_code != 0 and "is not a trusted key id" in unknown.stderr, unknown.output
