"""The access errors pickle and carry their codes (public names: tests/test_public_api.py)."""

from __future__ import annotations

import pickle

from wflo._errors import AccessDeniedError, AuthenticationError, exit_code_for


def test_access_errors_pickle_and_carry_codes() -> None:
    denied = AccessDeniedError(principal="user:m", permission="grants:write", scope="tenant:a", detail="needs admin")
    back = pickle.loads(pickle.dumps(denied))
    assert str(back) == "user:m may not grants:write on tenant:a: needs admin" and back.scope == "tenant:a"
    assert denied.to_dict()["code"] == "forbidden" and exit_code_for(denied) == 1
    unauth = pickle.loads(pickle.dumps(AuthenticationError(detail="token expired")))
    assert str(unauth) == "not authenticated: token expired" and unauth.code == "unauthenticated"
