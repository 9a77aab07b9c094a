"""Tools: the catalog (built-ins and installed packages), their manifests, and their grants."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel

from ._panel import page_route
from ._routes import Router, tenant_query, who_of


class ToolGrantBody(BaseModel):
    tool: str
    to: str
    approval: str | None = None
    max_calls: int | None = None
    budget_usd: str | None = None


class ToolRevokeBody(BaseModel):
    tool: str
    to: str


def _catalog() -> list[dict[str, Any]]:
    from ..tools import catalog

    return catalog(packages=True)


def register(router: Router) -> None:
    store = router.access.store

    # The catalog is the deployment's, not a tenant's: a reader scoped to a tenant sees it with
    # ?tenant=NAME. Grants are deployment-wide: reading and changing them needs a global grant.
    @router.route("GET", "/api/v1/tools", permission="tools:read", scope=tenant_query)
    def list_tools(request: Request, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every tool: built-ins and installed packages, each with its manifest."""
        return _catalog()

    @router.route("GET", "/api/v1/tools/grants", permission="tools:read")
    def list_tool_grants(request: Request, tool: str | None = None) -> list[dict[str, Any]]:
        from ..tools import grants

        return [g.to_dict() for g in grants(tool, store=store)]

    @router.route("POST", "/api/v1/tools/grants", permission="tools:write", status_code=201)
    def create_tool_grant(request: Request, body: ToolGrantBody) -> dict[str, Any]:
        from ..tools import grant

        who = who_of(request)
        g = grant(body.tool, body.to, approval=body.approval, max_calls=body.max_calls, budget_usd=body.budget_usd,
                  store=store, by=who.id, via=who.via)  # fmt: skip
        return g.to_dict()

    @router.route("POST", "/api/v1/tools/grants/remove", permission="tools:write")
    def remove_tool_grant(request: Request, body: ToolRevokeBody) -> dict[str, Any]:
        from ..tools import revoke

        who = who_of(request)
        return {"removed": revoke(body.tool, body.to, store=store, by=who.id, via=who.via)}

    @router.route("GET", "/api/v1/tools/{name}", permission="tools:read", scope=tenant_query)
    def show_tool(request: Request, name: str, tenant: str | None = None) -> dict[str, Any]:
        """One tool's manifest (and, for a package, its signature status)."""
        for entry in _catalog():
            if entry["name"] == name:
                return entry
        raise HTTPException(404, f"no tool named {name!r}")

    page_route(router, "/tools", "Tools", script="tools.js",
               body="<div id='tools'></div><h2>Grants</h2><div id='tool-grants'></div>")  # fmt: skip
