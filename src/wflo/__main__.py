"""python -m wflo: the same as the wflo command (where the venv's scripts are not on PATH)."""

from .cli import main

main()
