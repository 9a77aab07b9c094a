"""Which failed LLM calls have an unknown outcome: sent, then the answer was lost."""

from __future__ import annotations

_NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol", "ProxyError",
                       "LocalProtocolError", "InvalidURL"})  # fmt: skip
_LOST = frozenset({"TimeoutException", "TimeoutError", "NetworkError", "RemoteProtocolError", "ProtocolError",
                   "ReadError", "WriteError", "CloseError", "ReadTimeout", "WriteTimeout"})  # fmt: skip


def unknown_outcome(error: BaseException | None) -> str | None:
    """Why a failed call's outcome is unknown (``"timeout"``, ``"connection lost"``), or ``None``
    when the request surely never reached the provider (it could not connect) or no error.

    By class name along the MRO, so ``httpx`` and ``httpx2`` (and ``TimeoutError``) are alike.
    """
    if error is None:
        return None
    names = {c.__name__ for c in type(error).__mro__}
    if names & _NOT_SENT or not names & _LOST:
        return None
    return "timeout" if "TimeoutException" in names or "TimeoutError" in names else "connection lost"
