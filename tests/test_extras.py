"""A feature used without its extra says which extra to install; never a bare traceback.

``pip install wflo`` holds the core only. Here the examples and the commands that need an extra
run as on such a machine: every module that only an extra installs is made unimportable
(``test_docs.run_with_extras``: the import raises ``ModuleNotFoundError``, as when the package
is missing). Each must either run, or stop with one line naming ``pip install 'wflo[...]'``.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

from test_docs import EXAMPLES, _closure, _extras, _norm, run_with_extras
from wflo._errors import ConfigurationError
from wflo._extras import EXTRAS, missing_extra
from wflo.cli._app import fail_missing_extra

_NAMED = re.compile(r"pip install 'wflo\[([\w\-,]+)\]'")


def _top_level() -> dict[str, set[str]]:
    """Each installed distribution (normalised name) and its top-level modules."""
    out: dict[str, set[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            out.setdefault(_norm(dist), set()).add(module)
    return out


def test_the_table_of_extras_matches_pyproject() -> None:
    """``wflo._extras.EXTRAS`` names, for each extra's distributions, the module it installs,
    and nothing an extra does not install."""
    extras, modules = _extras(), _top_level()
    core = {m for d in _closure(["wflo"]) for m in modules.get(d, ())}
    for extra, dists in extras.items():
        for dist in dists:
            provided = modules.get(dist, {dist.replace("-", "_")}) - core  # not installed here: its name
            if provided:
                assert {m for m in provided if EXTRAS.get(m) == extra}, f"wflo[{extra}]'s {dist}: none of {provided}"
    for module, extra in EXTRAS.items():
        assert extra in extras, f"{module}: no extra {extra!r} in pyproject.toml"
        installed = {m for d in _closure(extras[extra]) for m in modules.get(d, ())}
        names = {d.replace("-", "_") for d in extras[extra]}
        assert module in installed | names, f"{module} is not installed by wflo[{extra}]"
        assert module not in core, f"{module} comes with the core: it needs no extra"


def test_only_a_missing_extra_gets_the_advice() -> None:
    got = missing_extra(ModuleNotFoundError("No module named 'cryptography'", name="cryptography"), "signing")
    assert isinstance(got, ConfigurationError)
    assert str(got) == "signing needs cryptography, which is not installed: pip install 'wflo[audit]'"
    # A module missing inside an installed package, a module of no extra, a failing import of
    # an installed one: a broken install or a bug, raised as it is.
    for exc in (
        ModuleNotFoundError("x", name="cryptography.hazmat.bindings"),
        ModuleNotFoundError("x", name="no_such_module"),
        ImportError("cannot import name 'x' from 'fastapi'", name="fastapi"),
    ):
        assert missing_extra(exc) is None
        with pytest.raises(ImportError):
            fail_missing_extra(exc)


def test_a_command_importing_a_missing_extra_prints_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ``wflo`` command's net for an import no feature checks itself: in ``handle_errors``
    (each command) and in ``main`` (the rest); the exit status of a configuration error."""
    import click
    from click.testing import CliRunner

    import wflo.cli
    from wflo.cli._app import handle_errors

    @click.command()
    @handle_errors
    def needs_server() -> None:
        import fastapi  # noqa: F401

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    result = CliRunner().invoke(needs_server)
    assert result.exit_code == 2 and "pip install 'wflo[server]'" in result.output, result.output

    def cli(**_: object) -> None:
        raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")

    monkeypatch.setattr(wflo.cli, "cli", cli)
    with pytest.raises(SystemExit) as exit_:
        wflo.cli.main()
    assert exit_.value.code == 2 and "pip install 'wflo[server]'" in capsys.readouterr().err


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_without_its_extra(example: Path, tmp_path: Path) -> None:
    """Run as ``python examples/x.py`` right after ``pip install wflo``."""
    code = f"import runpy, sys\nsys.argv = [{str(example)!r}]\nrunpy.run_path({str(example)!r}, run_name='__main__')\n"
    proc = run_with_extras(code, set(), tmp_path)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and proc.returncode == 0, f"{example.name} without extras:\n{out}"
    for extras in _NAMED.findall(out):  # a stop names extras that exist
        assert set(extras.split(",")) <= set(_extras()), f"{example.name} names an extra pyproject.toml lacks: {extras}"


_APP = "import wflo\n\n@wflo.workflow(name='x')\ndef x() -> int:\n    return 1\n"


def _key(tmp_path: Path) -> str:
    from wflo.audit import generate_key

    path = tmp_path / "key.pem"
    generate_key(path)
    return str(path)


# (the command's arguments, the extra it needs); ``KEY``: a signing key's path, ``APP``: a
# module with one workflow.
COMMANDS = [
    (["audit", "keygen", "--out", "new.pem"], "audit"),
    (["audit", "checkpoint", "--key", "KEY", "--out", "cp.json"], "audit"),
    (["tools", "trust", "KEY"], "audit"),
    (["compliance", "report", "--since", "2026-01-01", "--out", "pack", "--key", "KEY"], "audit"),
    (["mcp", "serve", "--workflow", "x"], "mcp"),
    (["worker", "-i", "APP", "--metrics-port", "9999", "--idle-exit", "0"], "otel"),
    (["server"], "server"),
    (["-d", "postgresql://nobody@127.0.0.1:9/none", "runs", "list"], "postgres"),
]


@pytest.mark.parametrize(("args", "extra"), COMMANDS, ids=[" ".join(a[:2]) for a, _ in COMMANDS])
def test_command_without_its_extra(args: list[str], extra: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(_APP)
    args = [_key(tmp_path) if a == "KEY" else "app.py" if a == "APP" else a for a in args]
    # A store with one finished run, where the command looks by default (./.wflo/wflo.db).
    made = run_with_extras(_APP + "x.run()\n", set(), tmp_path)
    assert made.returncode == 0, made.stderr
    code = f"import sys\nsys.argv = ['wflo', *{args!r}]\nfrom wflo.cli import main\nmain()\n"
    proc = run_with_extras(code, set(), tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and f"pip install 'wflo[{extra}]'" in proc.stderr, proc.stderr


# The modules a user imports by name that need an extra (``wflo.wrap`` and the CLI check their
# own): each import alone, on the core, must raise the one-line error that names its extra.
MODULES = [
    ("wflo.integrations.langgraph", "langgraph"),
    ("wflo.integrations.pydantic_ai", "pydantic-ai"),
    ("wflo.server", "server"),
]


@pytest.mark.parametrize(("module", "extra"), MODULES, ids=[m for m, _ in MODULES])
def test_importing_a_module_without_its_extra_names_it(module: str, extra: str, tmp_path: Path) -> None:
    # ``import wflo.integrations.langgraph`` raised ModuleNotFoundError: No module named
    # 'langchain_core', from deep inside, naming neither LangGraph nor the extra.
    code = (
        "from wflo.errors import ConfigurationError\n"
        f"try:\n    import {module}\nexcept ConfigurationError as exc:\n    print(exc)\n"
        "else:\n    print('imported')\n"
    )
    proc = run_with_extras(code, set(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"pip install 'wflo[{extra}]'" in proc.stdout, proc.stdout
