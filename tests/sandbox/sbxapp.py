"""A workflow that runs code in the sandbox, then (with SBX_CRASH set) dies by SIGKILL."""

from __future__ import annotations

import os
import signal
import sys

import wflo


@wflo.workflow(name="sbxapp")
def sbxapp() -> str:
    box = wflo.Sandbox(wall="5s")
    first = box.run_python("print(6 * 7)")
    if os.environ.get("SBX_CRASH"):
        os.kill(os.getpid(), signal.SIGKILL)
    second = box.run(["sh", "-c", "echo done"])
    return first.stdout.strip() + " " + second.stdout.strip()


if __name__ == "__main__":
    print(sbxapp.options(id=sys.argv[1]).run())
