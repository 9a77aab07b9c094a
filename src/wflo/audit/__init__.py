"""The flight recorder: verify the hash chains of runs and of the system."""

from ._verify import ChainReport, verify_all, verify_chain

__all__ = ["ChainReport", "verify_all", "verify_chain"]
