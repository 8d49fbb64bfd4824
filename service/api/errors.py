"""One error shape for every 4xx/5xx: {"detail": human message, "code": machine-readable word}.

The one place where domain errors (``service.errors``) become HTTP statuses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import Conflict, DomainError, Forbidden, Gone, Invalid, NotFound, TooLarge

log = logging.getLogger(__name__)

STATUS: dict[type[DomainError], int] = {
    Invalid: 422,
    NotFound: 404,
    Conflict: 409,
    Forbidden: 403,
    TooLarge: 413,
    Gone: 410,
}


def status_of(exc: DomainError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 400


def error_body(code: str, detail: str, **fields: Any) -> dict[str, Any]:
    return {"detail": detail, "code": code, **fields}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain_error(_request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.detail, **exc.fields), status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(error_body("invalid_request", summary or "invalid request", errors=errors),
                            status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error",
                                       "internal error; nothing was half-written, the request can be retried"),
                            # Connection: close, because the server drops the connection after a 500.
                            status_code=500, headers={"Connection": "close"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body("http_error", exc.detail), status_code=exc.status_code)
