"""The pack's report as a PDF, with fpdf2 (pure Python; ``pip install 'wflo[audit]'``).

The same content as the HTML: the overview page, the sections, the appendix. Text is set in
DejaVu Sans from Debian's ``fonts-dejavu-core`` when it is installed (any character), else in
the PDF core font Helvetica (Latin-1; other characters become ``?``). Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError
from ._render import APPENDIX_ROWS, FRAMEWORK_NAMES, INTRO, cell, label, overview, when

_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/local/share/fonts/dejavu")


def _dejavu() -> tuple[str, str] | None:
    for folder in _FONT_DIRS:
        regular, bold = Path(folder, "DejaVuSans.ttf"), Path(folder, "DejaVuSans-Bold.ttf")
        if regular.is_file() and bold.is_file():
            return str(regular), str(bold)
    return None


class _Doc:
    def __init__(self, title: str) -> None:
        try:
            from fpdf import FPDF
        except ImportError:
            raise ConfigurationError("PDF reports need fpdf2: pip install 'wflo[audit]'") from None
        self.pdf = pdf = FPDF(orientation="landscape", unit="mm", format="A4")
        pdf.set_auto_page_break(True, margin=14)
        pdf.set_title(title)
        pdf.set_creator("wflo")
        fonts = _dejavu()
        if fonts is not None:
            pdf.add_font("dejavu", "", fonts[0])
            pdf.add_font("dejavu", "B", fonts[1])
            self.family, self.unicode = "dejavu", True
        else:
            self.family, self.unicode = "helvetica", False
        self.footer_text = title
        pdf.set_margins(14, 14, 14)

    def text(self, value: Any) -> str:
        s = cell(value) if not isinstance(value, str) else value
        return s if self.unicode else s.encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False) -> None:
        self.pdf.set_font(self.family, "B" if bold else "", size)

    def para(
        self, value: str, size: float = 10, bold: bool = False, color: tuple[int, int, int] = (27, 31, 36)
    ) -> None:
        self.font(size, bold)
        self.pdf.set_text_color(*color)
        self.pdf.multi_cell(0, size * 0.5, self.text(value), new_x="LMARGIN", new_y="NEXT")
        self.pdf.ln(1.5)
        self.pdf.set_text_color(27, 31, 36)

    def table(self, columns: list[str], rows: list[list[Any]], width: float | None = None) -> None:
        from fpdf.enums import WrapMode

        if not rows:
            self.para("None in this period.", 9, color=(87, 96, 106))
            return
        self.font(7.5)
        with self.pdf.table(
            headings_style=_heading_style(self.family), line_height=3.6, wrapmode=WrapMode.CHAR, padding=0.8,
            first_row_as_headings=True, width=width, col_widths=(3, 2) if width else None,
            align="LEFT",
        ) as table:  # fmt: skip
            row = table.row()
            for c in columns:
                row.cell(self.text(c))
            for r in rows:
                row = table.row()
                for v in r:
                    row.cell(self.text(cell(v))[:600])
        self.pdf.ln(2)


def _heading_style(family: str) -> Any:
    from fpdf.fonts import FontFace

    return FontFace(family=family, emphasis="BOLD", fill_color=(246, 248, 250))


def render_pdf(evidence: dict[str, Any], records: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write the report as a PDF to ``path``."""
    framework = FRAMEWORK_NAMES.get(evidence["framework"], evidence["framework"])
    title = f"Compliance evidence: {framework}"
    doc = _Doc(title)
    pdf = doc.pdf
    pdf.add_page()
    doc.para(title, 18, bold=True)
    doc.para(
        f"{when(evidence['since'])} to {when(evidence['until'])}; generated {when(evidence['generated_at'])} "
        f"by {evidence['by']}",
        9,
        color=(87, 96, 106),
    )
    doc.para("What this period shows", 13, bold=True)
    sentences, numbers = overview(evidence)
    doc.table([k for k, _ in numbers], [[v for _, v in numbers]])
    for s in sentences:
        doc.para(s, 10)
    doc.para(INTRO, 8.5, color=(87, 96, 106))
    for s in evidence["sections"]:
        pdf.add_page()
        doc.para(s["title"], 14, bold=True)
        doc.para("Controls: " + "; ".join(s["controls"]), 9, color=(5, 80, 174))
        doc.para(s["summary"], 10)
        doc.table(["figure", "value"], [[label(k), v] for k, v in s["figures"].items()], width=130)
        for t in s["tables"]:
            doc.para(t["title"], 10.5, bold=True)
            doc.table(t["columns"], t["rows"])
        for note in s["notes"]:
            doc.para(note, 8.5, color=(87, 96, 106))
        doc.para("How this was produced", 10, bold=True)
        for q in s["query"]:
            doc.para(q, 7.5, color=(87, 96, 106))
    pdf.add_page()
    doc.para("Appendix: cited records", 14, bold=True)
    more = f" The first {APPENDIX_ROWS} are listed here." if len(records) > APPENDIX_ROWS else ""
    doc.para(f"{len(records)} records are cited; each is in records.jsonl with its stored data and link hashes.{more}")
    doc.table(
        ["chain", "seq", "type", "at", "hash"],
        [
            [
                r["chain"],
                r["seq"],
                r["type"],
                r["at"],
                r["hash"][:16] + "..." + (" DOES NOT HASH" if r.get("hash_mismatch_in_store") else ""),
            ]
            for r in records[:APPENDIX_ROWS]
        ],
    )
    pdf.output(os.fspath(path))
