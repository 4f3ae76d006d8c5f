"""Declared operations: one decorator validates the request body and documents the route."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, make_response, request
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import from_json
from werkzeug.routing import BaseConverter

from service.bearer import authenticate_request, require_roles
from service.errors import InvalidJson, InvalidRequest, Problem, UnsupportedContentEncoding, UnsupportedMediaType

_MAX_FIELD_ERRORS = 10
_MAX_FIELD_NAME = 64


@dataclass(frozen=True)
class Operation:
    summary: str
    request: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    bearer: bool = False
    roles: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    query: type[BaseModel] | None = None
    description: str | None = None
    uses_dependencies: bool = True
    # The codes of the route's own problems by status, where the declaration names their classes.
    codes: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # Caching headers of the route's own responses, as names of service.openapi_responses.CACHING_HEADERS.
    caching: tuple[str, ...] = ()
    # True for the probes and public documents, which ignore a query string. Other routes
    # without a query model reject any query parameter.
    ignores_query: bool = False


class _NoQuery(BaseModel):
    """The query of a route that takes no parameters: any parameter is an unknown one."""

    model_config = ConfigDict(extra="forbid")


def operation(summary: str, *, request_model: type[BaseModel] | None = None,
              query_model: type[BaseModel] | None = None,
              responses: dict[int, type[BaseModel] | None], errors: tuple[int | type[Problem], ...] = (),
              bearer: bool = False, roles: tuple[str, ...] = (), tags: tuple[str, ...] = (),
              uses_dependencies: bool = True, description: str | None = None,
              caching: tuple[str, ...] = (), ignores_query: bool = False) -> Callable:
    """Declare a route's body, query, responses, authentication and required roles.

    With bearer=True (implied by roles) the access token is checked first, so a 401
    or 403 comes before any body error; the caller is then current_principal(). The
    validated body arrives as the `body` argument, the query string as `query`.
    errors lists the route's own problems, as Problem classes (whose codes /openapi.json
    names) or statuses, and service.openapi_responses adds the ones that follow from the
    other arguments and from the request hooks.
    uses_dependencies=False documents a route that never returns 503. description is
    the operation's Markdown description in /openapi.json, for rules the schemas cannot
    express. caching names the caching headers that the view sets on its responses
    (service.openapi_responses.CACHING_HEADERS); a bearer route always has "no-store",
    which this decorator sets. A route without query_model rejects any query parameter
    as unknown, as bodies reject unknown fields, unless ignores_query is set: probes and
    public documents, whose clients may add a parameter to get past a cache.
    """
    bearer = bearer or bool(roles)
    if bearer and "no-store" not in caching:
        caching = ("no-store", *caching)
    statuses = {error if isinstance(error, int) else error.status for error in errors}
    codes: dict[int, tuple[str, ...]] = {}
    for error in errors:
        if not isinstance(error, int):
            codes[error.status] = (*codes.get(error.status, ()), error.code)
    spec = Operation(summary, request_model, responses, tuple(sorted(statuses)), bearer, roles, tags,
                     query_model, description, uses_dependencies, codes, caching, ignores_query)

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if bearer:
                principal = authenticate_request()
                require_roles(principal, roles)
            if query_model is not None:
                kwargs["query"] = parse_query(query_model)
            elif not ignores_query and request.args:
                parse_query(_NoQuery)
            if request_model is not None:
                kwargs["body"] = parse_body(request_model)
            response = make_response(view(*args, **kwargs))
            if bearer:
                # Responses to an authenticated caller are personal, so no shared or browser cache may keep them.
                response.headers.setdefault("Cache-Control", "no-store")
            return response

        wrapper.openapi_operation = spec  # type: ignore[attr-defined]
        return wrapper

    return decorator


def parse_body(model: type[BaseModel]) -> Any:
    """Validate the JSON body against a model; raise a Problem naming the failing field."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the body as application/json.", field="Content-Type")
    coding = request.headers.get("Content-Encoding", "")
    if coding.strip().lower() not in ("", "identity"):
        raise UnsupportedContentEncoding(coding)

    raw = request.get_data(cache=False)
    if not raw:
        # Also an HTTP/1.0 request without Content-Length, whose body the server cannot read.
        raise InvalidJson("The request body is empty: send a JSON object, with a Content-Length header or chunked.")
    _check_json_syntax(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _problem_for(exc, raw) from None


def _check_json_syntax(raw: bytes) -> None:
    """Raise InvalidJson unless the body is JSON as RFC 8259 defines it.

    model_validate_json also accepts the tokens NaN, Infinity and -Infinity (pydantic-core
    2.50, as constraints.txt pins it), and no model setting turns them off. RFC 8259 has
    no such tokens, so the body is parsed once with them off before the model validates it.
    """
    try:
        from_json(raw, allow_inf_nan=False, cache_strings=False)
    except ValueError as exc:
        # Imported here: most workers never see invalid JSON, and the module stays out of their memory.
        from service.json_errors import describe_json_error

        raise InvalidJson(describe_json_error(raw, str(exc))) from None


def parse_query(model: type[BaseModel]) -> Any:
    """Validate the query string against a model; raise a Problem naming the failing parameter.

    A parameter given more than once is refused: which of its values counts would be a
    guess, and a proxy in front may have checked another one.
    """
    for name, values in request.args.lists():
        if len(values) > 1:
            field = name[:_MAX_FIELD_NAME]
            raise InvalidRequest(f"{field}: given {len(values)} times; give each query parameter once", field=field)
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise _problem_for(exc, unknown_message="unknown query parameter") from None


def _field_path(loc: tuple[int | str, ...], *, client_name: bool = False) -> str:
    """Join a pydantic error location into a field path, leaving out union-member tags.

    Tags contain "[" or "(", and the models' own field names never do. With client_name,
    the last part is a name that the client sent, such as an unknown field, kept as sent.
    """
    parts = []
    for index, part in enumerate(loc):
        if client_name and index == len(loc) - 1:
            parts.append(str(part))
            break
        if isinstance(part, str) and ("[" in part or "(" in part):
            break
        parts.append(str(part))
    return ".".join(parts)[:_MAX_FIELD_NAME]


def _problem_for(exc: ValidationError, raw: bytes = b"", *,
                 unknown_message: str = "unknown field") -> InvalidRequest | InvalidJson:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if errors[0]["type"] == "json_invalid":
        # Only a fallback, because _check_json_syntax has already parsed the body with stricter rules.
        from service.json_errors import describe_json_error

        return InvalidJson(describe_json_error(raw, errors[0]["msg"].removeprefix("Invalid JSON: ")))

    field_errors = []
    seen: set[str] = set()
    # A body full of unknown fields must not come back as a larger error document.
    for error in errors[:_MAX_FIELD_ERRORS]:
        unknown = error["type"] == "extra_forbidden"
        location = _field_path(error["loc"], client_name=unknown)
        if location in seen:
            continue  # one entry per field, even when each member of a union failed
        seen.add(location)
        if unknown:
            field_errors.append({"field": location, "message": unknown_message})
            continue
        if error["type"] == "model_type" or not location:
            message = "the body must be a JSON object"
        else:
            message = error["msg"].removeprefix("Value error, ")
        field_errors.append({"field": location or "body", "message": message})

    first = field_errors[0]
    # An unknown field can have an empty name, which the detail shows quoted.
    name = first["field"] or '""'
    return InvalidRequest(f"{name}: {first['message']}", field=first["field"], errors=field_errors)


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialize a response model with pydantic's own JSON encoder, in one step."""
    return Response(model.model_dump_json() + "\n", status, headers, mimetype="application/json")


class IdConverter(BaseConverter):
    """User and session ids: 32 lower-case hex digits; anything else is 404 before any query."""

    regex = "[0-9a-f]{32}"
    pattern = "^[0-9a-f]{32}$"


class RoleNameConverter(BaseConverter):
    regex = "[a-z][a-z0-9_.-]{0,63}"
    pattern = "^[a-z][a-z0-9_.-]{0,63}$"


class AddressConverter(BaseConverter):
    """An IPv4 or IPv6 address in a path, which the view validates.

    Three forms match: an address with an optional prefix length (2001:db8::/64), an IPv4
    address with a port (203.0.113.7:443), and an IPv6 address in brackets with an
    optional port ([2001:db8::5]:443), as log lines show clients behind some proxies.
    The brackets may come raw or percent-encoded (%5B, %5D), which the WSGI server
    decodes before routing. The documented pattern leaves the prefix length out,
    because a client built from the OpenAPI document encodes the slash as %2F, which
    service.method_guard rejects. Any address of the network names it as well. A link-local
    IPv6 address may carry its zone (fe80::1%eth0, sent as %25eth0), as a ban accepts it.
    """

    regex = (r"\[[0-9A-Fa-f.:]{2,45}(?:%[0-9A-Za-z_.~-]{1,32})?\](?::[0-9]{1,5})?"
             r"|[0-9A-Fa-f.:]{2,45}(?:%[0-9A-Za-z_.~-]{1,32}|/[0-9]{1,3})?")
    pattern = (r"^(?:\[[0-9A-Fa-f.:]{2,45}(?:%[0-9A-Za-z_.~-]{1,32})?\](?::[0-9]{1,5})?"
               r"|[0-9A-Fa-f.:]{2,45}(?:%[0-9A-Za-z_.~-]{1,32})?)$")


CONVERTERS = {"id": IdConverter, "role": RoleNameConverter, "address": AddressConverter}


def register_converters(app: Flask) -> None:
    """Make the path converters available to every route."""
    app.url_map.converters.update(CONVERTERS)
