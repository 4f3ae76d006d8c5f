"""/openapi.json lists every problem and header that the pipeline sends, and real responses match it.

The walk over the app's url_map checks the document against the facts the pipeline
tests (the ban and rate-limit exemptions, the declaration of each route). The request
tests send one kind of rejected request to every documented operation, through the real
app with real MariaDB and Redis, and validate each response with schemathesis's checks.
"""

from __future__ import annotations

import json
import re

import pytest
from flask import Response
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from service import ban_guard, limits
from service.api import operation
from service.app import close_app, create_app
from service.lifecycle import error_pages
from tests.helpers import assert_documented, load_openapi, wait_until

# gunicorn writes these itself (service.lifecycle.error_pages), without X-Request-ID.
# Its 403 needs the PROXY protocol, which gunicorn.conf.py leaves off.
GUNICORN_STATUSES = {400, 414, 417, 431, 501}
# Sent before the route's rate limit counts the request, or by gunicorn, so without X-RateLimit headers.
UNCOUNTED_STATUSES = GUNICORN_STATUSES | {403}
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
# A value of the right form for each path converter of service.api.
PATH_SAMPLES = {"id": "0123456789abcdef0123456789abcdef", "role": "admin", "address": "192.0.2.200"}
BANNED = "192.0.2.66"


def documented_operations(app) -> list[tuple[str, str, str, object]]:
    """Return (route template, document path, method, declaration) of every documented operation."""
    found = []
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions[rule.endpoint], "openapi_operation", None)
        if spec is None:
            continue
        path = re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, path, method, spec))
    return sorted(found, key=lambda item: (item[1], item[2]))


def sample_url(route: str) -> str:
    """Fill each path parameter of a route template with a value of the converter's form."""
    return re.sub(r"<(?:([^>:]+):)?[^>]+>", lambda match: PATH_SAMPLES[match.group(1)], route)


def sample_parameters(route: str) -> dict[str, str]:
    """Return the values that sample_url puts in the path, by parameter name."""
    return {name: PATH_SAMPLES[converter] for converter, name in re.findall(r"<(?:([^>:]+):)?([^>]+)>", route)}


def headers_of(document: dict, response: dict) -> dict[str, dict]:
    """Return a response object's header objects, with references to components.headers resolved."""
    components = document["components"]["headers"]
    return {name: components[header["$ref"].rsplit("/", 1)[1]] if "$ref" in header else header
            for name, header in response.get("headers", {}).items()}


@pytest.fixture
def document(client) -> dict:
    return client.get("/openapi.json").get_json()


def _problem_classes(base: type) -> list[type]:
    return [cls for sub in base.__subclasses__() for cls in (sub, *_problem_classes(sub))]


def test_every_problem_code_in_document(document):
    # The base classes and the 500 that no operation plans to send are left out.
    from service import errors

    abstract = {errors.Unauthorized, errors.DependencyUnavailable}
    codes = {cls.code for cls in _problem_classes(errors.Problem) if cls not in abstract} - {"internal_error"}
    text = json.dumps(document)

    assert sorted(code for code in codes if f"`{code}`" not in text) == []


def test_operations_found(app):
    operations = documented_operations(app)

    assert len(operations) >= 20
    assert ("/v1/auth/register", "/v1/auth/register", "POST") in [item[:3] for item in operations]


def test_banned_address_403_listed(app, document):
    for route, path, method, _spec in documented_operations(app):
        responses = document["paths"][path][method.lower()]["responses"]
        label = f"{method} {path}"
        if ban_guard.is_exempt(route, method):
            assert "403" not in responses, label
            continue
        assert "`ip_banned`" in responses["403"]["description"], label
        retry_after = headers_of(document, responses["403"])["Retry-After"]
        assert retry_after["required"] is False, label


def test_rate_limit_429_listed(app, document):
    for route, path, method, _spec in documented_operations(app):
        responses = document["paths"][path][method.lower()]["responses"]
        label = f"{method} {path}"
        if route in limits.EXEMPT_ROUTES:
            assert "429" not in responses, label
            continue
        assert "`rate_limited`" in responses["429"]["description"], label
        assert headers_of(document, responses["429"])["Retry-After"]["required"] is True, label


def test_body_problems_listed_everywhere(app, document):
    # service.payload reads a body sent to any route, also to one that takes none.
    for _route, path, method, _spec in documented_operations(app):
        responses = document["paths"][path][method.lower()]["responses"]
        label = f"{method} {path}"
        assert "`body_timeout`" in responses["408"]["description"], label
        assert "`payload_too_large`" in responses["413"]["description"], label
        assert "`invalid_body_encoding`" in responses["400"]["description"], label
        assert "`unsupported_transfer_encoding`" in responses["501"]["description"], label


def test_declaration_problems_listed(app, document):
    for _route, path, method, spec in documented_operations(app):
        responses = document["paths"][path][method.lower()]["responses"]
        label = f"{method} {path}"
        assert ("415" in responses) == (spec.request is not None), label
        assert ("401" in responses) == (spec.bearer or 401 in spec.errors), label
        assert ("503" in responses) == (spec.uses_dependencies or 503 in spec.responses), label
        if spec.roles:
            assert "`missing_role`" in responses["403"]["description"], label
        if "401" in responses:
            assert headers_of(document, responses["401"])["WWW-Authenticate"]["required"] is True, label
        if "503" in responses:
            assert headers_of(document, responses["503"])["Retry-After"]["required"] is True, label


def test_request_id_header_listed(app, document):
    for _route, path, method, _spec in documented_operations(app):
        for status, response in document["paths"][path][method.lower()]["responses"].items():
            label = f"{status} of {method} {path}"
            headers = headers_of(document, response)
            if int(status) in (414, 417, 431):
                assert "X-Request-ID" not in headers, label
                continue
            assert headers["X-Request-ID"]["required"] is (int(status) not in GUNICORN_STATUSES), label


def test_rate_limit_headers_listed(app, document):
    for route, path, method, _spec in documented_operations(app):
        for status, response in document["paths"][path][method.lower()]["responses"].items():
            label = f"{status} of {method} {path}"
            headers = headers_of(document, response)
            if route in limits.EXEMPT_ROUTES:
                assert not set(RATE_LIMIT_HEADERS) & set(headers), label
                continue
            for name in RATE_LIMIT_HEADERS:
                if int(status) in UNCOUNTED_STATUSES:
                    # Listed as optional where another code of the status comes after the count, else absent.
                    assert headers.get(name, {}).get("required", False) is False, f"{name} in {label}"
                else:
                    assert headers[name]["required"] is True, f"{name} in {label}"


def test_caching_headers_listed(app, document):
    token_routes = {"/v1/auth/login", "/v1/auth/refresh"}
    for route, path, method, spec in documented_operations(app):
        for status, response in document["paths"][path][method.lower()]["responses"].items():
            label = f"{status} of {method} {path}"
            headers = headers_of(document, response)
            if int(status) not in spec.responses:
                # Only problem documents: each one is sent with no-store.
                assert set(response["content"]) == {"application/problem+json"}, label
                assert headers["Cache-Control"]["schema"] == {"type": "string", "enum": ["no-store"]}, label
                assert headers["Cache-Control"]["required"] is True, label
                assert "Pragma" not in headers, label
            elif spec.bearer or route in token_routes:
                assert headers["Cache-Control"]["schema"] == {"type": "string", "enum": ["no-store"]}, label
                assert ("Pragma" in headers) is (route in token_routes), label
            elif route == "/.well-known/jwks.json":
                assert headers["Cache-Control"]["schema"]["pattern"].startswith("^public, max-age="), label
            else:
                assert "Cache-Control" not in headers, label


def test_new_route_gets_pipeline_responses():
    app = create_app()
    try:
        @operation("Example", responses={204: None}, bearer=True)
        def example() -> Response:
            return Response(status=204)

        app.add_url_rule("/v1/example", "example", example, methods=["POST"])
        document = app.test_client().get("/openapi.json").get_json()
    finally:
        close_app(app)

    responses = document["paths"]["/v1/example"]["post"]["responses"]
    assert "`ip_banned`" in responses["403"]["description"]
    assert "`rate_limited`" in responses["429"]["description"]
    assert {"408", "413", "503"} <= set(responses)
    assert set(headers_of(document, responses["204"])) == {"X-Request-ID", "Cache-Control", *RATE_LIMIT_HEADERS}
    assert "WWW-Authenticate" in headers_of(document, responses["401"])


def test_gunicorn_problems_match_schema(document):
    registry = Registry().with_resource("urn:gatehouse:openapi", DRAFT202012.create_resource(document))
    validator = Draft202012Validator({"$ref": "urn:gatehouse:openapi#/components/schemas/ProblemDetails"},
                                     registry=registry)

    for status in GUNICORN_STATUSES:
        problem = error_pages.problem_document(status, "Reason", "message")
        assert "request_id" not in problem
        assert list(validator.iter_errors(problem)) == [], status


def test_gunicorn_statuses_listed(app, document):
    for _route, path, method, _spec in documented_operations(app):
        responses = document["paths"][path][method.lower()]["responses"]
        for status in GUNICORN_STATUSES:
            code = error_pages.problem_code(status)
            assert f"`{code}`" in responses[str(status)]["description"], f"{status} of {method} {path}"


@pytest.fixture
def ban_app():
    app = create_app()
    app.extensions["gatehouse"].blacklist.ban(BANNED, reason="test", seconds=600, actor="test")
    bans = app.extensions["gatehouse"].bans
    wait_until(lambda: bans.banned_until(BANNED) is not None, 5, "the ban did not reach the worker")
    yield app
    close_app(app)


def test_banned_address_gets_documented_403(ban_app):
    client = ban_app.test_client()
    schema = load_openapi(client.get("/openapi.json").get_json())

    for route, path, method, _spec in documented_operations(ban_app):
        response = client.open(sample_url(route), method=method, environ_base={"REMOTE_ADDR": BANNED})
        label = f"{method} {path}"
        if ban_guard.is_exempt(route, method):
            assert response.status_code in (200, 503), label
        else:
            assert response.status_code == 403, label
            assert response.get_json()["code"] == "ip_banned", label
        assert_documented(schema, path, method, response, sample_parameters(route))


def test_second_request_gets_documented_429():
    one_a_minute = {name: "1/minute" for name in ("rate_limit_default", "rate_limit_login", "rate_limit_register",
                                                   "rate_limit_refresh")}
    app = create_app(one_a_minute)
    try:
        client = app.test_client()
        schema = load_openapi(client.get("/openapi.json", environ_base={"REMOTE_ADDR": "192.0.2.1"}).get_json())
        for index, (route, path, method, _spec) in enumerate(documented_operations(app)):
            # An address per operation, so no address collects enough 429s for a ban.
            client_address = {"REMOTE_ADDR": f"198.18.0.{index + 1}"}
            first = client.open(sample_url(route), method=method, environ_base=client_address)
            second = client.open(sample_url(route), method=method, environ_base=client_address)
            label = f"{method} {path}"

            assert_documented(schema, path, method, first, sample_parameters(route))
            assert_documented(schema, path, method, second, sample_parameters(route))
            if route in limits.EXEMPT_ROUTES:
                assert second.status_code != 429, label
            else:
                assert second.status_code == 429, label
    finally:
        close_app(app)


def test_oversized_body_gets_documented_413(client, document):
    schema = load_openapi(document)
    # Over GATEHOUSE_MAX_BODY_BYTES (16 KiB by default) and the smaller limit under /v1/auth/.
    body = json.dumps({"padding": "x" * 20_000})

    for route, path, method, _spec in documented_operations(client.application):
        response = client.open(sample_url(route), method=method, data=body, content_type="application/json")

        assert response.status_code == 413, f"{method} {path}"
        assert_documented(schema, path, method, response, sample_parameters(route))
