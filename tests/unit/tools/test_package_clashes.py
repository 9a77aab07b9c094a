"""Two installed packages and one tool name: grants name tools, so whichever package discovery
found first got the trusted one's grants. Each way around, against real site directories."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from toolpkg import make_keys, make_package

import wflo
from wflo import _config
from wflo._errors import UserError
from wflo.cli import cli
from wflo.tools import UntrustedTool, grant, installed, load, sign_package, trust

CODE = "def shout(text):\n    return text.upper() + '!'\n\ndef wipe(text):\n    return 'WIPED ' + text\n"
EVIL = "def shout(text):\n    return 'PWNED'\n"
SHOUT = {
    "name": "shout", "version": "1", "description": "Shout a text.",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "effects": {"read_only": True}, "capabilities": {"limits": {"wall": "10s"}},
}  # fmt: skip
WIPE = {**SHOUT, "name": "wipe", "effects": {"destructive": True}}


@pytest.fixture
def site2(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A second site directory, ahead of ``site`` on ``sys.path`` (a user site, a PYTHONPATH entry)."""
    root = Path(tempfile.mkdtemp(prefix="wflo-site2-"))
    root.chmod(0o755)
    monkeypatch.syspath_prepend(str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("evil_first", [True, False])
def test_two_distributions_declaring_one_tool_name_are_refused_whatever_the_order(
    site: Path, site2: Path, tmp_path: Path, evil_first: bool
) -> None:
    # Discovery kept the first entry point of the name: the sys.path order (or, in one
    # directory, its listing order) decided which package ran under the trusted one's grant.
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db")
    make_package(site if evil_first else site2, "shouty", CODE, [SHOUT])
    make_package(site2 if evil_first else site, "evil_tools", EVIL, [SHOUT])
    grant("shout", "workflow:clash", approval="none")
    with pytest.raises(UserError, match=r"'shout' is declared by 2 distributions: evil-tools 1\.0 .* and shouty 1\.0 "):
        load("shout")
    with pytest.raises(UserError, match=r"uninstall the one you do not want"):
        load("shout")
    # both are listed, neither hidden
    assert sorted(p.distribution for p in installed()) == ["evil-tools", "shouty"]


def test_a_clash_under_require_signed_tools_with_two_trusted_publishers(
    site: Path, site2: Path, tmp_path: Path
) -> None:
    # Any trusted key verifies any package: a second trusted publisher's package declaring
    # "shout" was loaded instead of the first one's, signature accepted.
    a, b = make_keys(tmp_path, "a", "b")
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db", require_signed_tools=True)
    sign_package(make_package(site, "shouty", CODE, [SHOUT]), a)
    sign_package(make_package(site2, "evil_tools", EVIL, [SHOUT]), b)
    trust(str(tmp_path / "a.pub"))
    trust(str(tmp_path / "b.pub"))
    with pytest.raises(UserError, match=r"'shout' is declared by 2 distributions"):
        load("shout")


def test_an_entry_point_into_another_distributions_signed_package(site: Path, site2: Path, tmp_path: Path) -> None:
    # A distribution with no code, whose entry point "shout" names shouty's wipe(): it ran
    # wipe under shout's signed manifest (read-only, its grant), shouty's signature intact.
    (a,) = make_keys(tmp_path, "a")
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db", require_signed_tools=True)
    sign_package(make_package(site, "shouty", CODE, [SHOUT, WIPE]), a)
    trust(str(tmp_path / "a.pub"))
    dist = site2 / "hijack-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hijack\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[wflo.tools]\nshout = shouty.impl:wipe\n")
    with pytest.raises(UserError, match=r"'shout' is declared by 2 distributions: hijack 1\.0 .*shouty\.impl:wipe"):
        load("shout")
    shutil.rmtree(dist)
    assert load("shout")(text="hi") == "HI!"


def test_an_entry_point_whose_name_the_manifest_does_not_declare(site: Path) -> None:
    # Holds: the name granted is the manifest's (the entry point must match it).
    make_package(site, "evil_tools", EVIL, [SHOUT])
    eps = next(site.glob("evil_tools-*.dist-info")) / "entry_points.txt"
    eps.write_text("[wflo.tools]\nyell = evil_tools.impl:shout\n")
    with pytest.raises(UserError, match=r"no manifest for the tool 'yell' its entry point declares"):
        load("yell")


def test_a_package_overwriting_another_ones_files_is_refused_when_signed(site: Path, tmp_path: Path) -> None:
    # Holds: pip lets a second distribution overwrite shouty/impl.py; the signature names it.
    (a,) = make_keys(tmp_path, "a")
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db", require_signed_tools=True)
    pkg = make_package(site, "shouty", CODE, [SHOUT])
    sign_package(pkg, a)
    trust(str(tmp_path / "a.pub"))
    (pkg / "impl.py").write_text(EVIL)
    with pytest.raises(UntrustedTool, match=r"impl\.py was altered after signing"):
        load("shout")


def test_the_single_package_case_is_unchanged(site: Path, tmp_path: Path) -> None:
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db", require_tool_grants=True)
    make_package(site, "shouty", CODE, [SHOUT, WIPE])
    assert [(p.manifest.name, p.distribution) for p in installed()] == [("shout", "shouty"), ("wipe", "shouty")]
    shout = load("shout")
    grant("shout", "workflow:single")

    @wflo.workflow(name="single")
    def single() -> str:
        return shout(text="hi")

    assert single.run() == "HI!"


def test_cli_lists_a_clash_and_show_and_remove_refuse_to_pick(site: Path, site2: Path, tmp_path: Path) -> None:
    # list showed one of the two packages (the one load() took), show described it, and
    # remove uninstalled it: the other stayed, with the name and its grants.
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db")
    make_package(site, "shouty", CODE, [SHOUT])
    make_package(site2, "evil_tools", EVIL, [SHOUT])
    runner = CliRunner()
    listed = runner.invoke(cli, ["tools", "list"], terminal_width=400)
    assert listed.exit_code == 0, listed.output
    assert "evil-tools 1.0" in listed.output and "shouty 1.0" in listed.output
    assert "'shout' is declared by 2 packages" in listed.output
    as_json = json.loads(runner.invoke(cli, ["tools", "list", "--json"]).output)
    clashing = [e for e in as_json if e["name"] == "shout"]
    assert len(clashing) == 2 and all("declared by 2 packages" in e["clash"] for e in clashing)
    assert all("clash" not in e for e in as_json if e["name"] != "shout")
    shown = runner.invoke(cli, ["tools", "show", "shout"])
    assert shown.exit_code != 0 and "declared by 2 packages" in shown.output, shown.output
    removed = runner.invoke(cli, ["tools", "remove", "shout", "--yes"])
    assert removed.exit_code != 0 and "wflo tools remove evil-tools" in removed.output, removed.output
    assert "Traceback" not in shown.output + removed.output


def test_a_second_copy_of_the_distribution_earlier_on_sys_path_is_a_clash(
    site: Path, site2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # importlib's entry_points() keeps one distribution of a name, the first on sys.path: a
    # copy of shouty in an earlier directory (a user site, a PYTHONPATH entry) replaced the
    # installed one quietly, list and load alike.
    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db")
    make_package(site, "shouty", CODE, [SHOUT])
    make_package(site2, "shouty", EVIL, [SHOUT], version="9.9")
    with pytest.raises(
        UserError, match=r"'shout' is declared by 2 installations: shouty .*wflo-site2-.*remove the copy"
    ):
        load("shout")
    # the same directory twice on sys.path is one installation
    import sys

    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    shutil.rmtree(site2 / "shouty")
    shutil.rmtree(site2 / "shouty-9.9.dist-info")
    assert load("shout")(text="hi") == "HI!"


def test_the_api_marks_a_clash_as_the_cli_does(site: Path, site2: Path, tmp_path: Path) -> None:
    # GET /api/v1/tools listed both packages' 'shout' with nothing saying load() refuses them.
    from fastapi.testclient import TestClient

    from wflo.auth import access, tokens
    from wflo.server import create_app

    _config.configure(database=f"sqlite:///{tmp_path}/wflo.db")
    make_package(site, "shouty", CODE, [SHOUT])
    make_package(site2, "evil_tools", EVIL, [SHOUT])
    acc = access()
    acc.bootstrap("user:root", who=acc.local("user:root"))
    secret = tokens().create("reader", "viewer", "*", who=acc.local("user:root"))[1]
    client = TestClient(create_app())
    listed = client.get("/api/v1/tools", headers={"Authorization": f"Bearer {secret}"})
    assert listed.status_code == 200, listed.text
    clashing = [e for e in listed.json() if e["name"] == "shout"]
    assert len(clashing) == 2 and all("declared by 2 packages" in e["clash"] for e in clashing)
    assert {e["source"] for e in clashing} == {"shouty 1.0", "evil-tools 1.0"}
    assert all("clash" not in e for e in listed.json() if e["name"] != "shout")
