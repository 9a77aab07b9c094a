"""The flight recorder: verify the hash chains, sign checkpoints, prune, export (and verify an
export offline) and report."""

from ._book import BookFinding, BookReport, verify_book
from ._checkpoint import (
    CheckpointResult,
    generate_key,
    load_private_key,
    load_public_key,
    make_checkpoint,
    merkle_root,
    read_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from ._content import add_redactor
from ._dates import parse_when
from ._export import count_events, export
from ._prune import PruneResult, prune, prune_candidates
from ._report import build_report, render_html
from ._verify import ChainReport, chain_hasher, pruned_chains, verify_all, verify_chain, verify_run
from ._verify_export import ExportProblem, ExportReport, verify_export

__all__ = [
    "BookFinding",
    "BookReport",
    "ChainReport",
    "CheckpointResult",
    "ExportProblem",
    "ExportReport",
    "PruneResult",
    "add_redactor",
    "build_report",
    "chain_hasher",
    "count_events",
    "export",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "make_checkpoint",
    "merkle_root",
    "parse_when",
    "prune",
    "prune_candidates",
    "pruned_chains",
    "read_checkpoint",
    "render_html",
    "verify_all",
    "verify_book",
    "verify_chain",
    "verify_checkpoint",
    "verify_export",
    "verify_run",
    "write_checkpoint",
]
