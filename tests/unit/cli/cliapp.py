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
