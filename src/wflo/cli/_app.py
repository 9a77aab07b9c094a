"""The ``wflo`` command group, its shared options, and one-line errors for user mistakes."""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import json
import os
import select
import signal
import stat
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click
from rich import table as _table
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from .. import config
from ..errors import UserError, WfloError, exit_code_for, missing_extra

F = TypeVar("F", bound=Callable[..., Any])

INTERRUPTED = 128 + signal.SIGINT
"""The exit status after Ctrl-C (130), as the shell reports a command that SIGINT ended."""
OUTPUT_CLOSED = 128 + signal.SIGPIPE
"""The exit status when the reader of the output went away (141: ``wflo runs list | head -1``), as
the shell reports a command that SIGPIPE ended; nothing more is printed."""


def output_closed() -> NoReturn:
    """The reader of stdout (or stderr) went away: stop quietly with ``OUTPUT_CLOSED``.

    Both streams now write to ``/dev/null``, so the interpreter's last flush of what is still
    buffered cannot fail again ("Exception ignored … BrokenPipeError", status 120).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
    sys.exit(OUTPUT_CLOSED)


def check_output_reader() -> None:
    """End with ``OUTPUT_CLOSED`` if stdout is a pipe nobody reads any more.

    A write that the reader's exit cut short can succeed in part, and CPython's buffered stdout
    then drops the rest without an error (``wflo runs list | head -1``): asked at the end, the
    pipe says whether its reader is gone, so that case ends as the others do, not with 0.
    """
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not hasattr(select, "poll"):
            return
    except (OSError, ValueError, AttributeError):  # no stdout, or not a file
        return
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    if any(events & select.POLLERR for _, events in poll.poll(0)):
        output_closed()


@contextlib.contextmanager
def process_exits() -> Iterator[None]:
    """Ctrl-C and a closed output end every command the same way: ``INTERRUPTED`` or
    ``OUTPUT_CLOSED``, never a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except click.Abort as exc:  # click's prompts turn Ctrl-C into Abort; "no" stays click's
        if isinstance(exc.__context__, KeyboardInterrupt) or isinstance(exc.__cause__, KeyboardInterrupt):
            sys.exit(INTERRUPTED)
        raise
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        output_closed()


class _Console(Console):
    def on_broken_pipe(self) -> None:  # rich's own exits with 1
        output_closed()


# No emoji codes: a principal ``user:x`` printed before a colon must not become "user❌".
console = _Console(highlight=False, emoji=False)
err_console = _Console(stderr=True, highlight=False, emoji=False)


class Table(_table.Table):
    """A table of stored values: a ``str`` cell is plain text, never markup (a run's error or a
    tool's argument may hold ``[/]`` or ``[white]``); a cell styled on purpose is a ``Text``."""

    def add_row(self, *renderables: Any, style: Any = None, end_section: bool = False) -> None:
        cells = [Text(c) if isinstance(c, str) else c for c in renderables]
        super().add_row(*cells, style=style, end_section=end_section)


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
            with process_exits():
                return fn(*args, **kwargs)
        except WfloError as exc:
            fail(str(exc), exit_code_for(exc))
        except (OSError, json.JSONDecodeError) as exc:
            if os.environ.get("WFLO_DEBUG"):
                raise
            fail(str(exc), 1)
        except ImportError as exc:
            fail_missing_extra(exc)
        return None

    return wrapper  # type: ignore[return-value]


def fail_missing_extra(exc: ImportError) -> None:
    """One line naming the extra to install when ``exc`` is an optional module that is not
    installed (``wflo._extras``); any other import failure is raised as it is."""
    better = missing_extra(exc)
    if better is None or os.environ.get("WFLO_DEBUG"):
        raise exc
    fail(str(better), exit_code_for(better))


def import_modules(modules: tuple[str, ...]) -> None:
    """Import user modules so their workflows register (the working directory is importable).

    Each is a module name (``myapp.agents``) or a Python file (``path/to/script.py``). A file
    is imported under the module name it has when imported normally (its file name, prefixed
    by its packages when its directory has an ``__init__.py``), which is also the name its
    functions get when it runs as a script: a run started by ``python path/to/script.py``
    resumes here with the same workflow and step names.
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
        except Exception as exc:
            failed_import(name, exc)


def _import_file(path: str) -> None:
    from ..engine import module_for_file

    file = os.path.abspath(path)
    if not os.path.isfile(file):
        raise UserError(f"cannot import {path!r}: no such file")
    root, module = module_for_file(file)
    if not all(part.isidentifier() for part in module.split(".")):
        raise UserError(f"cannot import {path!r}: {module!r} is not a valid module name")
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"cannot import {path!r} (as {module}): {exc}") from None
    except Exception as exc:
        failed_import(path, exc)
    loaded = getattr(sys.modules.get(module), "__file__", None)
    if loaded is None or os.path.abspath(loaded) != file:
        raise UserError(f"cannot import {path!r}: the module {module!r} found first is {loaded}")


def failed_import(name: str, exc: Exception) -> None:
    """The user's module raised while it was imported: one line, as for a run that failed
    (``WFLO_DEBUG=1`` shows the traceback)."""
    if os.environ.get("WFLO_DEBUG"):
        raise exc
    message = " ".join(str(exc).split())
    raise UserError(f"cannot import {name!r}: it raised {type(exc).__name__}: {message} (WFLO_DEBUG=1 shows where)")


def plural(n: int, word: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def dump_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


class _Group(click.Group):
    """The ``wflo`` group: Ctrl-C or a closed output while the command line is read or a command
    runs ends as ``process_exits`` says (click itself would print "Aborted!" or exit 1)."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with process_exits():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with process_exits():
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
        config.configure(database=database)
    except WfloError as exc:
        fail(str(exc), exit_code_for(exc))
