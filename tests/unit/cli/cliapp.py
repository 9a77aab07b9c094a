"""Workflows the CLI tests run."""

import wflo


@wflo.step
def shout(text: str) -> str:
    return text.upper()


@wflo.workflow(name="greet")
def greet(name: str, punctuation: str = "!") -> str:
    return shout(f"hello {name}") + punctuation


@wflo.workflow(name="explode")
def explode() -> None:
    raise ValueError("kaboom")


@wflo.step
def wait_for_ctrl_c() -> None:
    raise KeyboardInterrupt  # as if the user pressed Ctrl-C while this step ran


@wflo.workflow(name="interrupted")
def interrupted() -> None:
    wait_for_ctrl_c()
