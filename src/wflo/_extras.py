"""Which extra installs which optional module, and the one-line error that names it.

``pip install wflo`` holds the core (SQLite store, engine, budgets, guards, approvals, audit
verify, sandbox). Everything else comes with an extra (``pyproject.toml``), and a feature used
without its extra says which one to install instead of raising a bare ``ModuleNotFoundError``:
the features' own checks say it in their words, and the ``wflo`` command turns any import of a
module below that fails into the same one line (``missing_extra``). ``tests/test_extras.py``
keeps this table equal to the extras in ``pyproject.toml``.
"""

from __future__ import annotations

from ._errors import ConfigurationError

EXTRAS: dict[str, str] = {
    # the top-level module (what ``import`` names) -> the extra that installs it
    "psycopg": "postgres",
    "psycopg_pool": "postgres",
    "openai": "openai",
    "tiktoken": "openai",
    "anthropic": "anthropic",
    "litellm": "litellm",
    "sqlglot": "tools",
    "crewai": "crewai",
    "agents": "agents",
    "langgraph": "langgraph",
    "langchain_openai": "langgraph",
    "langchain_core": "langgraph",  # langchain-openai's, imported by LangGraph agents directly
    "pydantic_ai": "pydantic-ai",
    "cryptography": "audit",
    "fpdf": "audit",
    "fastapi": "server",
    "uvicorn": "server",
    "joserfc": "server",
    "multipart": "server",
    "python_multipart": "server",
    "mcp": "mcp",
    "mcp_types": "mcp",  # the mcp distribution's second top-level module
    "jsonschema": "mcp",
    "opentelemetry": "otel",
    "prometheus_client": "otel",
}


def missing_extra(exc: ImportError, what: str | None = None) -> ConfigurationError | None:
    """The error for ``exc`` when it is an optional module that is not installed: one line
    naming the extra (and ``what`` needed it); ``None`` for any other import failure (a broken
    install or a bug is not hidden behind advice to install something)."""
    # The package itself is missing (``name`` is its top level): a module missing inside an
    # installed package is a broken install, not a missing extra.
    extra = EXTRAS.get(exc.name or "") if isinstance(exc, ModuleNotFoundError) else None
    if extra is None:
        return None
    who = f"{what} needs" if what else "this needs"
    return ConfigurationError(f"{who} {exc.name}, which is not installed: pip install 'wflo[{extra}]'")
