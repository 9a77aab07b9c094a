"""``wflo audit export``: events as JSONL or CSV plus a ``manifest.json`` that pins them.

The events file holds each event's stored columns (``data`` as its canonical JSON text), so
an auditor can recompute every link hash from the export alone. ``manifest.json`` lists each
file with its SHA-256 and size, the event count, each exported chain's first and last
sequence number and head hash, the time, the filters and who exported. The export itself is
an ``audit.exported`` event on the system chain (with the files' hashes), so a later reader can
tell that this exact export was made, and by whom.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._errors import UserError
from ..store import SYSTEM_CHAIN, NewEvent, Store, now_iso
from . import _tables

FORMATS = ("jsonl", "csv")
COLUMNS = _tables.EXPORT_COLUMNS
PAGE = 5000


def count_events(store: Store, *, run_id: str | None = None, since: str | None = None) -> int:
    return _tables.count_events(store, *_tables.event_filters(run_id, since))


def iter_events(store: Store, *, run_id: str | None = None, since: str | None = None) -> Iterator[tuple[Any, ...]]:
    """Raw event rows ordered by (chain, seq), page by page (keyset pagination)."""
    last: tuple[str, int] | None = None
    while True:
        rows = _tables.export_page(store, run_id, since, last, PAGE)
        yield from rows
        if len(rows) < PAGE:
            return
        last = (str(rows[-1][0]), int(rows[-1][1]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def output_dir(out_dir: str | os.PathLike[str], what: str) -> Path:
    """``out_dir``, created if need be; refused if it already holds ``what`` (a manifest)."""
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        raise UserError(f"{out} already holds {what} (manifest.json); choose an empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror}") from None
    return out


def export(
    store: Store,
    out_dir: str | os.PathLike[str],
    *,
    fmt: str = "jsonl",
    run_id: str | None = None,
    since: str | None = None,
    by: str = "unknown",
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the events (all, one run's, or those at or after ``since``) and the manifest.

    Returns the manifest. Refuses a directory that already holds an export.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = output_dir(out_dir, "an export")
    name = f"events.{fmt}"
    path = out / name
    chains: dict[str, dict[str, Any]] = {}
    count = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n") if fmt == "csv" else None
        if writer is not None:
            writer.writerow(COLUMNS)
        pending = 0
        for chain, seq, type_, at, data, prev_hash, hash_ in iter_events(store, run_id=run_id, since=since):
            seq = int(seq)
            if writer is not None:
                writer.writerow((chain, seq, type_, at, data, prev_hash, hash_))
            else:
                fh.write(
                    json.dumps(
                        {
                            "chain": chain,
                            "seq": seq,
                            "type": type_,
                            "at": at,
                            "data": data,
                            "prev_hash": prev_hash,
                            "hash": hash_,
                        },
                        ensure_ascii=False,
                    )
                )
                fh.write("\n")
            info = chains.get(chain)
            if info is None:
                info = chains[chain] = {"chain": chain, "first_seq": seq, "first_prev_hash": prev_hash, "events": 0}
            info["last_seq"], info["head"] = seq, hash_
            info["events"] += 1
            count += 1
            pending += 1
            if on_progress is not None and pending >= 1000:
                on_progress(pending)
                pending = 0
        if on_progress is not None and pending:
            on_progress(pending)
    files = [{"name": name, "sha256": _sha256(path), "bytes": path.stat().st_size, "events": count}]
    manifest: dict[str, Any] = {
        "format": fmt,
        "columns": list(COLUMNS),
        "files": files,
        "events": count,
        "chains": list(chains.values()),
        "at": now_iso(),
        "by": by,
        "filters": {"run": run_id, "since": since},
        "hash": "sha256(prev_hash || canonical JSON of {at, chain, data, seq, type}); data is stored canonical JSON",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    store.append_chain(
        SYSTEM_CHAIN,
        [
            NewEvent(
                "audit.exported",
                {
                    "by": by,
                    "format": fmt,
                    "events": count,
                    "chains": len(chains),
                    "filters": manifest["filters"],
                    "files": [{"name": f["name"], "sha256": f["sha256"]} for f in files],
                    "manifest_sha256": _sha256(out / "manifest.json"),
                },
            )
        ],
    )
    return manifest
