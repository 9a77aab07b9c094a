"""The ``wflo`` command group, its shared options, and one-line errors for user mistakes."""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from .. import _config
from .._errors import UserError, WfloError, exit_code_for

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    # The message is text, not markup: "pip install 'wflo[otel]'" must not lose its "[otel]".
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn wflo errors (and a few common OS ones) into one line and a stable exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WfloError as exc:
            fail(str(exc), exit_code_for(exc))
        except (BrokenPipeError, KeyboardInterrupt):
            sys.exit(130)
        except (OSError, json.JSONDecodeError) as exc:
            if os.environ.get("WFLO_DEBUG"):
                raise
            fail(str(exc), 1)
        return None

    return wrapper  # type: ignore[return-value]


def import_modules(modules: tuple[str, ...]) -> None:
    """Import user modules so their workflows register (the working directory is importable).

    Each is a module name (``myapp.agents``) or a Python file (``path/to/script.py``). A file
    is imported under its file name as module name, with its directory importable: the name
    its functions also get when the file runs as a script, so a run started by
    ``python path/to/script.py`` resumes here with the same workflow and step names.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        if name.endswith(".py") or os.sep in name:
            _import_file(name)
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import {name!r}: {exc}") from None


def _import_file(path: str) -> None:
    import importlib.util

    file = os.path.abspath(path)
    if not os.path.isfile(file):
        raise UserError(f"cannot import {path!r}: no such file")
    module = os.path.splitext(os.path.basename(file))[0]
    if not module.isidentifier():
        raise UserError(f"cannot import {path!r}: {module!r} is not a valid module name")
    folder = os.path.dirname(file)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if module in sys.modules and os.path.abspath(getattr(sys.modules[module], "__file__", "") or "") == file:
        return
    spec = importlib.util.spec_from_file_location(module, file)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path!r}: not a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except ImportError as exc:
        del sys.modules[module]
        raise UserError(f"cannot import {path!r}: {exc}") from None


def plural(n: int, word: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def dump_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--database", "-d", envvar="WFLO_DATABASE_URL", metavar="URL",
              help="Store URL (sqlite:///path.db or postgresql://…). Env: WFLO_DATABASE_URL; "
                   "default sqlite:///.wflo/wflo.db")  # fmt: skip
@click.version_option(package_name="wflo", prog_name="wflo")
def cli(database: str | None) -> None:
    """wflo: budgets, loop guards, crash recovery, approvals and an audit trail for AI agents."""
    # Piped or captured output keeps whole lines: tables are not cut at 80 columns.
    for c in (console, err_console):
        c.width = 10_000 if not c.is_terminal and not os.environ.get("COLUMNS") else None  # type: ignore[assignment]
    try:
        # Every setting is validated here, before any command runs: one line naming it.
        _config.configure(database=database)
    except WfloError as exc:
        fail(str(exc), exit_code_for(exc))
