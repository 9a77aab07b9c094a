"""Durable steps: a run interrupted in the middle resumes without redoing finished steps.

python examples/durable_steps.py
"""

from __future__ import annotations

import tempfile

import wflo

done: list[str] = []


@wflo.step
def download(name: str) -> int:
    done.append(name)
    if name == "c" and done.count("c") == 1:
        raise KeyboardInterrupt("simulated crash while downloading c")
    return len(name) * 100


@wflo.workflow(name="example.downloads")
def downloads(names: list[str]) -> int:
    return sum(download(n) for n in names)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db")
        try:
            downloads.options(id="dl-1").run(["a", "b", "c", "d"])
        except KeyboardInterrupt as exc:
            print(f"interrupted: {exc}")
        total = wflo.resume("dl-1")
        print(f"resumed: total {total}; steps executed: {done}")
        assert total == 400 and done == ["a", "b", "c", "c", "d"]  # a and b were not downloaded again


if __name__ == "__main__":
    main()
