"""Stopping a worker without stalling its runs: the run is handed back after the step it is in,
and another worker resumes it at once (no wait for the lease to lapse, no step done twice).

``wflo worker`` does this on SIGTERM or Ctrl-C: runs in progress may finish for ``--grace``
seconds (default 10), then each is handed back; a second signal hands them back at once. In
code: ``Worker.stop(hand_back=True)``.

python examples/worker_stop.py
"""

from __future__ import annotations

import tempfile
import threading

import wflo

in_step = threading.Event()
stopping = threading.Event()
done: list[str] = []


@wflo.step
def draft(section: str) -> str:
    if section == "methods":
        in_step.set()  # the deploy begins while this step runs
        stopping.wait(5)
    done.append(section)
    return f"{section}: drafted"


@wflo.workflow(name="example.paper")
def paper() -> list[str]:
    return [draft(s) for s in ("intro", "methods", "results", "discussion")]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db", lease_seconds=30)
        handle = paper.start()

        old = wflo.engine.Worker(concurrency=2)  # the worker being replaced (a rolling deploy)
        serving = threading.Thread(target=old.run)
        serving.start()
        in_step.wait(5)
        old.stop(hand_back=True)  # what its second SIGTERM (or the end of --grace) does
        stopping.set()
        serving.join()
        print(f"old worker: {old.released} run handed back after {done}")

        new = wflo.engine.Worker(concurrency=2)  # its replacement takes it at once, not after 30 s
        new.run(max_runs=1, idle_timeout=5)
        print("result:", handle.result(timeout=5))
        print("each step ran once:", sorted(done) == sorted(set(done)) and len(done) == 4)
        print("journal:", ", ".join(e.type for e in handle.events()))


if __name__ == "__main__":
    main()
