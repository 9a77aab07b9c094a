"""Tool packages: Python distributions that declare tools through the ``wflo.tools`` entry points.

A package ``acme-tools`` ships a top-level package directory holding its code and
``wflo_tools.json`` (``{"publisher": ..., "tools": [manifest, ...]}``), and declares each tool::

    [project.entry-points."wflo.tools"]
    csv_stats = "acme_tools.csvstat:stats"

Discovery reads only metadata and that JSON file: the tool's code is never imported on the
host, only inside its sandbox (``_runner.py``). ``wflo tools install|remove`` wrap pip for the
current interpreter.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .._config import settings
from .._errors import UserError
from ..sandbox import Egress
from ._errors import ToolRefused
from ._manifest import Manifest
from ._runner import ToolBackend, run_packaged
from ._tool import Tool

GROUP = "wflo.tools"
MANIFEST_FILE = "wflo_tools.json"


@dataclass(frozen=True)
class ToolPackage:
    """One installed tool: its manifest and where its package lives."""

    manifest: Manifest
    distribution: str
    dist_version: str
    package: str
    """The top-level import package (bound at ``/opt/wflo-tool/<package>``)."""
    directory: Path

    def to_dict(self) -> dict[str, Any]:
        from ._signing import signature_status

        return {**self.manifest.to_dict(), "distribution": self.distribution, "distribution_version": self.dist_version,
                "directory": str(self.directory), "signature": signature_status(self)}  # fmt: skip


def _package_dir(dist: metadata.Distribution | None, top: str) -> Path | None:
    if dist is not None:
        candidate = Path(str(dist.locate_file(top)))
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    for entry in sys.path:  # an editable install, or a package found only on sys.path
        candidate = Path(entry or ".") / top
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=64)
def _read_manifests(path: str, mtime: float) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON manifest file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tools"), list):
        raise UserError(f'{path}: expected {{"publisher": ..., "tools": [...]}}')
    return doc


def installed() -> list[ToolPackage]:
    """Every tool declared by an installed distribution, by name then distribution (a broken
    package is reported, not skipped silently: its manifest error is raised). A name two
    distributions declare is listed once for each: ``find``/``load`` refuse it."""
    found: dict[tuple[str, str, str, str], ToolPackage] = {}
    # Each distribution on sys.path, not metadata.entry_points(), which keeps only the first
    # of a name: a second copy in another directory would shadow the installed one quietly.
    eps = [ep for d in metadata.distributions() for ep in d.entry_points.select(group=GROUP)]
    for ep in eps:
        module = ep.value.split(":", 1)[0].strip()
        top = module.split(".", 1)[0]
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else top
        directory = _package_dir(dist, top)
        key = (ep.name, dist_name, ep.value.strip(), str(directory.resolve()) if directory else "")
        if key in found:  # one directory twice on sys.path
            continue
        if directory is None:
            raise UserError(
                f"tool {ep.name!r} of {dist_name}: its package has no {MANIFEST_FILE} next to {top}/__init__.py"
            )
        mpath = directory / MANIFEST_FILE
        doc = _read_manifests(str(mpath), mpath.stat().st_mtime)
        entries = [t for t in doc["tools"] if isinstance(t, dict) and t.get("name") == ep.name]
        if not entries:
            raise UserError(f"{mpath}: no manifest for the tool {ep.name!r} its entry point declares")
        data = {**entries[0], "entry": ep.value.strip()}
        data.setdefault("publisher", doc.get("publisher", ""))
        manifest = Manifest.from_dict(data, where=str(mpath))
        if manifest.enforcement != "sandbox":
            raise UserError(f"{mpath}: a packaged tool runs in the sandbox (enforcement 'sandbox')")
        found[key] = ToolPackage(manifest, dist_name, dist.version if dist is not None else "", top, directory)
    return [found[k] for k in sorted(found)]


def _clash(name: str, mine: list[ToolPackage]) -> str:
    """One line for a tool name declared by more than one entry point, naming each."""
    kinds = ("distributions", "installations", "entry points")
    dists, dirs = {p.distribution for p in mine}, {p.directory for p in mine}
    kind = kinds[0 if len(dists) == len(mine) else 1 if len(dirs) == len(mine) else 2]
    each = " and ".join(f"{p.distribution} {p.dist_version} ({p.manifest.entry} in {p.directory})" for p in mine)
    fix = ("remove the copy you do not want (pip uninstall takes the first on sys.path)" if kind == "installations"
           else "uninstall the one you do not want (wflo tools remove DISTRIBUTION)")  # fmt: skip
    return (
        f"the tool {name!r} is declared by {len(mine)} {kind}: {each}; grants name tools, so either would get the "
        f"other's grants and wflo loads neither: {fix}"
    )


def builtin_names() -> frozenset[str]:
    """The names of the built-in tools (as their factories name them by default)."""
    from . import _FACTORIES

    return frozenset(_FACTORIES)


def name_owners(names: Sequence[str]) -> dict[str, str]:
    """Of ``names``, those a built-in or a declared packaged tool already has (grants name tools,
    so a second tool of that name would get its grants), each with that tool described for an
    error. The entry points are read once, their names only: a broken package still holds its
    name."""
    wanted = set(names)
    owners = {n: f"the built-in tool {n!r}" for n in wanted & builtin_names()}
    for ep in metadata.entry_points(group=GROUP):
        if ep.name in wanted and ep.name not in owners:
            dist = getattr(ep, "dist", None)
            where = dist.metadata["Name"] if dist is not None else ep.value.split(":", 1)[0].strip()
            owners[ep.name] = f"the packaged tool {ep.name!r} of {where}"
    return owners


def find(name: str) -> ToolPackage:
    """The installed tool ``name``; ``UserError`` naming the installed ones otherwise, or naming
    the distributions when more than one declares it."""
    packages = installed()
    mine = [p for p in packages if p.manifest.name == name]
    if len(mine) > 1:
        raise UserError(_clash(name, mine))
    if mine:
        return mine[0]
    from . import catalog

    builtin = {e["name"] for e in catalog()}
    if name in builtin:
        raise UserError(f"{name!r} is a built-in tool (build it with its factory, see wflo tools show {name})")
    names = ", ".join(sorted({p.manifest.name for p in packages})) or "none"
    raise UserError(f"no installed tool named {name!r} (installed: {names}; wflo tools install PACKAGE)")


class PackagedTool(Tool[..., Any]):
    """A tool from a package, run in the sandbox with exactly its manifest's capabilities."""

    def __init__(self, pkg: ToolPackage, *, _egress: Egress | None = None) -> None:
        self.package = pkg
        m = pkg.manifest
        caps = m.capabilities
        self._backend = ToolBackend(pkg.directory, pkg.package, caps.read, caps.write)
        self._egress = _egress if _egress is not None else Egress.parse(list(caps.network))

        def call(**kwargs: Any) -> Any:
            return self._execute({}, kwargs)

        call.__name__ = m.name
        super().__init__(call, name=m.name, description=m.description or m.name, risk=_risk(m),
                         effects=m.effects, capabilities=caps)  # fmt: skip
        self.packaged = True

    def parameters(self) -> dict[str, Any]:
        return self.package.manifest.input_schema

    @property
    def spec(self) -> Manifest:
        return self.package.manifest

    def _target(self, call: Any) -> Callable[..., Any]:
        return lambda *args, **kwargs: self._execute(call.event, kwargs, args)

    def _execute(self, event: dict[str, Any], kwargs: dict[str, Any], args: tuple[Any, ...] = ()) -> Any:
        if args:
            raise ToolRefused(tool=self.name, reason="a packaged tool takes keyword arguments only")
        _validate(self.package.manifest, kwargs)
        return run_packaged(self.package.manifest, self._backend, kwargs, egress=self._egress, event=event)


def _risk(m: Manifest) -> str:
    if m.effects.destructive or m.capabilities.subprocess:
        return "high"
    if m.effects.read_only and not m.effects.open_world:
        return "low"
    return "medium"


def _validate(m: Manifest, kwargs: dict[str, Any]) -> None:
    try:
        from jsonschema import Draft202012Validator
    except ImportError:  # pragma: no cover - jsonschema is in the dev and mcp extras
        return
    errors = sorted(Draft202012Validator(m.input_schema).iter_errors(kwargs), key=lambda e: list(e.path))
    if errors:
        where = ".".join(str(p) for p in errors[0].path) or "arguments"
        raise ToolRefused(tool=m.name, reason=f"{where}: {errors[0].message}")


def load(name: str) -> PackagedTool:
    """The installed tool ``name``, ready to give to an agent (checked against its signature
    first when ``require_signed_tools`` is set)."""
    pkg = find(name)
    if name in builtin_names():  # a grant of the built-in would be this tool's too
        raise UserError(
            f"{pkg.distribution} declares a tool named {name!r}, a built-in tool's name: grants name tools, so it would "
            f"get the built-in's grants; wflo does not load it (its publisher must rename it)"
        )
    if settings().require_signed_tools:
        from ._signing import verify_package

        verify_package(pkg)
    return PackagedTool(pkg)
