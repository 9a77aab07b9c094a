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

from .. import _config
from .._errors import UserError, WfloError, exit_code_for

F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
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
    """Import user modules so their workflows register (the working directory is importable)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import {name!r}: {exc}") from None


def dump_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--database", "-d", envvar="WFLO_DATABASE_URL", metavar="URL",
              help="Store URL (sqlite:///path.db or postgresql://…). Env: WFLO_DATABASE_URL; "
                   "default sqlite:///.wflo/wflo.db")  # fmt: skip
@click.version_option(package_name="wflo", prog_name="wflo")
def cli(database: str | None) -> None:
    """wflo: budgets, loop guards, crash recovery, approvals and an audit trail for AI agents."""
    _config.configure(database=database)
