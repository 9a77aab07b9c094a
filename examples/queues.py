"""Named queues: a global concurrency limit, priorities and partition keys, served by workers.

Workers can be dedicated to some queues: ``Worker(queues=[emails])`` here is
``wflo worker --import app --queue emails`` in production; runs of other queues wait for theirs.

python examples/queues.py
"""

from __future__ import annotations

import tempfile
import threading
import time

import wflo

# At most 2 runs of this queue at once across every worker; one at a time per customer.
emails = wflo.Queue("emails", concurrency=2)
reports = wflo.Queue("reports")

running: list[str] = []
peak = 0
order: list[str] = []
lock = threading.Lock()


@wflo.workflow(name="example.send", queue=emails)
def send(to: str) -> str:
    global peak
    with lock:
        running.append(to)
        peak = max(peak, len(running))
        order.append(to)
    time.sleep(0.2)
    with lock:
        running.remove(to)
    return f"sent to {to}"


@wflo.workflow(name="example.report", queue=reports)
def report(month: str) -> str:
    return f"report for {month}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wflo.configure(database=f"sqlite:///{tmp}/example.db")
        handles = [send.start(f"user{i}@example.com") for i in range(6)]
        urgent = send.options(priority=10).start("ceo@example.com")  # started before the others
        per_customer = [send.options(partition_key="acme").start(f"ops{i}@acme.example") for i in range(2)]

        monthly = report.start("2026-11")

        # Two workers with 4 threads each could run 8 at once; the queue allows 2. They serve only
        # the emails queue (`wflo worker --queue emails`): the report waits for a worker of its own.
        workers = [wflo.engine.Worker(concurrency=4, queues=[emails]) for _ in range(2)]
        threads = [threading.Thread(target=w.run, kwargs={"idle_timeout": 0.5}) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        print(urgent.result(), "| first:", order[0], "| peak concurrency:", peak)
        assert all(h.status() == "succeeded" for h in [*handles, urgent, *per_customer])
        assert "ceo@example.com" in order[:2]  # claimed first (two workers: one of the first two to begin)
        assert peak <= 2
        assert monthly.status() == "queued"
        wflo.engine.Worker(queues=[reports]).run(idle_timeout=0.2)
        print(monthly.result())


if __name__ == "__main__":
    main()
