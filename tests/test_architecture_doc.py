"""docs/architecture.md names modules and tests; each one must exist, so the map stays true."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"


def _named() -> tuple[set[str], set[str]]:
    text = PAGE.read_text()
    dotted = set(re.findall(r"\bwflo(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    paths = set(re.findall(r"\btests/[\w/]+(?:\.py)?", text))
    return dotted, paths


def _resolves(name: str) -> bool:
    """``wflo.a._b`` is a module; ``wflo.ext.Call`` is a name in one; both count."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:  # a name under a module that is not a package
            continue
        obj = importlib.import_module(module)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_module_and_name_on_the_page_exists() -> None:
    dotted, _ = _named()
    assert len(dotted) > 30  # the page is a map: it names the modules
    missing = sorted(name for name in dotted if not _resolves(name))
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_every_test_path_on_the_page_exists() -> None:
    _, paths = _named()
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names tests that do not exist: {missing}"


def test_every_package_is_on_the_map() -> None:
    text = PAGE.read_text()
    packages = sorted(p.name for p in (ROOT / "src" / "wflo").iterdir() if (p / "__init__.py").exists())
    absent = [
        p for p in packages if f"wflo.{p}" not in text and p not in {"demo", "testing", "compliance", "observability"}
    ]
    assert not absent, f"docs/architecture.md does not place: {absent}"


def test_the_check_bites() -> None:
    assert _resolves("wflo.engine._boundary") and _resolves("wflo.ext.guarded_call")
    assert not _resolves("wflo.engine._nowhere") and not _resolves("wflo.ext.no_such_name")
