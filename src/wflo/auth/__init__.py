"""Identity and access: principals, roles with scopes, API tokens, sessions, OIDC claims.

``wflo.auth.access()`` answers "may this principal do that, there?" and records every
decision on the system chain; ``wflo.auth.tokens()`` issues and checks API tokens and
sessions. The server (``wflo.server``) and the CLI both go through them.
"""

from __future__ import annotations

from .._config import get_store
from .._errors import AccessDeniedError, AccessError, AuthenticationError
from ._access import Access, Grant, Principal, check_principal, os_user
from ._client import DeviceLogin, ServerClient
from ._credentials import Credentials, credentials_path, forget_credentials, load_credentials, save_credentials
from ._device import DevicePoll, DeviceRequest, DeviceRequests, DeviceStart
from ._identities import ClaimsPolicy, Identities, Offboarded, principal_id
from ._roles import GLOBAL, PERMISSIONS, ROLES, check_scope, covers, role_allows, tenant_scope
from ._tokens import Session, TokenInfo, Tokens, parse_duration
from ._tokens import digest as token_digest


def access() -> Access:
    """Grants and authorization on the configured store."""
    return Access(get_store())


def tokens() -> Tokens:
    """API tokens and sessions on the configured store."""
    return Tokens(access())


__all__ = [
    "Access",
    "AccessDeniedError",
    "AccessError",
    "AuthenticationError",
    "ClaimsPolicy",
    "Credentials",
    "DeviceLogin",
    "DevicePoll",
    "DeviceRequest",
    "DeviceRequests",
    "DeviceStart",
    "GLOBAL",
    "Grant",
    "Identities",
    "Offboarded",
    "PERMISSIONS",
    "Principal",
    "ROLES",
    "ServerClient",
    "Session",
    "TokenInfo",
    "Tokens",
    "access",
    "check_principal",
    "check_scope",
    "covers",
    "credentials_path",
    "forget_credentials",
    "load_credentials",
    "os_user",
    "parse_duration",
    "principal_id",
    "role_allows",
    "save_credentials",
    "tenant_scope",
    "token_digest",
    "tokens",
]
