"""Docs that cannot rot: runnable blocks run, the CLI reference is current, examples run."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for i, match in enumerate(_BLOCK.finditer(path.read_text())):
            found.append((f"{path.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return env


# ----------------------------------------------------------- extras each page needs
# A page whose examples need an optional dependency says so twice: in its prose
# (`pip install 'wflo[audit]'`, for readers) and in a marker (`<!-- extras: audit -->`, for this
# test). Its runnable blocks then run with the modules of every *other* extra made
# unimportable, as on a machine where only the named extras are installed.
_EXTRAS_MARK = re.compile(r"<!-- extras: ([\w\-, ]+) -->")
_NOT_EXTRAS = {"dev", "bench", "sandbox"}  # the test tooling, the benchmark peers, and a marker


def page_extras(page: Path) -> set[str]:
    match = _EXTRAS_MARK.search(page.read_text())
    return {e.strip() for e in match.group(1).replace(",", " ").split()} if match else set()


def _extras() -> dict[str, list[str]]:
    """Each extra of pyproject.toml and the distributions it adds (names normalised)."""
    import tomllib

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {
        extra: [_norm(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]) for req in reqs]
        for extra, reqs in table.items()
        if extra not in _NOT_EXTRAS
    }


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(dists: list[str]) -> set[str]:
    """The distributions and everything they require (unconditionally), installed here."""
    import importlib.metadata as md

    seen: set[str] = set()
    todo = list(dists)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [re.split(r"[\[<>=!~; (]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r]
    return seen


@functools.cache
def blocked_modules(named: frozenset[str]) -> list[str]:
    """Top-level modules installed only by extras the page does not name."""
    import importlib.metadata as md

    extras = _extras()
    allowed = _closure([d for e in named for d in extras[e]]) | _closure(["wflo"])
    unnamed = {d for e, dists in extras.items() if e not in named for d in dists} - allowed
    return sorted(
        module
        for module, dists in md.packages_distributions().items()
        if {_norm(d) for d in dists} & unnamed and not {_norm(d) for d in dists} & allowed
    )


_PRELUDE = """\
import sys as _sys
class _OnlyNamedExtras:
    blocked = frozenset(%r)
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (this page does not name the extra that installs it)",
                                      name=name.partition(".")[0])
        return None
_sys.meta_path.insert(0, _OnlyNamedExtras())
del _sys, _OnlyNamedExtras
"""


def run_with_extras(code: str, named: set[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The block run in a process of its own; what it makes in the temporary directory (a
    block's ``tempfile.mkdtemp()``, as a reader would write it) is removed afterwards: the
    suite left a directory with a database in /tmp per block per run."""
    script = tmp_path / "block.py"
    script.write_text(_PRELUDE % (blocked_modules(frozenset(named)),) + code)
    with _scratch() as scratch:
        return subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=_clean_env() | {"TMPDIR": str(scratch)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A TMPDIR of its own, outside pytest's private (0700) tmp_path so that a sandbox's user
    can still reach the scratch directories made there; removed at the end."""
    scratch = Path(tempfile.mkdtemp(prefix="wflo-docs-tmp-"))
    scratch.chmod(0o755)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[w for w, _ in _blocks()])
def test_runnable_doc_blocks(where: str, code: str, tmp_path: Path) -> None:
    named = page_extras(ROOT / where.split("#")[0])
    proc = run_with_extras(code, named, tmp_path)
    assert proc.returncode == 0, f"{where} failed with only the extras {sorted(named)}:\n{proc.stdout}\n{proc.stderr}"


def test_each_page_names_the_extras_its_examples_need() -> None:
    extras = _extras()
    for page in DOCS:
        text = page.read_text()
        for extra in page_extras(page):
            assert extra in extras, f"{page.name}: no extra named {extra!r} in pyproject.toml"
            named_in_prose = re.search(r"wflo\[[\w\-,]*\b" + re.escape(extra) + r"\b[\w\-,]*\]", text)
            assert named_in_prose, (
                f"{page.name} needs wflo[{extra}] but never tells the reader (pip install 'wflo[{extra}]')"
            )


def test_a_page_that_does_not_name_its_extra_fails(tmp_path: Path) -> None:
    """The check bites: an example importing openai on a page that names no extra fails."""
    proc = run_with_extras("import openai\n", set(), tmp_path)
    assert proc.returncode != 0 and "this page does not name the extra" in proc.stderr
    proc = run_with_extras("import openai\n", {"openai"}, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_there_are_runnable_blocks() -> None:
    assert len(_blocks()) >= 2


def test_cli_reference_is_current() -> None:
    from wflo.cli._docs import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), "run: python -m wflo.cli._docs > docs/cli.md"


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_examples_run(example: Path, tmp_path: Path) -> None:
    """Each example runs, and leaves nothing in the temporary directory (they left a directory
    with a database in /tmp at each run). Its own TMPDIR, outside pytest's private tmp_path, so
    that a sandbox's user can still reach the scratch directories made there."""
    with _scratch() as scratch:
        proc = subprocess.run(
            [sys.executable, str(example)], cwd=tmp_path, env=_clean_env() | {"TMPDIR": str(scratch)},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, f"{example.name} failed:\n{proc.stdout}\n{proc.stderr}"
        assert sorted(p.name for p in scratch.iterdir()) == [], f"{example.name} left these in its TMPDIR"


def test_mkdocs_site_builds_strict(tmp_path: Path) -> None:
    """Every page is in the nav and every link resolves (`mkdocs build --strict`)."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "budgets" / "index.html").exists()
    assert readme_link_problems(tmp_path / "site") == []


def readme_link_problems(site: Path) -> list[str]:
    """The README's links into docs/ (not part of the site): each page exists, and each #anchor
    is an id on the page mkdocs built (mkdocs itself checks the links between the pages)."""
    problems = []
    for target in re.findall(r"\]\((docs/[^)\s]+)\)", (ROOT / "README.md").read_text()):
        page, _, anchor = target.partition("#")
        if not (ROOT / page).exists():
            problems.append(f"README.md links to {page}, which does not exist")
        elif anchor and page.endswith(".md"):
            html = site / Path(page).relative_to("docs").with_suffix("") / "index.html"
            if f'id="{anchor}"' not in html.read_text():
                problems.append(f"README.md links to {target}: {page} has no heading with that anchor")
    return problems


def test_configuration_reference_lists_every_setting() -> None:
    import dataclasses

    from wflo._config import Settings

    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f.name for f in dataclasses.fields(Settings) if f"| `{f.name}` |" not in page]
    assert not missing, f"docs/configuration.md does not document: {missing}"


# Set by wflo for a child process of its own, never by a user: the sandboxed MCP server's host
# side (its configuration, passed in the environment) and the demo's scripted LLM address.
_INTERNAL_ENV = {"WFLO_MCP_JAIL", "WFLO_DEMO_LLM"}


def test_configuration_reference_lists_every_environment_variable() -> None:
    """Every WFLO_* name the code reads is on docs/configuration.md (settings and the others)."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    read = {
        name
        for path in (ROOT / "src" / "wflo").rglob("*.py")
        for name in re.findall(r"\bWFLO_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    missing = sorted(read - _INTERNAL_ENV - set(re.findall(r"\bWFLO_[A-Z0-9_]*[A-Z0-9]\b", page)))
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_configuration_reference_lists_each_setting_once() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| `WFLO_", page, re.M)
    assert len(rows) == len(set(rows)), f"settings listed twice: {sorted({r for r in rows if rows.count(r) > 1})}"


def test_identity_roles_table_matches_the_roles() -> None:
    """docs/identity.md's table of roles lists each built-in role's permissions exactly."""
    from wflo.auth import ROLES

    page = (ROOT / "docs" / "identity.md").read_text()
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (.+?) \|", page, re.M))
    assert set(rows) == set(ROLES), f"roles on the page {sorted(rows)}, in the code {sorted(ROLES)}"
    for role, cell in rows.items():
        listed = set(re.findall(r"`([\w*]+:[\w*]+)`", cell)) | (
            set(ROLES["viewer"]) if cell.startswith("viewer +") else set()
        )
        assert listed == set(ROLES[role]), (
            f"identity.md: {role} lists {sorted(listed)}, the code gives {sorted(ROLES[role])}"
        )


def test_api_reference_lists_every_route() -> None:
    """Each path of the OpenAPI document is on docs/api.md or docs/identity.md."""
    import json

    paths = json.loads((ROOT / "docs" / "openapi.json").read_text())["paths"]
    pages = (ROOT / "docs" / "api.md").read_text() + (ROOT / "docs" / "identity.md").read_text()
    missing = [p for p in paths if re.sub(r"\{\w+\}", "{id}", p) not in pages and p not in pages]
    assert not missing, f"docs/api.md does not describe: {missing}"
