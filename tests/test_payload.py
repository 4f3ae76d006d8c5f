"""Body size limits and JSON input rules through the Flask test client.

Chunked bodies need a server that terminates the stream, so they are tested
through gunicorn in tests/e2e/test_payload.py.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD

AUTH_LIMIT = 8192
GENERAL_LIMIT = 16384


def padded_register_body(size: int) -> bytes:
    """A valid registration body padded with trailing spaces to exactly `size` bytes."""
    body = json.dumps({"email": "alice@example.com", "password": PASSWORD}).encode()
    return body + b" " * (size - len(body))


def test_auth_body_at_limit_accepted(client):
    response = client.post("/v1/auth/register", data=padded_register_body(AUTH_LIMIT),
                           content_type="application/json")

    assert response.status_code == 201


def test_auth_body_over_limit_rejected(client):
    response = client.post("/v1/auth/register", data=padded_register_body(AUTH_LIMIT + 1),
                           content_type="application/json")

    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "payload_too_large"
    assert str(AUTH_LIMIT) in response.get_json()["detail"]


def test_other_routes_use_general_limit(client):
    # A body larger than the auth limit passes elsewhere; a route without a body model ignores it.
    within = client.get("/.well-known/jwks.json", data=b"x" * (AUTH_LIMIT + 100))
    over = client.get("/.well-known/jwks.json", data=b"x" * (GENERAL_LIMIT + 1))

    assert within.status_code == 200
    assert over.status_code == 413


def test_body_limit_checked_before_bearer_token(client):
    response = client.post("/v1/auth/logout", data=b"x" * (AUTH_LIMIT + 1))

    assert response.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/merge-patch+json", None])
def test_json_routes_reject_other_media_types(client, content_type):
    body = json.dumps({"email": "alice@example.com", "password": PASSWORD})
    headers = {"Content-Type": content_type} if content_type else {}

    response = client.post("/v1/auth/register", data=body, headers=headers)

    assert response.status_code == 415
    assert response.get_json()["code"] == "unsupported_media_type"


def test_json_with_charset_parameter_accepted(client):
    response = client.post("/v1/auth/register", data=json.dumps({"email": "alice@example.com", "password": PASSWORD}),
                           content_type="application/json; charset=utf-8")

    assert response.status_code == 201


def test_deep_nesting_rejected_as_invalid_json(client):
    # pydantic-core's JSON parser stops at a fixed depth of about 200.
    body = '{"email": ' + "[" * 1000 + "]" * 1000 + ', "password": "x"}'

    response = client.post("/v1/auth/login", data=body, content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_json"


def test_shallow_nesting_rejected_by_field(client):
    body = {"email": [[["alice@example.com"]]], "password": PASSWORD}

    response = client.post("/v1/auth/login", json=body)

    assert response.status_code == 400
    assert response.get_json()["field"] == "email"


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "a" * 400 + "@example.com", "password": PASSWORD}, "email"),
    ({"email": "alice@example.com", "password": "p" * 257}, "password"),
    ({"refresh_token": "t" * 257}, "refresh_token"),
], ids=["email", "password", "refresh_token"])
def test_long_strings_rejected_by_field(client, body, field):
    path = "/v1/auth/refresh" if "refresh_token" in body else "/v1/auth/login"

    response = client.post(path, json=body)

    assert response.status_code == 400
    assert response.get_json()["field"] == field


def test_unknown_field_rejected(client):
    response = client.post("/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD,
                                                   "remember_me": True})

    assert response.status_code == 400
    assert response.get_json()["field"] == "remember_me"
    assert response.get_json()["errors"] == [{"field": "remember_me", "message": "unknown field"}]
