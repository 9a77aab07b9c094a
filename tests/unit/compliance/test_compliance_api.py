"""The public names of `wflo.compliance`, the retention error, and the settings' checks."""

from __future__ import annotations

import pickle

import pytest

from wflo import _config
from wflo._errors import ConfigurationError, RetentionError, exit_code_for


def test_retention_error_pickles_with_its_fields() -> None:
    err = RetentionError(before="2026-03-01T00:00:00.000000Z", earliest="2025-09-01T00:00:00.000000Z", days=183)
    back = pickle.loads(pickle.dumps(err))
    assert (back.before, back.days, back.code) == (err.before, 183, "retention") and str(back) == str(err)
    assert exit_code_for(err) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retention_days": -1}, "retention_days"),
        ({"retention_days": True}, "retention_days"),
        ({"compliance_schedule": "hourly"}, "compliance_schedule"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _config.configure(**options)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WFLO_COMPLIANCE_SCHEDULE", "weekly")
    monkeypatch.setenv("WFLO_AUDIT_KEY", "/keys/audit.pem")
    monkeypatch.setenv("WFLO_COMPLIANCE_NOTIFY", "1")
    cfg = _config.configure()
    assert (cfg.compliance_schedule, cfg.compliance_key, cfg.compliance_notify, cfg.retention_days) == (
        "weekly", "/keys/audit.pem", True, 183)  # fmt: skip
