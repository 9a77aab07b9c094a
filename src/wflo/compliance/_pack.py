"""Evidence packs: a folder an auditor can check offline.

A pack holds::

    report.html | report.pdf   the readable report (none for --format json)
    evidence.json              every figure, table and query of every section
    records.jsonl              each cited event, with its stored columns and link hashes
    checkpoint.json            a signed checkpoint taken at generation (when the history is intact)
    manifest.json              SHA-256 and size of every file above, signed with the audit key

``verify_pack`` needs no database: it checks the manifest's Ed25519 signature (against a
pinned public key if given), that every listed file is there with its digest, that no other
file was added, and that each record's hash is its link hash, so a record cannot be edited
even together with the manifest unless the audit key signs it again. Generating a pack is a
``compliance.pack`` event on the system chain.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import UserError
from ..store import NewEvent, Store, link_hash
from ._evidence import build_evidence

FORMAT = "wflo-evidence-pack"
VERSION = 1
REPORT_FORMATS = ("html", "pdf", "json")
_RECORD_COLUMNS = ("chain", "seq", "type", "at", "data", "prev_hash", "hash")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _records(store: Store, cited: list[tuple[str, int]]) -> list[dict[str, Any]]:
    by_chain: dict[str, list[int]] = {}
    for chain, seq in cited:
        by_chain.setdefault(chain, []).append(seq)
    out: list[dict[str, Any]] = []
    for chain in sorted(by_chain):
        seqs = sorted(by_chain[chain])
        for start in range(0, len(seqs), 500):
            part = seqs[start : start + 500]
            marks = ", ".join("?" * len(part))
            rows = store.read(
                f"SELECT {', '.join(_RECORD_COLUMNS)} FROM events WHERE chain = ? AND seq IN ({marks}) ORDER BY seq",
                (chain, *part),
            )
            out.extend(
                {k: (int(v) if k == "seq" else v) for k, v in zip(_RECORD_COLUMNS, r, strict=True)} for r in rows
            )
    for rec in out:
        # A record that was already altered in the database is shipped as found, and marked, so
        # the pack stays verifiable while saying which of its records do not hash.
        if rec["hash"] != link_hash(rec["prev_hash"], rec["chain"], rec["seq"], rec["type"], rec["at"], rec["data"]):
            rec["hash_mismatch_in_store"] = True
    return out


def build_pack(
    store: Store,
    out_dir: str | os.PathLike[str],
    *,
    since: str,
    until: str,
    private_key: Any,
    framework: str = "all",
    fmt: str = "html",
    checkpoint: dict[str, Any] | None = None,
    public_key: Any | None = None,
    retention_days: int = 183,
    by: str = "unknown",
    scheduled: bool = False,
) -> dict[str, Any]:
    """Write an evidence pack for ``[since, until)`` into ``out_dir``; return its manifest."""
    from ..audit._checkpoint import make_checkpoint, sign_record
    from ..audit._export import output_dir

    if fmt not in REPORT_FORMATS:
        raise UserError(f"unknown report format {fmt!r}: use one of {', '.join(REPORT_FORMATS)}")
    out = output_dir(out_dir, "a pack")
    if any(out.iterdir()):
        raise UserError(f"{out} is not empty; a pack needs a folder of its own (verify refuses extra files)")
    if public_key is None:
        public_key = private_key.public_key()
    evidence = build_evidence(
        store, since=since, until=until, framework=framework, checkpoint=checkpoint, public_key=public_key,
        retention_days=retention_days, by=by,
    )  # fmt: skip
    records = _records(store, [tuple(c) for c in evidence["cited"]])
    names = []
    (out / "evidence.json").write_text(json.dumps(evidence, indent=2, ensure_ascii=False, default=str) + "\n", "utf-8")
    names.append("evidence.json")
    with (out / "records.jsonl").open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    names.append("records.jsonl")
    intact = all(s["figures"].get("history_intact", True) for s in evidence["sections"])
    if intact:
        doc = make_checkpoint(store, private_key, by=by, verify=False)
        (out / "checkpoint.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", "utf-8")
        names.append("checkpoint.json")
    if fmt == "html":
        from ._render import render_html

        (out / "report.html").write_text(render_html(evidence, records), "utf-8")
        names.append("report.html")
    elif fmt == "pdf":
        from ._pdf import render_pdf

        render_pdf(evidence, records, out / "report.pdf")
        names.append("report.pdf")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "framework": framework,
        "since": since,
        "until": until,
        "generated_at": evidence["generated_at"],
        "by": by,
        "records": len(records),
        "files": [{"name": n, "sha256": _sha256(out / n), "bytes": (out / n).stat().st_size} for n in sorted(names)],
        "algorithm": "ed25519",
    }
    manifest = sign_record(manifest, private_key)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")
    store.append_system(
        [
            NewEvent(
                "compliance.pack",
                {
                    "by": by,
                    "framework": framework,
                    "since": since,
                    "until": until,
                    "format": fmt,
                    "scheduled": scheduled,
                    "records": len(records),
                    "manifest_sha256": _sha256(out / "manifest.json"),
                    "public_key": manifest["public_key"],
                },
            )
        ]
    )
    return manifest


# --------------------------------------------------------------------------- verify
@dataclass(frozen=True, slots=True)
class PackResult:
    """The outcome of ``verify_pack``: ``ok``, or the first ``problem`` in one line."""

    ok: bool
    problem: str | None = None
    files: int = 0
    records: int = 0
    signer: str | None = None
    """The signing key (base64 of the raw Ed25519 public key) named in the manifest."""
    pinned: bool = False
    """The signer was checked against a key the caller gave (else the manifest's own key)."""


def _fail(problem: str) -> PackResult:
    return PackResult(False, problem)


def verify_pack(directory: str | os.PathLike[str], public_key: Any | None = None) -> PackResult:
    """Check a pack offline: signature, every file's digest, no missing or extra file, records' hashes."""
    from ..audit._checkpoint import _crypto, _raw_public, record_signed_by

    folder = Path(directory)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a directory")
    try:
        manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    except FileNotFoundError:
        return _fail("manifest.json is missing")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return _fail(f"manifest.json is unreadable: {exc}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return _fail("manifest.json is not a wflo evidence pack manifest")
    if manifest.get("version") != VERSION:
        return _fail(f"manifest version {manifest.get('version')!r}; this wflo reads {VERSION}")
    if public_key is not None and manifest.get("public_key") != _raw_public(public_key):
        return _fail("the manifest was not signed by the pinned public key")
    key = public_key
    if key is None:
        try:
            import base64

            ed25519 = _crypto()

            key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(str(manifest.get("public_key"))))
        except (ValueError, TypeError):
            return _fail("the manifest's public key is not a valid Ed25519 key")
    if not record_signed_by(manifest, key):
        return _fail("bad signature: manifest.json was altered or signed by another key")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return _fail("manifest.json lists no files")
    listed = set()
    for f in files:
        name = f.get("name")
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..", "manifest.json"):
            return _fail(f"manifest.json lists an unsafe file name {name!r}")
        listed.add(name)
        path = folder / name
        if not path.is_file():
            return _fail(f"{name} is missing")
        # The size first: a file swapped for a huge one is refused without reading it.
        if path.stat().st_size != f.get("bytes") or _sha256(path) != f.get("sha256"):
            return _fail(f"{name} was altered (its SHA-256 differs from the signed manifest)")
    extra = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json" and p.name not in listed)
    if extra:
        return _fail(f"{extra[0]} is not part of the pack (extra file)")
    count = 0
    if "records.jsonl" in listed:
        with (folder / "records.jsonl").open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    r = json.loads(line)
                    ok = r.get("hash_mismatch_in_store") is True or r["hash"] == link_hash(
                        r["prev_hash"], r["chain"], int(r["seq"]), r["type"], r["at"], r["data"]
                    )
                except (ValueError, KeyError, TypeError):
                    ok = False
                if not ok:
                    return _fail(f"records.jsonl line {n}: the record's hash is not its link hash")
                count += 1
    return PackResult(True, None, len(listed), count, str(manifest["public_key"]), public_key is not None)
