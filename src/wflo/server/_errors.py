"""One shape for every error the API answers: ``{"error": {"code", "message", …}}``.

wflo's own errors (``WfloError``) already answer that way (``_app.py``), with their domain
fields next to ``code`` and ``message``. The HTTP layer's refusals (401, 403, 404, 409, 422,
429 …) and request validation errors get the same ``error`` object here, and keep FastAPI's
``detail`` beside it, so clients written against either shape keep working.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 412: "precondition_failed", 413: "too_large", 422: "invalid_request", 428: "precondition_required",
    429: "rate_limited", 500: "internal_error", 503: "unavailable",
}  # fmt: skip
"""The ``error.code`` of each HTTP status (wflo's own errors carry their own code)."""


def code_of(status: int) -> str:
    return CODES.get(status, "client_error" if status < 500 else "server_error")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    body: dict[str, Any] = {"detail": exc.detail, "error": {"code": code_of(exc.status_code), "message": message}}
    return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    body = {"detail": detail, "error": {"code": "invalid_request", "message": "; ".join(problems) or "invalid request"}}
    return JSONResponse(body, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
