"""The public names are a promise: adding one is a decision, removing one breaks users."""

from __future__ import annotations

import importlib

import pytest

import wflo

EXPECTED_TOP = {
    "ApprovalRejected", "AtMostOnceError", "BudgetExceededError", "ConfigurationError", "LoopDetectedError",
    "NonDeterminismError", "ResultTimeoutError", "RunCancelled", "RunFailedError", "RunHandle", "RunNotFoundError",
    "SerializationError", "Settings", "Step", "UnknownPriceError", "UserError", "WfloError", "Worker", "Workflow",
    "configure", "current_run", "resume", "settings", "step", "workflow",
}  # fmt: skip


def test_top_level_all_is_pinned() -> None:
    assert set(wflo.__all__) >= EXPECTED_TOP
    assert wflo.__all__ == sorted(wflo.__all__, key=str)
    for name in wflo.__all__:
        assert hasattr(wflo, name), name


@pytest.mark.parametrize("package", ["wflo.engine", "wflo.store", "wflo.audit"])
def test_subpackage_all_is_sorted_and_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    assert list(mod.__all__) == sorted(mod.__all__, key=str)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.{name}"


def test_errors_pickle_and_carry_codes() -> None:
    import pickle
    from decimal import Decimal

    err = wflo.BudgetExceededError(
        scope="tenant:a", limit=Decimal("1"), spent=Decimal("0.5"), reserved=Decimal("0.4"), requested=Decimal("0.2")
    )
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and back.scope == "tenant:a" and back.requested == Decimal("0.2")
    assert str(back) == str(err) and back.code == "budget_exceeded"
    assert issubclass(wflo.RunCancelled, BaseException) and not issubclass(wflo.RunCancelled, Exception)
