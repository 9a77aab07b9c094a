"""The ``wflo`` command line."""

from __future__ import annotations

from ._app import cli, fail_missing_extra

# Each module adds its commands to ``cli`` when imported.
from . import _approvals, _audit, _auth, _budgets, _compliance, _db, _demo, _mcp, _runs, _tools  # noqa: F401  isort: skip

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``wflo`` script."""
    try:
        cli(prog_name="wflo")
    except ImportError as exc:  # a command without ``handle_errors``: the same one line
        fail_missing_extra(exc)
