"""Every setting is validated by its declared type, from the environment and from configure()."""

from __future__ import annotations

import dataclasses

import pytest

import wflo
from wflo._config import _CHOICES, Settings, env_name


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"lease_seconds": "30"}, "lease_seconds='30' is not a valid lease_seconds setting; accepted: a number > 0"),
        ({"lease_seconds": float("nan")}, "accepted: a number > 0"),
        ({"poll_interval": 0}, "poll_interval=0 is not a valid"),
        ({"otel": "yes"}, "otel='yes' is not a valid otel setting; accepted: 1/0, true/false, yes/no, on/off"),
        ({"auto_migrate": 1}, "accepted: 1/0, true/false"),
        ({"content": "everything"}, "accepted: full, redacted, hash_only"),
        ({"database": 5}, "database=5 is not a valid database setting; accepted: text"),
        ({"colour": "red"}, "unknown setting(s): colour (known: database, principal"),
    ],
)
def test_configure_refuses_bad_values_naming_the_setting(kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(wflo.errors.ConfigurationError) as info:
        wflo.configure(**{"database": "sqlite:///:memory:", **kwargs})
    assert text in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("false", False), ("off", False)],
)
def test_switches_accept_the_usual_words(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("WFLO_OTEL", value)
    assert Settings.from_env().otel is expected


def test_every_setting_has_an_env_variable_that_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting added later is read from WFLO_<NAME> and checked by its type without more code."""
    for field in dataclasses.fields(Settings):
        if field.type in ("str", "str | None", "tuple[str, ...]") and field.name not in _CHOICES:
            continue  # free text (or a list of it): nothing to refuse
        monkeypatch.setenv(env_name(field), "not-a-value")
        with pytest.raises(
            wflo.errors.ConfigurationError, match=f"{env_name(field)}=.* is not a valid {field.name} setting"
        ):
            Settings.from_env()
        monkeypatch.delenv(env_name(field))
