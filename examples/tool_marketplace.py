"""A tool package from install to a guarded, journaled call: grant, sandbox, signature.

Uses the example package in examples/tool_package/ (``wflo tools install ./examples/tool_package``
does the same with pip; here its files are put on ``sys.path`` the way pip would, to run offline).
Needs bubblewrap (the tools run in wflo's sandbox). Runs in a few seconds:
python examples/tool_marketplace.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    import cryptography  # noqa: F401
except ImportError:
    print("examples/tool_marketplace.py needs cryptography (signed tool packages): pip install 'wflo[audit]'")
    sys.exit(0)

import wflo
from wflo.audit import generate_key
from wflo.tools import ToolRefused, UntrustedTool, grant, load, sign_package, trust

PACKAGE = Path(__file__).parent / "tool_package"


def install_offline(site: Path) -> Path:
    """What ``pip install`` leaves in site-packages: the package and its entry points."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    target = shutil.copytree(PACKAGE / "src" / "acme_text_tools", site / "acme_text_tools")
    dist = site / f"acme_text_tools-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = project["entry-points"]["wflo.tools"]
    (dist / "entry_points.txt").write_text("[wflo.tools]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    sys.path.insert(0, str(site))
    return Path(target)


@wflo.workflow(name="report")
def report(text: str) -> dict[str, object]:
    return load("text_stats")(text=text, top=2)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="wflo-market-"))
    work.chmod(0o755)  # the sandbox's own uid reads the package
    wflo.configure(database=f"sqlite:///{work}/wflo.db")
    package_dir = install_offline(work / "site")

    tool = load("text_stats")
    caps = tool.spec.capabilities
    print(f"installed {tool.name}: effects={tool.effects}, network={list(caps.network) or 'none'}")

    text = "the cat sat on the mat\nthe end"
    try:
        report.run(text)
    except ToolRefused as refused:
        print("no grant yet:", refused.reason)
    grant("text_stats", "workflow:report", max_calls=10)
    handle = report.start(text)
    from wflo.engine import Worker

    Worker(concurrency=1, workflows=None).run(max_runs=1, idle_timeout=1.0)
    print("granted:", handle.result(timeout=10))
    call = next(e.data for e in handle.events() if e.type == "call.completed" and e.data["kind"] == "tool")
    print(f"journal: {call['name']} ran in the {call['sandbox']['backend']} sandbox in {call['sandbox']['ms']} ms")

    key = work / "publisher.pem"
    public_pem = generate_key(key)
    sign_package(package_dir, key)
    (work / "publisher.pub").write_text(public_pem)
    print("trusted publisher key", trust(str(work / "publisher.pub"), name="ACME"))
    wflo.configure(database=f"sqlite:///{work}/wflo.db", require_signed_tools=True)
    assert load("text_stats")(text="signed and unaltered")["words"] == 3
    with (package_dir / "tools.py").open("a") as fh:
        fh.write("\n# a line slipped in after signing\n")
    try:
        load("text_stats")
    except UntrustedTool as refused:
        print("altered package:", refused.reason)
    else:
        raise AssertionError("an altered package was loaded")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
