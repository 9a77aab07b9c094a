"""A Ctrl-C while the ``wflo`` command is still starting ends it quietly, not with a traceback.

The command spends its first half second importing, and a Ctrl-C then would print the traceback
of whatever import it reached. ``wflo/__init__`` is the first code of this package that runs,
for ``python -m wflo`` and the ``wflo`` script alike, so it imports this module first: in the
``wflo`` command (and only there: a program that imports wflo keeps its own hook) an interrupt
nobody caught prints nothing and ends the process with status 130, the status ``wflo`` documents
for an interrupt, as the commands' own Ctrl-C handling does (CPython would end it by SIGINT
instead, which only a shell turns into 130). Nothing is open yet that needs closing: once a
command runs, ``wflo.cli.main`` handles Ctrl-C itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import TracebackType

_MODULES = ("wflo", "wflo.cli", "wflo.__main__", "wflo.cli.__main__")


def _is_the_wflo_command() -> bool:
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 == "-m":  # ``python -m X``, while X is being located (and its packages imported)
        args = sys.orig_argv[1:]
        for i, arg in enumerate(args):
            if arg == "-m":
                return args[i + 1 : i + 2] in ([m] for m in _MODULES)
            if arg.startswith("-m"):
                return arg[2:] in _MODULES
            if arg in ("-c", "-"):
                return False
        return False
    # The ``wflo`` script: the file run as ``__main__`` is the one named by argv[0].
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.splitext(os.path.basename(argv0))[0] == "wflo" and main_file == argv0


def _quiet_interrupt(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if not issubclass(kind, KeyboardInterrupt):
        _previous(kind, exc, tb)
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(130)


_previous = sys.excepthook
if _is_the_wflo_command():
    sys.excepthook = _quiet_interrupt
