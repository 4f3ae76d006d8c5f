"""Only the canonical spelling of a path matches a route, and OPTIONS is not an API method."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/v1//auth/login", "//v1/auth/login", "/v1/auth//login"])
def test_doubled_slash_not_found(client, path):
    response = client.post(path, json={"email": "alice@example.com", "password": "whatever password"},
                           headers={"Host": "evil.example"})

    # Not a redirect: werkzeug would build its Location from the Host header.
    assert response.status_code == 404
    assert "Location" not in response.headers
    assert response.content_type == "application/problem+json"


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
