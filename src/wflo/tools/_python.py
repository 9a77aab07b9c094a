"""``wflo.tools.python``: a tool that runs the model's Python code in ``wflo.Sandbox``."""

from __future__ import annotations

from typing import Any

from ..approvals import Approval
from ..sandbox import Sandbox
from ._tool import Tool

DESCRIPTION = (
    "Run Python 3 code (standard library only) in an isolated sandbox with no network and no host files. "
    "Print what you want to see; files written under /work are returned by name."
)


def python(
    sandbox: Sandbox | None = None, *, name: str = "python", approval: Approval | None = None
) -> Tool[..., dict[str, Any]]:
    """A tool taking ``code: str`` that runs it in ``sandbox`` (default: ``wflo.Sandbox()``'s
    limits) and returns ``{stdout, stderr, exit_code, killed_by, files}``. Risk ``high``: the
    code is the model's; the sandbox is the boundary. Inside a run, the tool call and the
    sandboxed execution under it are both journaled, so a resumed run does not run it again."""
    boxes: list[Sandbox] = [sandbox] if sandbox is not None else []

    def run_code(code: str) -> dict[str, Any]:
        if not boxes:  # made on first use, so describing the tool does not probe the host
            boxes.append(Sandbox())
        result = boxes[0].run_python(code)
        return {
            "stdout": result.stdout,
            "stderr": result.stderr,
            "exit_code": result.exit_code,
            "killed_by": result.killed_by,
            "files": sorted(result.files),
        }

    run_code.__doc__ = DESCRIPTION
    return Tool(run_code, name=name, description=DESCRIPTION, risk="high", approval=approval)
