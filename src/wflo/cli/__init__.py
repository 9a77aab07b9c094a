"""The ``wflo`` command line."""

from __future__ import annotations

import os
import sys

from ._app import check_output_reader, cli, fail, fail_missing_extra, process_exits

# Each module adds its commands to ``cli`` when imported.
from . import _approvals, _audit, _auth, _budgets, _compliance, _db, _demo, _mcp, _runs, _tools  # noqa: F401  isort: skip

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``wflo`` script."""
    with process_exits():
        try:
            _main()
        except SystemExit:
            # What is still buffered goes out now, where a closed pipe ends as every other one
            # does, not in the interpreter's last flush ("Exception ignored …", status 120).
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            check_output_reader()
            raise


def _main() -> None:
    for arg in sys.argv[1:]:
        # Bytes that are not UTF-8 arrive as lone surrogates, which no store, hash or JSON takes.
        if not arg.isascii() and any("\udc80" <= ch <= "\udcff" for ch in arg):
            fail(f"the argument {os.fsencode(arg)!r} is not UTF-8 text; retype it or check the terminal's encoding")
    try:
        cli(prog_name="wflo")
    except ImportError as exc:  # a command without ``handle_errors``: the same one line
        fail_missing_extra(exc)
