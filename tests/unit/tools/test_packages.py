"""Tool packages: manifests checked, discovery through entry points, signatures, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from toolpkg import make_package

from wflo import _config
from wflo._errors import UserError
from wflo.cli import cli
from wflo.tools import Manifest, UntrustedTool, catalog, installed, load, sign_package, trust, trusted_keys, untrust

CODE = "def shout(text):\n    return text.upper() + '!'\n"
SHOUT = {
    "name": "shout", "version": "1.2.0", "description": "Shout a text.",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "output_schema": {"type": "string"},
    "effects": {"read_only": True, "idempotent": True},
    "capabilities": {"limits": {"wall": "5s"}, "cost_usd": "0.001"},
}  # fmt: skip


def test_an_installed_package_is_discovered_without_importing_it(site: Path) -> None:
    make_package(site, "shouty", CODE + "raise SystemExit('imported on the host!')\n", [SHOUT])
    (pkg,) = installed()
    assert pkg.manifest.name == "shout" and pkg.distribution == "shouty" and pkg.dist_version == "1.0"
    assert pkg.manifest.entry == "shouty.impl:shout" and pkg.manifest.publisher == "Test Publisher"
    assert str(pkg.manifest.capabilities.cost_usd) == "0.001"


def test_a_packaged_tool_runs_and_describes_itself(site: Path) -> None:
    make_package(site, "shouty", CODE, [SHOUT])
    tool = load("shout")
    assert tool(text="hi") == "HI!"
    assert tool.openai_schema()["function"]["parameters"] == SHOUT["input_schema"]
    m = tool.manifest()
    assert m["effects"]["read_only"] and m["risk"] == "low" and m["enforcement"] == "sandbox"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": "no spaces"}, "name must be"),
        ({"effects": {"read_only": True, "destructive": True}}, "both read_only and destructive"),
        ({"effects": {"sneaky": True}}, "unknown effect"),
        ({"capabilities": {"network": ["example.com"]}}, "host:port"),
        ({"capabilities": {"filesystem": {"read": ["relative/path"]}}}, "absolute"),
        ({"capabilities": {"filesystem": {"read": ["/"]}}}, "cannot be granted"),
        ({"capabilities": {"filesystem": {"write": ["/usr/lib"]}}}, "cannot be granted"),
        ({"capabilities": {"secrets": ["lower"]}}, "UPPER_CASE"),
        ({"capabilities": {"limits": {"cpu_seconds": 0}}}, "cpu_seconds"),
        ({"capabilities": {"limits": {"memory": "lots"}}}, "memory"),
        ({"capabilities": {"cost_usd": 0.1}}, "decimal string"),
        ({"capabilities": {"root": True}}, "unknown capabilit"),
        ({"input_schema": {"type": "array"}}, "type 'object'"),
        ({"input_schema": {"type": "object", "properties": 3}}, "not a valid JSON Schema"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_manifest_mistakes_are_clear_errors(change: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match):
        Manifest.from_dict({**SHOUT, **change})


def test_manifest_round_trips() -> None:
    m = Manifest.from_dict(SHOUT)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_builtins_declare_their_manifest() -> None:
    by_name = {e["name"]: e for e in catalog()}
    assert by_name["sql_query"]["effects"]["read_only"] is True
    assert by_name["http_get"]["effects"]["open_world"] is True
    assert by_name["http_get"]["capabilities"]["network"] == ["example.com"]
    assert by_name["write_file"]["effects"]["destructive"] is True
    assert {e["enforcement"] for e in by_name.values()} == {"in-process"}


def test_signed_package_trusted_then_altered_is_refused(site: Path, configured: str, tmp_path: Path) -> None:
    from wflo.audit import generate_key

    key = tmp_path / "publisher.pem"
    public_pem = generate_key(key)
    pkg_dir = make_package(site, "shouty", CODE, [SHOUT])
    _config.configure(database=configured, require_signed_tools=True)
    with pytest.raises(UntrustedTool, match="not signed"):
        load("shout")
    sign_package(pkg_dir, key)
    with pytest.raises(UntrustedTool, match="not trusted"):
        load("shout")
    (tmp_path / "pub.pem").write_text(public_pem)
    kid = trust(str(tmp_path / "pub.pem"), name="Test Publisher")
    assert list(trusted_keys()) == [kid]
    assert load("shout")(text="ok") == "OK!"
    # altered code, an added file, an edited manifest, a forged signature file: each refused
    impl = pkg_dir / "impl.py"
    impl.write_text(CODE.replace("'!'", "'?'"))
    with pytest.raises(UntrustedTool, match=r"impl\.py was altered after signing"):
        load("shout")
    impl.write_text(CODE)
    assert load("shout")(text="ok") == "OK!"
    (pkg_dir / "extra.py").write_text("x = 1\n")
    with pytest.raises(UntrustedTool, match=r"extra\.py was added"):
        load("shout")
    (pkg_dir / "extra.py").unlink()
    sig = pkg_dir / "wflo_tools.sig"
    doc = json.loads(sig.read_text())
    doc["files"]["impl.py"] = "0" * 64
    sig.write_text(json.dumps(doc))
    with pytest.raises(UntrustedTool, match="does not verify"):
        load("shout")
    sign_package(pkg_dir, key)
    assert untrust(kid) is True
    with pytest.raises(UntrustedTool, match="not trusted"):
        load("shout")
    types = [e.type for e in _config.get_store().events("system")]
    assert types[-2:] == ["tool.key_trusted", "tool.key_untrusted"]


def test_cli_list_show_and_errors(site: Path, configured: str) -> None:
    make_package(site, "shouty", CODE, [SHOUT])
    runner = CliRunner(env={"WFLO_DATABASE_URL": configured})
    out = runner.invoke(cli, ["tools", "list"])
    assert out.exit_code == 0, out.output
    assert "shout" in out.output and "sql_query" in out.output
    shown = runner.invoke(cli, ["tools", "show", "shout", "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert (
        doc["name"] == "shout" and doc["distribution"] == "shouty" and doc["signature"].startswith("the package is not")
    )
    assert runner.invoke(cli, ["tools", "show", "sql_query"]).exit_code == 0
    missing = runner.invoke(cli, ["tools", "show", "nope"])
    assert missing.exit_code != 0 and "no tool named 'nope'" in missing.output and "Traceback" not in missing.output


def test_cli_grant_list_revoke(configured: str) -> None:
    # The store under test (else the CLI opens ./.wflo/wflo.db: the PostgreSQL case tested SQLite).
    runner = CliRunner(env={"WFLO_DATABASE_URL": configured})
    done = runner.invoke(cli, ["tools", "grant", "sql_query", "--to", "workflow:report", "--max-calls", "5",
                               "--budget", "2.50", "--approval", "role:ops"])  # fmt: skip
    assert done.exit_code == 0, done.output
    listed = runner.invoke(cli, ["tools", "grants", "--json"])
    (g,) = json.loads(listed.output)
    assert g["principal"] == "workflow:report" and g["max_calls"] == 5 and g["budget_usd"] == "2.5"
    bad = runner.invoke(cli, ["tools", "grant", "sql_query", "--to", "everyone"])
    assert bad.exit_code != 0 and "workflow:NAME" in bad.output and "Traceback" not in bad.output
    assert runner.invoke(cli, ["tools", "revoke", "sql_query", "--to", "workflow:report"]).exit_code == 0
    assert json.loads(runner.invoke(cli, ["tools", "grants", "--json"]).output) == []
    from wflo.store import open_store

    with open_store(configured) as store:  # not _config's: the CLI in this process may have replaced it
        assert [e.type for e in store.events("system")][-2:] == ["tool.granted", "tool.revoked"]


def test_cli_install_wraps_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pip install of a real wheel (built here, offline), into a --target directory."""
    import zipfile

    wheel = tmp_path / "shouty-1.0-py3-none-any.whl"
    files = {
        "shouty/__init__.py": "",
        "shouty/impl.py": CODE,
        "shouty/wflo_tools.json": json.dumps({"publisher": "T", "tools": [SHOUT]}),
        "shouty-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: shouty\nVersion: 1.0\n",
        "shouty-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "shouty-1.0.dist-info/entry_points.txt": "[wflo.tools]\nshout = shouty.impl:shout\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "shouty-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in {**files, "shouty-1.0.dist-info/RECORD": record}.items():
            zf.writestr(name, text)
    target = tmp_path / "target"
    monkeypatch.syspath_prepend(str(target))
    target.mkdir()
    done = CliRunner().invoke(cli, ["tools", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    assert done.exit_code == 0, done.output
    assert "new tools: shout" in done.output
    assert [p.manifest.name for p in installed()] == ["shout"]
    failed = CliRunner().invoke(cli, ["tools", "install", "--no-index", str(tmp_path / "nothing.whl")])
    assert failed.exit_code != 0 and "pip could not install" in failed.output
