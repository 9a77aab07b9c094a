"""LiteLLM: its calls are guarded at the HTTP layer like any httpx client; this module makes
wflo's refusals reach agent code as themselves.

LiteLLM wraps every error its provider clients raise in its own types (a budget refusal came
out as ``litellm.InternalServerError``, indistinguishable from an outage, and retried by
routers). Every such wrap goes through ``exception_type``; wflo wraps that function so an
error whose cause chain holds a wflo refusal (``BudgetExceededError``, ``EgressRefusedError``,
``LoopDetectedError``, …) is raised as that refusal. Installed when LiteLLM is imported.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from .._errors import WfloError

MODULE = "litellm.litellm_core_utils.exception_mapping_utils"


def wflo_error_in(error: Any, depth: int = 12) -> WfloError | None:
    """The wflo error in ``error``'s cause/context chain (or its ``original_exception``)."""
    seen: set[int] = set()
    while error is not None and depth > 0 and id(error) not in seen:
        if isinstance(error, WfloError):
            return error
        seen.add(id(error))
        depth -= 1
        error = error.__cause__ or error.__context__ or getattr(error, "original_exception", None)
    return None


def wrap(module: Any) -> None:
    """Wrap ``exception_type`` in LiteLLM's mapping module and every module that imported it."""
    original = module.exception_type
    if getattr(original, "__wflo_wrapped__", None) is not None:
        return

    @functools.wraps(original)
    def exception_type(*args: Any, **kwargs: Any) -> Any:
        error = kwargs.get("original_exception", args[1] if len(args) > 1 else None)
        found = wflo_error_in(error)
        if found is not None:
            return found  # callers ``raise exception_type(...)``
        return original(*args, **kwargs)

    exception_type.__wflo_wrapped__ = original  # type: ignore[attr-defined]
    for name, mod in list(sys.modules.items()):
        if (name == "litellm" or name.startswith("litellm.")) and getattr(mod, "exception_type", None) is original:
            mod.exception_type = exception_type  # type: ignore[attr-defined]  # LiteLLM's own modules
