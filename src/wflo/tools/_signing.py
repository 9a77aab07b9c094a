"""Signed tool packages: a publisher's Ed25519 signature over the manifest and every file.

``wflo tools sign DIR --key KEY`` (the key from ``wflo audit keygen``) writes
``DIR/wflo_tools.sig``: the SHA-256 of each file of the package directory (the ``.pyc`` files
of ``__pycache__`` excepted, which the sandbox never reads; the manifest ``wflo_tools.json`` is
one of them), the publisher's
public key and a signature over both (the audit chain's ``sign_record``). ``wflo tools trust
KEY --tools a,b`` pins a publisher's key in the store (on the system chain), for the tool names
it may vouch for. With ``require_signed_tools``, ``wflo.tools.load(name)`` refuses a package
that is unsigned, signed by an untrusted key, signed by a key not trusted for ``name``, or whose
files differ from what was signed (changed, added or removed), naming the file.

Grants name tools, not publishers: a key trusted for any name (``tools`` not given, as every
key trusted before scopes existed) lets its publisher ship a package declaring another
publisher's granted tool name and, wherever that one is not installed, get its grants. The
default stays "any tool" so existing trust keeps working; ``wflo tools trust`` warns.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import get_store, settings
from .._errors import ConfigurationError, UserError
from ..audit._checkpoint import _crypto, _raw_public, load_private_key, load_public_key, record_signed_by, sign_record
from ..store import NewEvent
from ._errors import UntrustedTool
from ._manifest import NAME

if TYPE_CHECKING:
    from ..store import Store
    from ._packages import ToolPackage

SIG_FILE = "wflo_tools.sig"


def file_digests(directory: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file a signature covers."""
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        # Compiled bytecode in __pycache__ is not signed (pip writes it at install) and never
        # read in the sandbox (its runner looks for bytecode elsewhere). A .pyc anywhere else
        # is importable on its own (no source beside it) and so is signed like any file.
        if (path.parent.name == "__pycache__" and path.suffix == ".pyc") or rel == SIG_FILE:
            continue
        if path.is_symlink():
            out[rel] = "symlink:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def sign_package(directory: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Path:
    """Sign the package directory (the one holding ``wflo_tools.json``); returns the signature file."""
    root = Path(directory)
    if not (root / "wflo_tools.json").is_file():
        raise UserError(f"{root} has no wflo_tools.json: sign the package directory that holds the manifest")
    key = load_private_key(key_path)
    doc = sign_record({"kind": "wflo-tool-package", "files": file_digests(root)}, key)
    out = root / SIG_FILE
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return out


def key_id(raw_public_b64: str) -> str:
    """A short, stable name for a public key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(base64.b64decode(raw_public_b64)).hexdigest()[:16]


def _raw_of(key: str, st: Store) -> str:
    """A raw base64 Ed25519 public key from a PEM file path, the base64 text itself, or the id
    of a key trusted already (to change what it is trusted for)."""
    if re.fullmatch(r"[0-9a-f]{16}", key) and not os.path.exists(key):
        known = trusted_keys(store=st).get(key)
        if known is None:
            raise UserError(f"{key!r} is not a trusted key id: give the publisher's public key (a PEM file or base64)")
        return str(known["public_key"])
    if os.path.exists(key):
        return _raw_public(load_public_key(key))
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise UserError(f"{key!r} is neither a PEM key file nor a base64 Ed25519 public key (32 bytes)")
    return key


def _scope(tools: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """The tool names a key may vouch for, checked and sorted; ``None`` is any name. A string is
    a comma-separated list (``"shout,yell"``, as ``--tools`` takes it)."""
    if tools is None:
        return None
    items = tools.split(",") if isinstance(tools, str) else list(tools)
    if all(isinstance(item, str) and not item.strip() for item in items):
        raise UserError("--tools names no tool: give the tool names the key may vouch for (--tools shout,yell)")
    names = set()
    for item in items:
        if not isinstance(item, str) or not NAME.match(item.strip()):
            raise UserError(
                f"{item!r} is not a tool name (a letter, then letters, digits, '_' or '-', at most 64): "
                f"--tools takes the tool names the key may vouch for, comma-separated"
            )
        names.add(item.strip())
    return tuple(sorted(names))


def trust(
    key: str,
    *,
    name: str = "",
    tools: str | Iterable[str] | None = None,
    store: Store | None = None,
    by: str | None = None,
    via: str = "local",
) -> str:
    """Pin a publisher key (a PEM file, base64, or the id of a key trusted already); returns its
    key id. ``tools`` are the tool names it may vouch for (exactly; ``None``, the default, is any
    name, as before scopes existed). Trusting a key again replaces its name and tools. Recorded on
    the system chain."""
    if via == "local" and settings().require_auth:
        from ..auth import access

        access().require_local("tools:write")
    scope = _scope(tools)
    st = store or get_store()
    raw = _raw_of(key, st)
    kid = key_id(raw)
    if not name and kid == key:  # re-scoping a trusted key by its id keeps the name it was given
        name = trusted_keys(store=st)[kid]["name"]
    who = by or settings().principal
    from ..store import now_iso

    at = now_iso()
    stored = None if scope is None else ",".join(scope)

    def op(cur: Any) -> None:
        st.execute(cur, "DELETE FROM tool_trust WHERE key_id = ?", (kid,))
        st.execute(cur, "INSERT INTO tool_trust (key_id, public_key, name, trusted_by, trusted_at, tools) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (kid, raw, name, who, at, stored))  # fmt: skip

    st.append_system([NewEvent("tool.key_trusted", {"key_id": kid, "public_key": raw, "name": name,
                                                     "tools": None if scope is None else list(scope), "by": who,
                                                     "via": via})], ops=[op])  # fmt: skip
    return kid


def untrust(kid: str, *, store: Store | None = None, by: str | None = None, via: str = "local") -> bool:
    """Stop trusting a key id; returns whether it was trusted."""
    if via == "local" and settings().require_auth:
        from ..auth import access

        access().require_local("tools:write")
    if not isinstance(kid, str) or not re.fullmatch(r"[0-9a-f]{16}", kid):
        raise UserError(f"{kid!r} is not a key id (16 hex digits, as `wflo tools trusted` shows)")
    st = store or get_store()
    existed = kid in trusted_keys(store=st)

    def op(cur: Any) -> None:
        st.execute(cur, "DELETE FROM tool_trust WHERE key_id = ?", (kid,))

    st.append_system([NewEvent("tool.key_untrusted", {"key_id": kid, "existed": existed,
                                                       "by": by or settings().principal, "via": via})], ops=[op])  # fmt: skip
    return existed


def trusted_keys(*, store: Store | None = None) -> dict[str, dict[str, Any]]:
    """``key_id -> {public_key, name, trusted_by, trusted_at, tools}``; ``tools`` is the list of
    tool names the key may vouch for, or ``None``: any name."""
    st = store or get_store()
    rows = st.read("SELECT key_id, public_key, name, trusted_by, trusted_at, tools FROM tool_trust ORDER BY key_id", [])
    out: dict[str, dict[str, Any]] = {}
    for kid, public_key, name, trusted_by, trusted_at, tools in rows:
        scope = None if tools is None else tools.split(",")
        out[kid] = {"public_key": public_key, "name": name, "trusted_by": trusted_by, "trusted_at": trusted_at,
                    "tools": scope}  # fmt: skip
    return out


def _not_for(kid: str, tool: str, scope: list[str]) -> str:
    """Why a key trusted for ``scope`` does not vouch for ``tool``, and the command that would."""
    return (f"it is signed by key {kid}, which is trusted only for {', '.join(scope)}, not for {tool!r} "
            f"(wflo tools trust {kid} --tools {','.join(sorted({*scope, tool}))} if its publisher "
            f"may provide {tool!r})")  # fmt: skip


def check_signature(pkg: ToolPackage) -> tuple[str | None, str]:
    """``(key_id or None, problem)``; an empty problem means the files are exactly what was signed."""
    ed25519 = _crypto()  # without cryptography: the line naming the extra
    sig = pkg.directory / SIG_FILE
    if not sig.is_file():
        return None, "the package is not signed (no wflo_tools.sig)"
    try:
        doc = json.loads(sig.read_text())
        public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"], validate=True))
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{sig} is not a valid signature file"
    kid = key_id(doc["public_key"])
    if doc.get("kind") != "wflo-tool-package" or not record_signed_by(doc, public):
        return kid, "the signature does not verify (the signature file was altered)"
    signed: dict[str, str] = doc.get("files") or {}
    now = file_digests(pkg.directory)
    for rel in sorted(set(signed) | set(now)):
        if rel not in now:
            return kid, f"{rel} was signed but is missing"
        if rel not in signed:
            return kid, f"{rel} was added after signing"
        if signed[rel] != now[rel]:
            return kid, f"{rel} was altered after signing"
    return kid, ""


def signature_status(pkg: ToolPackage) -> str:
    """One line for ``wflo tools show``: unsigned, altered, or signed by a (trusted?) key."""
    try:
        kid, problem = check_signature(pkg)
    except ConfigurationError:  # no cryptography (tests/test_extras.py)
        return "unknown (pip install 'wflo[audit]')"
    if problem:
        return problem
    try:
        known = trusted_keys().get(kid or "")
    except Exception:  # no store configured or reachable: say so rather than fail a listing
        return f"signed by {kid} (trust not checked: no store)"
    if known is None:
        return f"signed by {kid} (not trusted: wflo tools trust KEY --tools {pkg.manifest.name})"
    scope = known["tools"]
    if scope is None:
        return f"signed by {kid} (trusted for any tool)"
    if pkg.manifest.name not in scope:
        wider = ",".join(sorted({*scope, pkg.manifest.name}))
        return f"signed by {kid} (trusted only for {', '.join(scope)}: wflo tools trust {kid} --tools {wider})"
    return f"signed by {kid} (trusted for {', '.join(scope)})"


def verify_package(pkg: ToolPackage, *, store: Store | None = None) -> str:
    """Raise ``UntrustedTool`` unless ``pkg`` is signed by a trusted key and unaltered; returns the key id."""
    kid, problem = check_signature(pkg)
    name = pkg.manifest.name
    if problem:
        raise UntrustedTool(tool=name, reason=f"{problem}; require_signed_tools refuses it")
    assert kid is not None
    known = trusted_keys(store=store).get(kid)
    if known is None:
        raise UntrustedTool(tool=name, reason=f"it is signed by key {kid}, which is not trusted "
                            f"(wflo tools trust PUBLIC_KEY --tools {name} if you trust its publisher)")  # fmt: skip
    # Grants name tools: a key vouches only for the names it was trusted for (None: any name).
    if known["tools"] is not None and name not in known["tools"]:
        raise UntrustedTool(tool=name, reason=_not_for(kid, name, known["tools"]))
    return kid
