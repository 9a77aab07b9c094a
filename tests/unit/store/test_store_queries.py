"""The store's public read queries (``read``, ``read_one``): what audit, compliance and the CLI use."""

from __future__ import annotations

import re
from pathlib import Path

from wflo.store import NewEvent, open_store

SRC = Path(__file__).resolve().parents[3] / "src" / "wflo"


def test_read_and_read_one_on_both_stores(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.create_run(run_id="q-1", workflow="wf", input={}, tenant="acme")
        store.append_system([NewEvent("note", {"n": 1}), NewEvent("note", {"n": 2})])
        assert store.read("SELECT id, tenant FROM runs WHERE id = ?", ("q-1",)) == [("q-1", "acme")]
        assert store.read_one("SELECT COUNT(*) FROM events WHERE type = ?", ("note",)) == (2,)
        assert store.read_one("SELECT id FROM runs WHERE id = ?", ("missing",)) is None
        assert store.read("SELECT id FROM runs WHERE id = ?", ("missing",)) == []
    finally:
        store.close()


def test_no_package_outside_the_store_calls_its_private_queries() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "store":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\._(fetchall|fetchone|tx|connection)\(", line):
                offenders.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not offenders, "use store.read()/read_one()/write():\n" + "\n".join(offenders)
