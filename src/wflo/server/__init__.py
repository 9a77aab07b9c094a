"""The wflo server (``pip install 'wflo[server]'``): OIDC sign-in, sessions, API tokens, and a
route table where every endpoint declares its permission. ``wflo server`` runs it.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import joserfc  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from ..errors import ConfigurationError

    raise ConfigurationError(
        f"the wflo server needs its extra: pip install 'wflo[server]' ({exc.name} is missing)"
    ) from None

from ._app import create_app
from ._firstrun import PATH as FIRST_SIGNIN_PATH
from ._firstrun import FirstSignIn
from ._routes import PUBLIC, SIGNED_IN, RouteSpec
from ._thread import serve_in_thread

__all__ = ["FIRST_SIGNIN_PATH", "FirstSignIn", "PUBLIC", "RouteSpec", "SIGNED_IN", "create_app", "serve_in_thread"]
