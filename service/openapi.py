"""The OpenAPI 3.1 document at /openapi.json, built from the declared operations of every route."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import openapi_responses
from service.api import CONVERTERS, Operation
from service.openapi_responses import Cause
from service.problem_format import PROBLEM_MEDIA_TYPE
from service.schemas import ProblemDetails

_ERROR_TITLES = {
    400: "Invalid request", 401: "Missing, invalid or revoked credentials",
    403: "Forbidden", 404: "Not found", 408: "Request body timed out", 409: "Conflict",
    413: "Request body too large", 414: "Request line too long",
    415: "Content-Type is not application/json", 417: "Expectation failed",
    422: "Valid request that the current state does not allow", 429: "Too many requests",
    431: "Request header fields too large", 501: "Transfer coding not implemented",
    503: "A dependency is unavailable",
}
# 405 concerns a path and a method that the path does not serve, so no operation can list it: the
# document's description names it instead.
_DOCUMENT_INTRODUCTION = (
    "Registration, login, JWT access tokens and rotating refresh tokens.\n\n"
    "Errors are `application/problem+json` documents with a stable `code`. Each response of an operation "
    "names the codes that the checks of every request and the operation's declaration can send with its "
    "status. The operation's description names codes of its own where it has any. A method that a path "
    "does not list gets 405 `method_not_allowed` with an `Allow` header, unless an earlier check answers "
    "first (403 `ip_banned`, 429 `rate_limited`).\n\n"
    "The codes that the responses name:\n\n"
)


def _document_description() -> str:
    """Return the introduction and a Markdown table of every code that the responses name."""
    conditions: dict[tuple[int, str], list[str]] = {}
    for cause in openapi_responses.ALL_CAUSES:
        conditions.setdefault((cause.status, cause.code), []).append(cause.condition)
    rows = [f"| {status} | `{code}` | {', or '.join(texts)} |" for (status, code), texts in sorted(conditions.items())]
    return _DOCUMENT_INTRODUCTION + "| status | code | when |\n|---|---|---|\n" + "\n".join(rows)


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
            spec, path, method, parameters)

    return {
        "openapi": "3.1.0",
        "info": {"title": "Gatehouse", "version": version, "description": _document_description()},
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "headers": openapi_responses.HEADER_COMPONENTS,
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


def _operation_object(spec: Operation, path: str, method: str,
                      path_parameters: list[tuple[str, str]]) -> dict[str, Any]:
    causes = openapi_responses.causes_for(spec, path, method.upper())
    rate_limited = openapi_responses.is_rate_limited(path)
    statuses = sorted(set(spec.responses) | set(spec.errors) | {cause.status for cause in causes})
    responses = {str(status): _response_object(spec, status, [cause for cause in causes if cause.status == status],
                                               rate_limited=rate_limited)
                 for status in statuses}

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


def _response_object(spec: Operation, status: int, causes: list[Cause], *, rate_limited: bool) -> dict[str, Any]:
    """Describe one status of an operation: the route's own response or error and the pipeline's problems."""
    declared = status in spec.responses or status in spec.errors
    entry: dict[str, Any] = {"description": _response_description(spec, status, causes)}
    headers = openapi_responses.response_headers(status, causes, declared=declared, rate_limited=rate_limited)
    if status in spec.responses:
        headers.update(openapi_responses.caching_headers(spec.caching))
    elif causes or status in spec.errors:
        # Every problem document, the app's and gunicorn's, is sent with no-store.
        headers.update(openapi_responses.caching_headers(("no-store",)))
    if headers:
        entry["headers"] = headers
    content: dict[str, Any] = {}
    model = spec.responses.get(status)
    if model is not None:
        content["application/json"] = {"schema": _ref(model)}
    if causes or status in spec.errors:
        content[PROBLEM_MEDIA_TYPE] = {"schema": _ref(ProblemDetails)}
    if content:
        entry["content"] = content
    return entry


def _response_description(spec: Operation, status: int, causes: list[Cause]) -> str:
    """Return the summary or error title of a status, and the pipeline's codes for it."""
    if status in spec.responses:
        title = spec.summary
    else:
        title = _ERROR_TITLES.get(status, HTTPStatus(status).phrase)
        if status in spec.codes:
            title += ": " + ", ".join(f"`{code}`" for code in spec.codes[status])
    if not causes:
        return title

    # dict.fromkeys: a code that two layers send, such as unsupported_transfer_encoding, is named once.
    codes = ", ".join(f"`{code}`" for code in dict.fromkeys(cause.code for cause in causes))
    intro = "Codes besides the operation's own" if status in spec.errors or status in spec.responses else "Codes"
    return f"{title}. {intro}: {codes}."
