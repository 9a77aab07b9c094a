"""Memory measured by the tests that promise a bound on it."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable


def peak_bytes(fn: Callable[[], object]) -> int:
    """The most memory Python held (``tracemalloc``) while ``fn()`` ran, from a collected heap."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
