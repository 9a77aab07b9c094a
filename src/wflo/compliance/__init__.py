"""Compliance evidence packs mapped to the EU AI Act, SOC 2 and ISO/IEC 42001; the retention
policy that ``wflo audit prune`` keeps; scheduled packs from ``wflo worker``.

See docs/compliance.md.
"""

from ._evidence import CONTROLS, FRAMEWORKS, build_evidence, find_gaps, sections_for
from ._pack import PackResult, build_pack, verify_pack
from ._retention import check_retention, earliest_cutoff, enforce_retention
from ._schedule import due_period, run_schedule, wait_for_packs

__all__ = [
    "CONTROLS",
    "FRAMEWORKS",
    "PackResult",
    "build_evidence",
    "build_pack",
    "check_retention",
    "due_period",
    "earliest_cutoff",
    "enforce_retention",
    "find_gaps",
    "run_schedule",
    "sections_for",
    "verify_pack",
    "wait_for_packs",
]
