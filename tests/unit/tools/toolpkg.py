"""Build a tool package on disk (code, manifest, dist-info with entry points) for tests: what
pip would leave in site-packages, without pip, so tests stay fast and the shared venv clean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def make_package(
    site: Path,
    package: str,
    code: str,
    tools: list[dict[str, Any]],
    *,
    publisher: str = "Test Publisher",
    module: str = "impl",
    version: str = "1.0",
) -> Path:
    """Write ``site/<package>/`` and its dist-info; each tool's entry is ``<package>.<module>:<name>``."""
    pkg = site / package
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / f"{module}.py").write_text(code)
    (pkg / "wflo_tools.json").write_text(json.dumps({"publisher": publisher, "tools": tools}, indent=1))
    dist = site / f"{package}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: {version}\n")
    lines = "\n".join(f"{t['name']} = {package}.{module}:{t['name']}" for t in tools)
    (dist / "entry_points.txt").write_text(f"[wflo.tools]\n{lines}\n")
    (dist / "top_level.txt").write_text(package + "\n")
    return pkg


def make_keys(tmp_path: Path, *names: str) -> list[Path]:
    """``NAME.pem`` (private) and ``NAME.pub`` (public) per name; returns the private ones."""
    from wflo.audit import generate_key

    out = []
    for name in names:
        (tmp_path / f"{name}.pub").write_text(generate_key(tmp_path / f"{name}.pem"))
        out.append(tmp_path / f"{name}.pem")
    return out
