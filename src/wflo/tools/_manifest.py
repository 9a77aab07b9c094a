"""A tool's manifest: what it is, what it does to the world, and what it may reach.

A manifest is data (JSON in a package, a dict in code), checked once when it is read; every
mistake is a ``UserError`` naming the field. The capabilities are not hints: a packaged tool
runs in the sandbox with exactly them (``_runner.py``), and an in-process tool (``sql_query``,
``http_get``, ``files``) enforces its own and declares them here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .._errors import UserError
from ..guards import parse_duration
from ..sandbox import parse_size

NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")
EFFECTS = ("read_only", "destructive", "idempotent", "open_world")
_HOSTPORT = re.compile(r"^(\*\.)?[a-zA-Z0-9.-]+:\d{1,5}$")
_SECRET = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class Effects:
    """What a call does to the world (the MCP annotations, but checked: a grant and the
    approval default follow them)."""

    read_only: bool = False
    """Changes nothing anywhere."""
    destructive: bool = False
    """May delete or overwrite what it did not create: needs approval unless its grant says otherwise."""
    idempotent: bool = False
    """Calling twice with the same arguments has the effect of calling once."""
    open_world: bool = False
    """Reaches beyond the host (the internet, other people's systems)."""


@dataclass(frozen=True, kw_only=True)
class ToolLimits:
    """Sandbox limits a packaged tool (or a sandboxed MCP server) runs under. Sizes take
    bytes or ``"256MiB"``, ``wall`` seconds or ``"30s"``; a bad value is a ``UserError``."""

    cpu_seconds: int = 5
    memory: int = 256 << 20
    wall: float = 10.0
    output: int = 1 << 20

    def __post_init__(self) -> None:
        cpu = self.cpu_seconds
        if not isinstance(cpu, int) or isinstance(cpu, bool) or not 1 <= cpu <= 3600:
            raise UserError(f"ToolLimits.cpu_seconds must be an integer from 1 to 3600, got {cpu!r}")
        object.__setattr__(self, "memory", parse_size(self.memory, "ToolLimits.memory"))
        object.__setattr__(self, "wall", parse_duration(self.wall, "ToolLimits.wall"))
        object.__setattr__(self, "output", parse_size(self.output, "ToolLimits.output"))


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What the tool may reach; a packaged tool gets exactly this and nothing else."""

    network: tuple[str, ...] = ()
    """``host:port`` entries (``*.example.com:443`` for subdomains) reached through the egress proxy."""
    read: tuple[str, ...] = ()
    """Host paths bound read-only (same path inside the sandbox)."""
    write: tuple[str, ...] = ()
    """Host paths bound writable."""
    secrets: tuple[str, ...] = ()
    """Names of secrets injected as environment variables (from the host's environment or
    the secrets file); never journaled."""
    subprocess: bool = False
    """Whether the tool may start programs."""
    limits: ToolLimits = field(default_factory=ToolLimits)
    cost_usd: Decimal | None = None
    """Price of one call (charged against a grant's budget)."""


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A tool's manifest (see docs/tool-authors.md for the JSON form)."""

    name: str
    version: str = "0"
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    output_schema: dict[str, Any] | None = None
    effects: Effects = field(default_factory=Effects)
    capabilities: Capabilities = field(default_factory=Capabilities)
    publisher: str = ""
    entry: str = ""
    """``module:function`` of a packaged tool (from its entry point)."""
    enforcement: str = "sandbox"
    """``sandbox`` (a packaged tool) or ``in-process`` (a built-in that checks its own input)."""

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "manifest") -> Manifest:
        """Check and build a manifest; ``UserError`` naming the field on any mistake."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: a tool manifest is a JSON object, got {type(data).__name__}")
        known = {"name", "version", "description", "input_schema", "output_schema", "effects", "capabilities",
                 "publisher", "entry", "enforcement"}  # fmt: skip
        extra = sorted(set(data) - known)
        if extra:
            raise UserError(f"{where}: unknown field(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")
        name = data.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise UserError(f"{where}: name must be letters, digits, '_' or '-' (1-64, a letter first), got {name!r}")
        where = f"{where} of {name}"
        for key in ("version", "description", "publisher", "entry"):
            if not isinstance(data.get(key, ""), str):
                raise UserError(f"{where}: {key} must be a string")
        schema = data.get("input_schema", {"type": "object", "properties": {}})
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise UserError(f"{where}: input_schema must be a JSON Schema object with type 'object'")
        out = data.get("output_schema")
        if out is not None and not isinstance(out, dict):
            raise UserError(f"{where}: output_schema must be a JSON Schema object or null")
        _check_schema(schema, f"{where}: input_schema")
        if out is not None:
            _check_schema(out, f"{where}: output_schema")
        effects = _effects(data.get("effects", {}), where)
        caps = _capabilities(data.get("capabilities", {}), where)
        enforcement = data.get("enforcement", "sandbox")
        if enforcement not in ("sandbox", "in-process"):
            raise UserError(f"{where}: enforcement must be 'sandbox' or 'in-process', got {enforcement!r}")
        return cls(
            name=name, version=data.get("version", "0"), description=data.get("description", ""),
            input_schema=schema, output_schema=out, effects=effects, capabilities=caps,
            publisher=data.get("publisher", ""), entry=data.get("entry", ""), enforcement=enforcement,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what ``wflo tools show`` prints and a package ships)."""
        c = self.capabilities
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "effects": {e: getattr(self.effects, e) for e in EFFECTS},
            "capabilities": {
                "network": list(c.network),
                "filesystem": {"read": list(c.read), "write": list(c.write)},
                "secrets": list(c.secrets),
                "subprocess": c.subprocess,
                "limits": {
                    "cpu_seconds": c.limits.cpu_seconds,
                    "memory": c.limits.memory,
                    "wall": c.limits.wall,
                    "output": c.limits.output,
                },
                "cost_usd": None if c.cost_usd is None else str(c.cost_usd),
            },
            "publisher": self.publisher,
            "entry": self.entry,
            "enforcement": self.enforcement,
        }


def _check_schema(schema: dict[str, Any], where: str) -> None:
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError
    except ImportError:  # pragma: no cover - jsonschema comes with the dev and mcp extras
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise UserError(f"{where} is not a valid JSON Schema: {exc.message}") from None


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{what} must be true or false, got {value!r}")
    return value


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{what} must be a list of strings, got {value!r}")
    return tuple(value)


def _effects(data: Any, where: str) -> Effects:
    if not isinstance(data, dict):
        raise UserError(f'{where}: effects must be an object like {{"read_only": true}}')
    extra = sorted(set(data) - set(EFFECTS))
    if extra:
        raise UserError(f"{where}: unknown effect(s) {', '.join(extra)} (known: {', '.join(EFFECTS)})")
    values = {k: _bool(v, f"{where}: effects.{k}") for k, v in data.items()}
    if values.get("read_only") and values.get("destructive"):
        raise UserError(f"{where}: a tool cannot be both read_only and destructive")
    return Effects(**values)


def _path(value: str, what: str) -> str:
    path = os.path.expanduser(value)
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise UserError(f"{what}: paths must be absolute without '..', got {value!r}")
    norm = os.path.normpath(path)
    if norm == "/" or norm.split("/")[1] in ("proc", "sys", "dev", "run", "usr", "work", "opt"):
        raise UserError(f"{what}: {value!r} cannot be granted to a tool (it would cover the sandbox's own tree)")
    return norm


def _capabilities(data: Any, where: str) -> Capabilities:
    if not isinstance(data, dict):
        raise UserError(f"{where}: capabilities must be an object")
    known = {"network", "filesystem", "secrets", "subprocess", "limits", "cost_usd"}
    extra = sorted(set(data) - known)
    if extra:
        raise UserError(f"{where}: unknown capabilit(ies) {', '.join(extra)} (known: {', '.join(sorted(known))})")
    network = _strings(data.get("network", []), f"{where}: capabilities.network")
    for entry in network:
        if not _HOSTPORT.match(entry):
            raise UserError(f"{where}: capabilities.network entries are 'host:port', got {entry!r}")
    fs = data.get("filesystem", {})
    if not isinstance(fs, dict) or set(fs) - {"read", "write"}:
        raise UserError(f'{where}: capabilities.filesystem is {{"read": [paths], "write": [paths]}}')
    read = tuple(
        _path(p, f"{where}: filesystem.read") for p in _strings(fs.get("read", []), f"{where}: filesystem.read")
    )
    write = tuple(
        _path(p, f"{where}: filesystem.write") for p in _strings(fs.get("write", []), f"{where}: filesystem.write")
    )
    secrets = _strings(data.get("secrets", []), f"{where}: capabilities.secrets")
    for name in secrets:
        if not _SECRET.match(name):
            raise UserError(f"{where}: secret names are UPPER_CASE environment names, got {name!r}")
    limits_data = data.get("limits", {})
    if not isinstance(limits_data, dict) or set(limits_data) - {"cpu_seconds", "memory", "wall", "output"}:
        raise UserError(f"{where}: capabilities.limits takes cpu_seconds, memory, wall and output")
    base = ToolLimits()
    cpu = limits_data.get("cpu_seconds", base.cpu_seconds)
    if not isinstance(cpu, int) or isinstance(cpu, bool) or not 1 <= cpu <= 3600:
        raise UserError(f"{where}: limits.cpu_seconds must be an integer from 1 to 3600, got {cpu!r}")
    limits = ToolLimits(
        cpu_seconds=cpu,
        memory=parse_size(limits_data.get("memory", base.memory), f"{where}: limits.memory"),
        wall=parse_duration(limits_data.get("wall", base.wall), f"{where}: limits.wall"),
        output=parse_size(limits_data.get("output", base.output), f"{where}: limits.output"),
    )
    cost = data.get("cost_usd")
    cost_usd = None
    if cost is not None:
        try:
            cost_usd = Decimal(str(cost))
        except InvalidOperation:
            cost_usd = Decimal(-1)
        if isinstance(cost, bool | float) or not cost_usd.is_finite() or cost_usd < 0:
            raise UserError(f"{where}: cost_usd must be a decimal string like '0.002', got {cost!r}")
    return Capabilities(
        network=network, read=read, write=write, secrets=secrets,
        subprocess=_bool(data.get("subprocess", False), f"{where}: capabilities.subprocess"), limits=limits,
        cost_usd=cost_usd,
    )  # fmt: skip


def in_process(
    name: str,
    description: str,
    input_schema: dict[str, Any],
    *,
    effects: Effects,
    network: tuple[str, ...] = (),
    read: tuple[str, ...] = (),
    write: tuple[str, ...] = (),
) -> Manifest:
    """The manifest of a built-in tool that enforces its own capabilities in this process."""
    return Manifest(
        name=name, version="builtin", description=description, input_schema=input_schema, effects=effects,
        capabilities=Capabilities(network=network, read=read, write=write), publisher="wflo", enforcement="in-process",
    )  # fmt: skip
