"""Signed checkpoints: a small file that pins every chain's head, so a rewrite is caught.

Hash chains catch an edited or deleted event, but someone with write access to the database
can rewrite a chain consistently (recompute every hash after the change) or cut its tail and
move the recorded head back. A checkpoint, kept *outside* the database, catches both: it
lists each chain's ``(chain, count, head)`` at one moment, a Merkle root over those leaves,
and an Ed25519 signature over the canonical JSON of it all. Later, ``verify_checkpoint``
checks the signature and that the database *extends* the checkpoint: each chain still has an
event at ``seq = count`` whose hash is the signed head (or was pruned with that head on record).

File format (JSON)::

    {"format": "wflo-checkpoint", "version": 1, "at": "...Z", "by": "user:ann",
     "chains": [{"chain": "...", "count": 12, "head": "<sha256 hex>"}, ...],   # sorted by chain
     "events": 4711, "merkle_root": "<sha256 hex>",
     "algorithm": "ed25519", "public_key": "<base64 raw 32 bytes>", "signature": "<base64>"}

The signature covers the canonical JSON of every field except ``signature``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import ChainBrokenError, ConfigurationError, UserError
from ..store import SYSTEM_CHAIN, NewEvent, Store, canonical_json, now_iso
from . import _tables
from ._verify import ChainReport, pruned_chains, unsigned_prune, verify_all

FORMAT = "wflo-checkpoint"
VERSION = 1


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # tests/test_extras.py: without the extra
        raise ConfigurationError(
            "Ed25519 keys and signatures (audit checkpoints, evidence packs, tool packages) need the "
            "cryptography package: pip install 'wflo[audit]'"
        ) from None
    return ed25519


# --------------------------------------------------------------------------- keys
def generate_key(out_path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 private key (PEM, mode 0600) to ``out_path``; return the public key PEM."""
    ed25519 = _crypto()  # first: without cryptography, the line naming the extra
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(os.fspath(out_path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{out_path} already exists; a signing key is never overwritten") from None
    except OSError as exc:
        raise UserError(f"cannot write key file {out_path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return public_pem(key.public_key())


def public_pem(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return str(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    )


def _raw_public(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """The Ed25519 private key in a PEM file; ``UserError`` with one line if it is not one."""
    ed25519 = _crypto()  # first: without cryptography, the line naming the extra
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 key (make one with: wflo audit keygen --out {path})")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """An Ed25519 public key from a PEM file (a private key file gives its public half)."""
    ed25519 = _crypto()  # first: without cryptography, the line naming the extra
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise UserError(f"{path} is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 public key")
    return key


# --------------------------------------------------------------------------- merkle
def _leaf(chain: str, count: int, head: str) -> bytes:
    return hashlib.sha256(b"\x00" + canonical_json([chain, count, head]).encode()).digest()


def merkle_root(leaves: Sequence[tuple[str, int, str]]) -> str:
    """The Merkle root (SHA-256, RFC 6962-style domain separation) over ``(chain, count, head)``.

    Leaves are sorted by chain first, so the root does not depend on query order. An odd
    node at the end of a level is carried up unchanged.
    """
    level = [_leaf(c, n, h) for c, n, h in sorted(leaves)]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


# --------------------------------------------------------------------------- heads
def current_heads(store: Store) -> list[tuple[str, int, str]]:
    """``(chain, count, head)`` of every chain that has events, sorted by chain."""
    return [(str(c), int(s), str(h)) for c, s, h in _tables.chain_heads_now(store)]


def _signed_bytes(doc: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in doc.items() if k != "signature"}).encode()


def sign_record(record: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """``record`` with ``public_key`` and an Ed25519 ``signature`` over the rest (a prune record)."""
    doc = {**record, "public_key": _raw_public(private_key.public_key())}
    doc["signature"] = base64.b64encode(private_key.sign(_signed_bytes(doc))).decode()
    return doc


def record_signed_by(record: dict[str, Any], public_key: Any) -> bool:
    """Whether ``record`` carries a valid signature by ``public_key``."""
    if record.get("public_key") != _raw_public(public_key) or not isinstance(record.get("signature"), str):
        return False
    try:
        public_key.verify(base64.b64decode(record["signature"]), _signed_bytes(record))
    except Exception:
        return False
    return True


def make_checkpoint(store: Store, private_key: Any, *, by: str, verify: bool = True) -> dict[str, Any]:
    """Build and sign a checkpoint of ``store`` now (refused if a chain is broken, with ``verify``).

    The checkpoint is also recorded on the system chain (``audit.checkpointed``), after the
    heads were taken, so the record itself extends the signed state.
    """
    if verify:
        broken = [r for r in verify_all(store) if not r.ok]
        if broken:
            first = broken[0]
            raise ChainBrokenError(
                chain=first.chain, seq=first.seq, expected=first.expected, found=first.found, kind=first.kind
            )
    heads = current_heads(store)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "at": now_iso(),
        "by": by,
        "chains": [{"chain": c, "count": n, "head": h} for c, n, h in heads],
        "events": sum(n for _, n, _ in heads),
        "merkle_root": merkle_root(heads),
        "algorithm": "ed25519",
        "public_key": _raw_public(private_key.public_key()),
    }
    doc["signature"] = base64.b64encode(private_key.sign(_signed_bytes(doc))).decode()
    store.append_system(
        [
            NewEvent(
                "audit.checkpointed",
                {
                    "by": by,
                    "at": doc["at"],
                    "merkle_root": doc["merkle_root"],
                    "chains": len(heads),
                    "events": doc["events"],
                    "public_key": doc["public_key"],
                },
            )
        ]
    )
    return doc


def write_checkpoint(
    store: Store, key_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, by: str = "unknown"
) -> dict[str, Any]:
    """Sign a checkpoint of ``store`` with the key in ``key_path`` and write it to ``out_path``."""
    key = load_private_key(key_path)
    doc = make_checkpoint(store, key, by=by)
    try:
        Path(out_path).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write checkpoint {out_path}: {exc.strerror}") from None
    return doc


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint file, checked for shape; ``UserError`` with one line if unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{path} is not a wflo checkpoint")
    try:
        for item in doc["chains"]:
            if not (
                isinstance(item["chain"], str) and isinstance(item["count"], int) and isinstance(item["head"], str)
            ):
                raise TypeError
        str(doc["signature"]), str(doc["public_key"]), str(doc["merkle_root"])
    except (KeyError, TypeError):
        raise UserError(f"checkpoint {path} is malformed (missing or wrong fields)") from None
    if doc.get("version") != VERSION:
        raise UserError(f"checkpoint {path} has version {doc.get('version')!r}; this wflo reads {VERSION}")
    return doc


# --------------------------------------------------------------------------- verify
@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """The outcome of checking a database against a checkpoint."""

    signature_ok: bool
    pinned: bool
    """The public key was given by the caller (else the one in the file was used)."""
    at: str
    merkle_root: str
    chains: int
    reports: list[ChainReport] = field(default_factory=list)
    """One per chain that the database no longer extends."""
    problem: str | None = None
    """Why the signature or the file's own consistency failed."""

    @property
    def ok(self) -> bool:
        return self.signature_ok and not self.reports and self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "signature_ok": self.signature_ok,
            "pinned": self.pinned,
            "at": self.at,
            "merkle_root": self.merkle_root,
            "chains": self.chains,
            "problem": self.problem,
            "broken": [r.to_dict() for r in self.reports],
        }


def verify_checkpoint(store: Store, doc: dict[str, Any], public_key: Any | None = None) -> CheckpointResult:
    """Check ``doc``'s signature (with ``public_key`` if given, else the key in the file) and
    that ``store`` extends it: every signed chain still holds the signed head at ``seq = count``
    (or was pruned with exactly that head on record)."""
    refused = checkpoint_refused(doc, public_key)
    if refused is not None:
        return refused
    leaves = checkpoint_leaves(doc)
    # With a pinned key, only prunes signed by it excuse a missing chain: anyone who can write
    # the database can append an unsigned (or self-signed) audit.pruned record.
    pruned = pruned_chains(store, public_key)
    claimed = pruned_chains(store) if public_key is not None else pruned
    reports = []
    for chain, count, head in sorted(leaves):
        report = _check_extends(store, chain, count, head, pruned.get(chain))
        if report is not None and report.kind == "missing" and chain in claimed:
            report = unsigned_prune(chain, count)
        if report is not None:
            reports.append(report)
    return CheckpointResult(True, reports=reports, **_result_base(doc, public_key))


def checkpoint_leaves(doc: dict[str, Any]) -> list[tuple[str, int, str]]:
    """``(chain, count, head)`` of each chain a checkpoint (from ``read_checkpoint``) signs."""
    return [(c["chain"], int(c["count"]), c["head"]) for c in doc["chains"]]


def _result_base(doc: dict[str, Any], public_key: Any | None) -> dict[str, Any]:
    return {
        "pinned": public_key is not None,
        "at": str(doc.get("at")),
        "merkle_root": str(doc["merkle_root"]),
        "chains": len(doc["chains"]),
    }


def checkpoint_refused(doc: dict[str, Any], public_key: Any | None = None) -> CheckpointResult | None:
    """The failed result when ``doc``'s signature (by ``public_key`` if given, else the key in the
    file) or its Merkle root does not hold; ``None`` when the file itself is sound. Checking
    what it signs against a database or an export is the caller's part."""
    ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    base = _result_base(doc, public_key)
    try:
        embedded = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"], validate=True))
    except (ValueError, TypeError):
        return CheckpointResult(False, problem="the checkpoint's public key is not a valid Ed25519 key", **base)
    key = public_key if public_key is not None else embedded
    if public_key is not None and _raw_public(public_key) != doc["public_key"]:
        return CheckpointResult(False, problem="the checkpoint was not signed by the pinned public key", **base)
    try:
        key.verify(base64.b64decode(doc["signature"], validate=True), _signed_bytes(doc))
    except (InvalidSignature, ValueError, TypeError):
        return CheckpointResult(
            False, problem="bad signature: the checkpoint file was altered or signed by another key", **base
        )
    if merkle_root(checkpoint_leaves(doc)) != doc["merkle_root"]:
        return CheckpointResult(True, problem="the Merkle root does not match the listed chains", **base)
    return None


def _check_extends(
    store: Store, chain: str, count: int, head: str, pruned: tuple[int, str] | None
) -> ChainReport | None:
    if count == 0:
        return None
    found = _tables.hash_at(store, chain, count)
    if found is not None:
        if found == head:
            return None
        return ChainReport(chain, count, False, found, count, "rewritten", head, found)
    have = _tables.last_seq(store, chain)
    if have == 0:
        return gone_against(chain, count, head, pruned)
    return ChainReport(chain, have, False, "", have + 1, "truncated", f"{count} events", f"{have} events")


def gone_against(chain: str, count: int, head: str, pruned: tuple[int, str] | None) -> ChainReport | None:
    """A signed chain ``(count, head)`` that has no events left: fine if ``pruned`` (a prune
    record's ``(count, head)``) removed it after, or exactly at, the signed head; else a finding."""
    if pruned is not None:
        p_count, p_head = pruned
        if p_count > count or (p_count == count and p_head == head):
            return None  # pruned deliberately, after (or exactly at) the checkpoint
        return ChainReport(
            chain, 0, False, p_head, count, "rewritten", f"{count}:{head[:16]}", f"pruned at {p_count}:{p_head[:16]}"
        )
    what = "system chain" if chain == SYSTEM_CHAIN else "chain"
    return ChainReport(chain, 0, False, "", count, "missing", f"{count} events", f"no events in this {what}")
