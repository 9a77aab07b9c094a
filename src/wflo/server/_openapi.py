"""The OpenAPI 3.1 document of the wflo server, as checked in at docs/openapi.json.

Regenerate it after changing a route::

    python -m wflo.server._openapi > docs/openapi.json

tests/unit/server/test_openapi_doc.py fails when the checked-in file differs. The server also
serves the same document at ``/openapi.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any


def document() -> dict[str, Any]:
    """The document, built from an app on a throwaway empty store (routes do not depend on data)."""
    from .. import config
    from ._app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.configure(database=f"sqlite:///{tmp}/openapi.db")
        try:
            doc: dict[str, Any] = create_app(cfg).openapi()
        finally:
            config.runtime().close()
    return doc


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
