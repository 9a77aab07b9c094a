"""Packs from the demo's scenes (run for real: scripted LLM, real SDK): the PDF's text through
`pdftotext`, its pages through `pdftoppm`, the HTML in Debian's chromium without console errors."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo_scenes import run_demo_scenes
from panel import dump_dom
from wflo import _config
from wflo.audit import generate_key
from wflo.audit._checkpoint import load_private_key
from wflo.compliance import build_pack, verify_pack
from wflo.store import NewEvent, now_iso, open_store

SINCE = "2000-01-01T00:00:00.000000Z"


def _need(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is required in CI (.ci/run installs it: apt-get install {package})")
    pytest.skip(f"{tool} is not installed (apt-get install {package})")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = run_demo_scenes(Path(tmp_path_factory.mktemp("demo")))
    with open_store(url) as store:  # hostile text must stay text in every format
        store.append_system([NewEvent("principal.granted", {"principal": "<script>alert(1)</script>",
                                                            "role": "approver", "by": "user:ünïcödé"})])  # fmt: skip
    yield url
    _config.reset()


def _pack(url: str, out: Path, fmt: str) -> dict[str, Any]:
    generate_key(out.parent / f"{out.name}.pem")
    with open_store(url) as store:
        return build_pack(store, out, since=SINCE, until=now_iso(), private_key=load_private_key(out.parent / f"{out.name}.pem"),
                          fmt=fmt, by="user:auditor")  # fmt: skip


def test_demo_pack_as_pdf(demo_store: str, tmp_path: Path) -> None:
    pdftotext, pdftoppm = _need("pdftotext", "poppler-utils"), _need("pdftoppm", "poppler-utils")
    _pack(demo_store, tmp_path / "pack", "pdf")
    pdf = tmp_path / "pack" / "report.pdf"
    assert verify_pack(tmp_path / "pack").ok
    text = subprocess.run([pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    first = text.split("\f")[0]
    assert "What this period shows" in first and "maps wflo's record to EU AI Act, SOC 2 and ISO/IEC 42001" in first
    assert "Budget refusals: 1; loop stops: 1;" in " ".join(first.split())
    assert "People decided 1: 1 approved" in " ".join(first.split())
    for heading in ("Record-keeping", "Human oversight", "Inventory", "Access", "Monitoring and incidents", "Cost",
                    "Appendix: cited records"):  # fmt: skip
        assert heading in text, heading
    flat = " ".join(text.split())
    assert "EU AI Act Art. 14 (human oversight)" in flat and "SOC 2 CC6.1 (logical access)" in flat
    assert "user:demo-finance" in flat and "gpt-4o-mini" in flat and "max_repeats" in flat
    assert "<script>alert(1)</script>" in flat and "user:ünïcödé" in flat  # DejaVu: any character
    pages = int(subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout.split("Pages:")[1].split()[0]) if shutil.which("pdfinfo") else 8  # fmt: skip
    assert pages >= 8  # overview, six sections, appendix
    subprocess.run([pdftoppm, "-r", "50", "-png", "-f", "1", "-l", "2", str(pdf), str(tmp_path / "page")], check=True)
    pngs = sorted(tmp_path.glob("page-*.png"))  # page-1.png, or page-01.png past nine pages
    assert len(pngs) == 2
    for png in pngs:
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert width > height > 300  # A4 landscape at 50 dpi
        assert png.stat().st_size > 8000  # text on the page, not a blank render


def test_demo_pack_html_in_chromium(demo_store: str, tmp_path: Path) -> None:
    _pack(demo_store, tmp_path / "pack", "html")
    page = tmp_path / "pack" / "report.html"
    dom, log = dump_dom(page, tmp_path / "profile")
    for heading in ("What this period shows", "Record-keeping", "Human oversight", "Monitoring and incidents",
                    "Appendix: cited records"):  # fmt: skip
        assert f">{heading}</h2>" in dom, heading
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script" not in dom.lower()
    for marker in ("Uncaught", "ERROR:CONSOLE", ":CONSOLE"):
        assert marker not in log, log[-2000:]


def test_demo_pack_as_json_only(demo_store: str, tmp_path: Path) -> None:
    manifest = _pack(demo_store, tmp_path / "pack", "json")
    assert [f["name"] for f in manifest["files"]] == ["checkpoint.json", "evidence.json", "records.jsonl"]


def test_demo_figures_match_wflo_report(demo_store: str) -> None:
    """`wflo report` (a separate implementation over the projections) counts the same things."""
    from wflo.audit import build_report
    from wflo.compliance import build_evidence

    with open_store(demo_store) as store:
        until = now_iso()
        old = build_report(store, since=SINCE, until=until)
        new = {s["key"]: s for s in build_evidence(store, since=SINCE, until=until)["sections"]}
    mon, ho, cost = new["monitoring"]["figures"], new["human_oversight"]["figures"], new["cost"]["figures"]
    assert mon["loop_stops"] == len(old["loop_stops"]) == 1
    assert mon["budget_refusals"] == len(old["budget_refusals"]) == 1
    assert ho["approval_requests"] == len(old["approvals"]) == 1
    assert ho["approved"] == sum(1 for a in old["approvals"] if a["status"] == "approved")
    assert cost["total_usd"] == old["spend"]["total_usd"]
    assert new["record_keeping"]["figures"]["history_intact"] is old["verification"]["ok"] is True
    assert mon["stopped_runs"] == old["runs"]["by_status"].get("stopped", 0)
