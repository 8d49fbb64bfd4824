"""The OpenAPI document tells the truth about errors: every 4xx/5xx body is {"detail": str, "code": str, ...}.

FastAPI documents its own 422 shape (``detail`` as a list); the service answers with its one error
shape instead (service/errors.py), so the published schema is corrected here, and every operation
documents that shape for its 4xx answers (clients and the schemathesis fuzzing test check against it).
"""

from __future__ import annotations

from fastapi import FastAPI

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail", "code"],
    "properties": {
        "detail": {"type": "string", "description": "What was wrong, for a person"},
        "code": {"type": "string", "description": "A stable machine-readable word"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "Per-field problems (422)"},
    },
    "additionalProperties": True,
}


def install_error_schema(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["HTTPValidationError"] = ERROR_SCHEMA
        schemas.pop("ValidationError", None)
        error = {"description": "Error", "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/HTTPValidationError"}}}}
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                operation.setdefault("responses", {}).setdefault("4XX", error)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
