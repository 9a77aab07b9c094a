"""One shape for every error the API answers: ``{"error": {"code", "message", …}}``.

wflo's own errors (``WfloError``) already answer that way (``_app.py``), with their domain
fields next to ``code`` and ``message``. The HTTP layer's refusals (401, 403, 404, 409, 422,
429 …) and request validation errors get the same ``error`` object here, and keep FastAPI's
``detail`` beside it, so clients written against either shape keep working. A bug (an
exception nothing handled) answers 500 ``internal_error`` in the same shape, its traceback
left to the server's log. The OpenAPI document says so: every API operation's ``default``
answer and its 422 are the ``Error`` schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 412: "precondition_failed", 413: "too_large", 422: "invalid_request", 428: "precondition_required",
    429: "rate_limited", 500: "internal_error", 503: "unavailable",
}  # fmt: skip
"""The ``error.code`` of each HTTP status (wflo's own errors carry their own code)."""


def code_of(status: int) -> str:
    return CODES.get(status, "client_error" if status < 500 else "server_error")


def http_error_response(exc: HTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    body: dict[str, Any] = {"detail": exc.detail, "error": {"code": code_of(exc.status_code), "message": message}}
    return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    resp = http_error_response(exc)
    if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
        resp.headers["Allow"] = ", ".join(_allowed(request))
    return resp


def _allowed(request: Request) -> list[str]:
    """Every method some route serves on the request's path (a 405's ``Allow``)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    body = {"detail": detail, "error": {"code": "invalid_request", "message": "; ".join(problems) or "invalid request"}}
    return JSONResponse(body, status_code=422)


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this answer, so the server's log keeps the traceback.
    message = "internal error (the server's log has the details)"
    return JSONResponse({"error": {"code": "internal_error", "message": message}}, status_code=500)


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"], "title": "Error",
    "description": "Every error answer (docs/api.md); wflo's own errors add their domain fields to error.",
    "properties": {
        "error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": True,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"}},
        },
        "detail": {"description": "FastAPI's detail: a message, or the list of field errors of a 422"},
    },
}  # fmt: skip


def _document(doc: dict[str, Any]) -> dict[str, Any]:
    """The error answers of ``doc``'s operations: 422 and (under /api/v1) ``default`` are ``Error``."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, item in doc.get("paths", {}).items():
        for op in item.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "The request does not fit the schema", "content": error}
            if path.startswith("/api/v1/"):
                responses["default"] = {"description": 'An error: {"error": {"code", "message"}}', "content": error}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _crash)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
