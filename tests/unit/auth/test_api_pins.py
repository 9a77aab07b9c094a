"""The public names of wflo.auth and wflo.server are pinned; the new errors pickle with codes."""

from __future__ import annotations

import importlib
import pickle

import pytest

from wflo._errors import AccessDeniedError, AuthenticationError, exit_code_for

PINNED = {
    "wflo.auth": {
        "GLOBAL", "PERMISSIONS", "ROLES", "Access", "AccessDeniedError", "AccessError", "AuthenticationError",
        "ClaimsPolicy", "Credentials", "Grant", "Identities", "Principal", "ServerClient", "Session", "TokenInfo", "Tokens",
        "access", "check_principal", "check_scope", "covers", "credentials_path", "forget_credentials", "load_credentials", "os_user",
        "parse_duration", "principal_id", "role_allows", "save_credentials", "tenant_scope", "tokens",
    },
    "wflo.server": {"PUBLIC", "SIGNED_IN", "RouteSpec", "create_app"},
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(PINNED))
def test_all_is_pinned_sorted_and_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    assert set(mod.__all__) == PINNED[package]
    assert list(mod.__all__) == sorted(mod.__all__, key=str)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{package}.{name}"


def test_access_errors_pickle_and_carry_codes() -> None:
    denied = AccessDeniedError(principal="user:m", permission="grants:write", scope="tenant:a", detail="needs admin")
    back = pickle.loads(pickle.dumps(denied))
    assert str(back) == "user:m may not grants:write on tenant:a: needs admin" and back.scope == "tenant:a"
    assert denied.to_dict()["code"] == "forbidden" and exit_code_for(denied) == 1
    unauth = pickle.loads(pickle.dumps(AuthenticationError(detail="token expired")))
    assert str(unauth) == "not authenticated: token expired" and unauth.code == "unauthenticated"
