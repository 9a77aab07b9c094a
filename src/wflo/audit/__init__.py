"""The flight recorder: verify the hash chains, sign checkpoints, prune, export and report."""

from ._checkpoint import (
    CheckpointResult,
    generate_key,
    make_checkpoint,
    merkle_root,
    read_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from ._export import export
from ._prune import PruneResult, prune
from ._report import build_report, render_html
from ._verify import ChainReport, pruned_chains, verify_all, verify_chain, verify_run

__all__ = [
    "ChainReport",
    "CheckpointResult",
    "PruneResult",
    "build_report",
    "export",
    "generate_key",
    "make_checkpoint",
    "merkle_root",
    "prune",
    "pruned_chains",
    "read_checkpoint",
    "render_html",
    "verify_all",
    "verify_chain",
    "verify_checkpoint",
    "verify_run",
    "write_checkpoint",
]
