"""The OpenAPI document describes every route and every field, so a new route or field must document itself."""

from __future__ import annotations


def undocumented(spec: dict) -> list[str]:
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for key in ("summary", "description"):
                if not operation.get(key, "").strip():
                    missing.append(f"{method.upper()} {path}: no {key}")
            for parameter in operation.get("parameters", []):
                if not (parameter.get("description") or parameter.get("schema", {}).get("description")):
                    missing.append(f"{method.upper()} {path}: parameter {parameter['name']} has no description")
    for name, schema in spec["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if not prop.get("description", "").strip():
                missing.append(f"schema {name}: field {field} has no description")
    return missing


def test_every_route_parameter_and_field_is_described(client):
    spec = client.get("/openapi.json").json()
    assert len(spec["paths"]) >= 15  # paths, each with one or more operations
    assert undocumented(spec) == []


def test_the_walk_finds_what_is_missing():
    spec = {"paths": {"/x": {"get": {"summary": "X", "description": " "}}},
            "components": {"schemas": {"S": {"properties": {"a": {"type": "int"}, "b": {"description": "B"}}}}}}
    assert undocumented(spec) == ["GET /x: no description", "schema S: field a has no description"]
