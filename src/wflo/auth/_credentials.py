"""The CLI's stored login: ``wflo login`` writes it (mode 0600), ``wflo whoami`` reads it.

The file holds the server URL and a bearer token (an API token, or one issued after an OIDC
device/browser login). It lives in ``$WFLO_CREDENTIALS`` or ``~/.config/wflo/credentials.json``
and is created with 0600 permissions before anything secret is written to it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def credentials_path() -> Path:
    if os.environ.get("WFLO_CREDENTIALS"):
        return Path(os.environ["WFLO_CREDENTIALS"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "wflo" / "credentials.json"


@dataclass(frozen=True, slots=True)
class Credentials:
    server: str
    token: str


def save_credentials(creds: Credentials, path: Path | None = None) -> Path:
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_CREAT with 0600 and a chmod for an existing file: the secret never sits in a readable file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server": creds.server, "token": creds.token}, f)
    return path


def load_credentials(path: Path | None = None) -> Credentials | None:
    path = path or credentials_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):  # JSON, but not what `wflo login` writes: unreadable as well
        return None
    return Credentials(server=str(data.get("server", "")), token=str(data.get("token", "")))


def forget_credentials(path: Path | None = None) -> bool:
    path = path or credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
