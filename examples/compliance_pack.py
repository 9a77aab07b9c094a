"""A signed compliance evidence pack from a small agent's runs, checked offline, then tampered with.

Run: python examples/compliance_pack.py   (writes ./compliance-example/; no API key, no server)

The same from the command line:
    wflo audit keygen --out audit-key.pem
    wflo compliance report --framework all --since 30d --format pdf --out pack --key audit-key.pem
    wflo compliance verify pack
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

try:
    import cryptography  # noqa: F401
except ImportError:
    print("examples/compliance_pack.py needs cryptography (signed packs): pip install 'wflo[audit]'")
    sys.exit(0)

import wflo
from wflo.audit import generate_key
from wflo.audit._checkpoint import load_private_key
from wflo.compliance import build_pack, verify_pack
from wflo.store import now_iso, open_store

HERE = Path("compliance-example")


@wflo.step
def look_up(order: str) -> dict[str, str]:
    return {"order": order, "status": "shipped"}


@wflo.workflow(name="example.support")
def answer(order: str) -> str:
    found = look_up(order)
    return f"Order {found['order']} has {found['status']}."


def main() -> None:
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir()
    url = f"sqlite:///{HERE / 'wflo.db'}"
    wflo.configure(database=url, principal="user:support-lead")
    since = now_iso()
    for order in ("A-1", "A-2", "A-3"):
        print(answer.run(order))

    generate_key(HERE / "audit-key.pem")
    key = load_private_key(HERE / "audit-key.pem")
    try:
        import fpdf  # noqa: F401

        fmt = "pdf"
    except ImportError:  # pip install 'wflo[audit]' for PDF
        fmt = "html"
    with open_store(url) as store:
        manifest = build_pack(store, HERE / "pack", since=since, until=now_iso(), private_key=key, fmt=fmt,
                              by="user:auditor")  # fmt: skip
    print(f"pack: {', '.join(f['name'] for f in manifest['files'])} + manifest.json, signed")
    evidence = json.loads((HERE / "pack" / "evidence.json").read_text())
    for section in evidence["sections"]:
        print(f"- {section['title']}: {section['summary']}")

    result = verify_pack(HERE / "pack", key.public_key())
    print("verify:", "intact" if result.ok else result.problem)
    assert result.ok

    # Someone edits a figure after the pack was signed: the digest no longer matches.
    path = HERE / "pack" / "evidence.json"
    path.write_text(path.read_text().replace('"history_intact": true', '"history_intact": false'))
    tampered = verify_pack(HERE / "pack", key.public_key())
    print("after editing evidence.json:", tampered.problem)
    assert not tampered.ok


if __name__ == "__main__":
    main()
