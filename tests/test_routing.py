"""Only the canonical spelling of a path matches a route, and OPTIONS is not an API method."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("path", ["/v1//auth/login", "//v1/auth/login", "///v1/auth/login", "/v1/auth//login"])
def test_doubled_slash_not_found(client, path):
    # PATH_INFO is set directly: the test client would read "//v1/..." as a URL with host "v1".
    response = client.post("/", json={"email": "alice@example.com", "password": "whatever password"},
                           headers={"Host": "evil.example"}, environ_overrides={"PATH_INFO": path})

    # Not a redirect: werkzeug would build its Location from the Host header.
    assert response.status_code == 404
    assert "Location" not in response.headers
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("path", ["//v1/admin/users", "//v1/users/me", "//health"])
def test_leading_slashes_not_found(client, admin_tokens, path):
    response = client.get("/", headers={"Authorization": f"Bearer {admin_tokens['access_token']}"},
                          environ_overrides={"PATH_INFO": path})

    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


@pytest.mark.parametrize(("path", "allowed"), [("/v1/auth/login", {"POST"}), ("/health", {"GET", "HEAD"})])
def test_options_not_allowed(client, path, allowed):
    response = client.options(path)

    assert response.status_code == 405
    assert response.content_type == "application/problem+json"
    assert set(response.headers["Allow"].split(", ")) == allowed


def test_options_not_counted_by_limit(client):
    for _ in range(3):
        client.options("/v1/auth/login")

    response = client.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "whatever password"})

    limit = int(response.headers["X-RateLimit-Limit"])
    assert int(response.headers["X-RateLimit-Remaining"]) == limit - 1


SEPARATOR_PATHS = ["/v1%2fadmin%2fusers", "/v1%2Fadmin/users", "/v1/admin%5cusers", "/v1/admin/users%5C",
                   "/%2e%2e%2Fv1/admin/users", "/health%2F", "/static/a%2Fb"]
CHARACTER_PATHS = ["/v1/%61dmin/users", "/v1/admin/%55sers", "/v1/users/m%65", "/v1/admin/users%2E",
                   "/%2e%2e/v1/admin/users", "/heal%74h", "/v1/admin/bans/%31.2.3.4", "/.well%2Dknown/jwks.json",
                   "/v1/admin/%7Eusers"]


@pytest.mark.parametrize(("path", "code"), [(path, "encoded_path_separator") for path in SEPARATOR_PATHS]
                         + [(path, "encoded_path_character") for path in CHARACTER_PATHS])
def test_encoded_path_rejected(client, admin_tokens, path, code):
    response = client.get(path, headers={"Authorization": f"Bearer {admin_tokens['access_token']}"})

    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert response.get_json()["code"] == code
    assert response.get_json()["field"] == "path"
    assert response.headers["X-Request-ID"]


def test_encoded_colon_in_address_allowed(client, admin_tokens):
    # ":" is not unreserved, so %3A decodes as usual and the route reads the address.
    headers = {"Authorization": f"Bearer {admin_tokens['access_token']}"}

    response = client.delete("/v1/admin/bans/2001%3Adb8%3A77%3A%3A1", headers=headers)

    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


def test_encoded_separator_in_query_allowed(client, admin_tokens):
    response = client.get("/v1/admin/users?query=%2F", headers={"Authorization": f"Bearer {admin_tokens['access_token']}"})

    assert response.status_code == 200


def test_openapi_lists_400_for_path_parameters(client):
    paths = client.get("/openapi.json").get_json()["paths"]

    for path, operations in paths.items():
        if "{" not in path:
            continue
        for method, spec in operations.items():
            assert "400" in spec["responses"], f"{method.upper()} {path}"


def test_openapi_address_parameter_has_no_slash(client):
    # A generated client would send the slash of 2001:db8::/64 as %2F, which is rejected.
    parameters = client.get("/openapi.json").get_json()["paths"]["/v1/admin/bans/{ip}"]["delete"]["parameters"]

    pattern = re.compile(parameters[0]["schema"]["pattern"])
    assert "/" not in pattern.pattern
    for documented in ("203.0.113.7", "2001:db8:5::5", "203.0.113.7:443", "[2001:db8:5::5]:443", "[2001:db8:5::5]"):
        assert pattern.fullmatch(documented), documented
