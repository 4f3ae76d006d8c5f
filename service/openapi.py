"""The OpenAPI 3.1 document at /openapi.json, built from the declared operations of every route."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api import CONVERTERS, Operation
from service.limits import EXEMPT_ROUTES
from service.schemas import ProblemDetails

_ERROR_TITLES = {
    400: "Invalid request body or field", 401: "Missing, invalid or revoked credentials",
    403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Request body too large",
    415: "Content-Type is not application/json", 422: "Valid request that the current state does not allow",
    429: "Rate limit exceeded; retry after Retry-After",
    503: "A dependency is unavailable; retry after Retry-After",
}


def openapi_document(app: Flask, *, version: str) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document from the declared operations of every route."""
    operations: list[tuple[str, str, Operation]] = []
    models: set[type[BaseModel]] = {ProblemDetails}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        spec = getattr(app.view_functions.get(rule.endpoint), "openapi_operation", None)
        if spec is None:
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operations.append((path, method.lower(), spec))
        if spec.request:
            models.add(spec.request)
        models.update(model for model in spec.responses.values() if model)

    ordered = sorted(models, key=lambda model: model.__name__)
    _, top = models_json_schema([(model, "validation") for model in ordered],
                                ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for path, method, spec in operations:
        parameters = re.findall(r"{(?:([^}:]+):)?([^}]+)}", path)
        paths.setdefault(re.sub(r"{(?:[^}:]+:)?([^}]+)}", r"{\1}", path), {})[method] = _operation_object(
            spec, parameters, rate_limited=path not in EXEMPT_ROUTES)

    return {
        "openapi": "3.1.0",
        "info": {"title": "Gatehouse", "version": version,
                 "description": "Registration, login, JWT access tokens and rotating refresh tokens."},
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _path_parameter(converter: str, name: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    pattern = getattr(CONVERTERS.get(converter), "pattern", None)
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _operation_object(spec: Operation, path_parameters: list[tuple[str, str]], *, rate_limited: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in spec.responses.items():
        entry: dict[str, Any] = {"description": spec.summary}
        if model is not None:
            entry["content"] = {"application/json": {"schema": _ref(model)}}
        responses[str(status)] = entry
    # A path parameter sent with an encoded slash, backslash or unreserved character gets 400 encoded_path_*.
    path_errors = (400,) if path_parameters else ()
    for status in spec.errors + path_errors + ((429,) if rate_limited else ()):
        if status in spec.responses:
            continue
        responses[str(status)] = {
            "description": _ERROR_TITLES.get(status, "Error"),
            "content": {"application/problem+json": {"schema": _ref(ProblemDetails)}},
        }

    result: dict[str, Any] = {"summary": spec.summary, "tags": list(spec.tags), "responses": responses}
    parameters = [_path_parameter(converter, name) for converter, name in path_parameters]
    if spec.query is not None:
        schema = spec.query.model_json_schema()
        for name, prop in schema.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in schema.get("required", []),
                               "schema": prop})
    if parameters:
        result["parameters"] = parameters
    descriptions = [spec.description] if spec.description else []
    if spec.roles:
        descriptions.append("Requires the role(s): " + ", ".join(spec.roles) + ".")
    if descriptions:
        result["description"] = " ".join(descriptions)
    if spec.request is not None:
        result["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": _ref(spec.request)}}}
    if spec.bearer:
        result["security"] = [{"bearerAuth": []}]
    return result
