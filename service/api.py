"""Declared operations: one decorator validates the request body and documents the route."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, jsonify, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from service.bearer import authenticate_request
from service.errors import InvalidJson, InvalidRequest, UnsupportedMediaType
from service.limits import EXEMPT_ROUTES
from service.schemas import ProblemDetails

_ERROR_TITLES = {
    400: "Invalid request body or field", 401: "Missing, invalid or revoked credentials",
    403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Request body too large",
    415: "Content-Type is not application/json", 429: "Rate limit exceeded; retry after Retry-After",
    503: "A dependency is unavailable; retry after Retry-After",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    request: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    bearer: bool = False
    tags: tuple[str, ...] = ()


def operation(summary: str, *, request_model: type[BaseModel] | None = None,
              responses: dict[int, type[BaseModel] | None], errors: tuple[int, ...] = (),
              bearer: bool = False, tags: tuple[str, ...] = ()) -> Callable:
    """Declare a route's body, responses and authentication.

    With bearer=True the access token is checked first (401 before any body error),
    and its claims are in g.claims. The validated body arrives as the `body` argument.
    """
    extra_errors = ((400, 413, 415) if request_model else ()) + ((401,) if bearer else ()) + (503,)
    spec = Operation(summary, request_model, responses, tuple(sorted(set(errors + extra_errors))), bearer, tags)

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if bearer:
                g.claims = authenticate_request()
            if request_model is not None:
                kwargs["body"] = parse_body(request_model)
            return view(*args, **kwargs)

        wrapper.openapi_operation = spec  # type: ignore[attr-defined]
        return wrapper

    return decorator


def parse_body(model: type[BaseModel]) -> Any:
    """Validate the JSON body against a model; raise a Problem naming the failing field."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the body as application/json.")

    raw = request.get_data(cache=False)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _problem_for(exc) from None


def _problem_for(exc: ValidationError) -> InvalidRequest | InvalidJson:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if errors[0]["type"] == "json_invalid":
        return InvalidJson("The body is not valid JSON.")

    field_errors = []
    for error in errors:
        location = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "model_type" or not location:
            message = "the body must be a JSON object"
        else:
            message = error["msg"].removeprefix("Value error, ")
        field_errors.append({"field": location or "body", "message": message})

    first = field_errors[0]
    return InvalidRequest(f"{first['field']}: {first['message']}", field=first["field"], errors=field_errors)


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialize a response model."""
    response = jsonify(model.model_dump(mode="json"))
    response.status_code = status
    if headers:
        response.headers.update(headers)
    return response


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
        paths.setdefault(path, {})[method] = _operation_object(spec, rate_limited=path not in EXEMPT_ROUTES)

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


def _operation_object(spec: Operation, *, rate_limited: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in spec.responses.items():
        entry: dict[str, Any] = {"description": spec.summary}
        if model is not None:
            entry["content"] = {"application/json": {"schema": _ref(model)}}
        responses[str(status)] = entry
    for status in spec.errors + ((429,) if rate_limited else ()):
        if status in spec.responses:
            continue
        responses[str(status)] = {
            "description": _ERROR_TITLES.get(status, "Error"),
            "content": {"application/problem+json": {"schema": _ref(ProblemDetails)}},
        }

    result: dict[str, Any] = {"summary": spec.summary, "tags": list(spec.tags), "responses": responses}
    if spec.request is not None:
        result["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": _ref(spec.request)}}}
    if spec.bearer:
        result["security"] = [{"bearerAuth": []}]
    return result
