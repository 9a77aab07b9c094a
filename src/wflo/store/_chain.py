"""The hash chain: canonical JSON and the link hash shared by the store and the auditor.

``hash = SHA-256(prev_hash ‖ canonical JSON of the event)`` where the event is
``{"chain", "seq", "type", "at", "data"}``. Canonical JSON sorts keys, has no whitespace,
keeps non-ASCII text as UTF-8, refuses NaN/Infinity, and writes floats in Python's shortest
round-trip form, so re-reading stored data and re-serialising it gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """Serialise ``value`` canonically (sorted keys, no spaces, UTF-8, no NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def link_hash(prev_hash: str, chain: str, seq: int, type_: str, at: str, data_json: str) -> str:
    """The hash of one event given its predecessor's hash.

    ``data_json`` is the event's data already in canonical form (as stored), so that the
    store does not serialise it twice on the hot path.
    """
    h = hashlib.sha256()
    h.update(prev_hash.encode("ascii"))
    # The envelope is written by hand in canonical key order (at, chain, data, seq, type) so
    # the stored data text is hashed as-is; json.dumps of the same dict gives the same bytes.
    h.update(b'{"at":')
    h.update(json.dumps(at).encode())
    h.update(b',"chain":')
    h.update(json.dumps(chain, ensure_ascii=False).encode())
    h.update(b',"data":')
    h.update(data_json.encode())
    h.update(b',"seq":')
    h.update(str(int(seq)).encode())
    h.update(b',"type":')
    h.update(json.dumps(type_, ensure_ascii=False).encode())
    h.update(b"}")
    return h.hexdigest()


def event_hash(prev_hash: str, chain: str, seq: int, type_: str, at: str, data: Any) -> str:
    """Like :func:`link_hash` for data that is not serialised yet."""
    return link_hash(prev_hash, chain, seq, type_, at, canonical_json(data))
