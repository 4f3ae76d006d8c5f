"""Responses of a real gunicorn against the /openapi.json it serves: bans, gunicorn's own errors and caching."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import PASSWORD
from tests.helpers import Gunicorn, assert_documented, bearer, create_user, load_openapi, wait_until

pytestmark = pytest.mark.e2e

TEMPORARY = "203.0.113.41"
PERMANENT = "203.0.113.42"
PROBING = "203.0.113.43"
ADMIN_ADDRESS = "203.0.113.99"
# (method, document path, URL path, JSON body) of a few routes of each kind: with a body,
# bearer, admin, public and a path parameter.
BANNED_REQUESTS = [
    ("POST", "/v1/auth/register", "/v1/auth/register", {"email": "new@example.com", "password": PASSWORD}),
    ("POST", "/v1/auth/refresh", "/v1/auth/refresh", {"refresh_token": "not-a-token"}),
    ("POST", "/v1/auth/logout", "/v1/auth/logout", None),
    ("GET", "/v1/users/me", "/v1/users/me", None),
    ("GET", "/v1/auth/sessions", "/v1/auth/sessions", None),
    ("GET", "/.well-known/jwks.json", "/.well-known/jwks.json", None),
    ("DELETE", "/v1/admin/bans/{ip}", "/v1/admin/bans/192.0.2.1", None),
]
# gunicorn.conf.py: limit_request_line = 4094 bytes, limit_request_fields = 50.
LONG_QUERY = "x=" + "a" * 5000
MANY_HEADERS = {f"X-Filler-{index}": "x" for index in range(60)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("openapi"), env={"GATEHOUSE_TRUSTED_PROXY_COUNT": "1"}) as gunicorn:
        yield gunicorn


@pytest.fixture(scope="module")
def schema(server):
    return load_openapi(requests.get(f"{server.url}/openapi.json", timeout=10).json())


def as_client(ip: str) -> dict[str, str]:
    """Headers of a request that the trusted proxy forwarded for `ip`, on a new connection."""
    return {"X-Forwarded-For": ip, "Connection": "close"}


def ban(server, settings, ip: str, duration_seconds: int | None) -> None:
    """Ban an address through the admin API and wait until 8 requests on new connections all get 403.

    New connections spread over both workers, so each of them has the ban by then as a rule.
    """
    create_user(settings, f"root-{ip}@example.com", PASSWORD, roles=("admin",))
    token = requests.post(f"{server.url}/v1/auth/login", json={"email": f"root-{ip}@example.com",
                                                               "password": PASSWORD},
                          headers=as_client(ADMIN_ADDRESS), timeout=10).json()["access_token"]
    created = requests.post(f"{server.url}/v1/admin/bans",
                            json={"ip": ip, "reason": "test", "duration_seconds": duration_seconds},
                            headers={**bearer(token), **as_client(ADMIN_ADDRESS)}, timeout=10)
    assert created.status_code == 201, created.text

    def rejected_on_new_connections() -> bool:
        statuses = {requests.get(f"{server.url}/v1/users/me", headers=as_client(ip), timeout=10).status_code
                    for _ in range(8)}
        return statuses == {403}

    wait_until(rejected_on_new_connections, 10, f"the ban of {ip} did not reach the workers")


def test_temporary_ban_403_documented(server, settings, schema):
    ban(server, settings, TEMPORARY, 600)

    for method, path, url_path, body in BANNED_REQUESTS:
        response = requests.request(method, f"{server.url}{url_path}", json=body, headers=as_client(TEMPORARY),
                                    timeout=10)
        label = f"{method} {path}"

        assert response.status_code == 403, label
        assert response.json()["code"] == "ip_banned", label
        assert 1 <= int(response.headers["Retry-After"]) <= 600, label
        assert response.json()["request_id"] == response.headers["X-Request-ID"], label
        parameters = {"ip": "192.0.2.1"} if "{ip}" in path else None
        assert_documented(schema, path, method, response, parameters)


def test_permanent_ban_403_documented(server, settings, schema):
    ban(server, settings, PERMANENT, None)

    response = requests.get(f"{server.url}/v1/users/me", headers=as_client(PERMANENT), timeout=10)

    assert response.status_code == 403
    assert "Retry-After" not in response.headers
    assert_documented(schema, "/v1/users/me", "GET", response)


def test_banned_probes_documented(server, settings, schema):
    ban(server, settings, PROBING, 600)

    for path in ("/health", "/ready"):
        response = requests.get(f"{server.url}{path}", headers=as_client(PROBING), timeout=10)

        assert response.status_code == 200, path
        assert_documented(schema, path, "GET", response)


def test_gunicorn_414_documented(server, schema):
    response = requests.get(f"{server.url}/v1/users/me?{LONG_QUERY}", timeout=10)

    assert response.status_code == 414
    assert response.json()["code"] == "request_line_too_long"
    assert "request_id" not in response.json()
    assert "X-Request-ID" not in response.headers
    assert_documented(schema, "/v1/users/me", "GET", response)


def test_gunicorn_431_documented(server, schema):
    response = requests.get(f"{server.url}/v1/users/me", headers=MANY_HEADERS, timeout=10)

    assert response.status_code == 431
    assert response.json()["code"] == "header_fields_too_large"
    assert "request_id" not in response.json()
    assert_documented(schema, "/v1/users/me", "GET", response)


def test_successful_responses_documented(server, settings, schema):
    """The caching headers of token, bearer and key-set responses are required in the document, so these fail without them."""
    create_user(settings, "cached@example.com", PASSWORD)
    login = requests.post(f"{server.url}/v1/auth/login", json={"email": "cached@example.com", "password": PASSWORD},
                          timeout=10)
    refreshed = requests.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": login.json()["refresh_token"]},
                              timeout=10)
    token = refreshed.json()["access_token"]
    # The first request reaches Flask and caches the token in that worker; the later ones
    # on the same connection take the warm path there.
    with requests.Session() as session:
        current_user = [session.get(f"{server.url}/v1/users/me", headers=bearer(token), timeout=10) for _ in range(3)]
    jwks = requests.get(f"{server.url}/.well-known/jwks.json", timeout=10)

    for response in (login, refreshed):
        assert response.status_code == 200, response.text
        assert (response.headers["Cache-Control"], response.headers["Pragma"]) == ("no-store", "no-cache")
    assert_documented(schema, "/v1/auth/login", "POST", login)
    assert_documented(schema, "/v1/auth/refresh", "POST", refreshed)
    for response in current_user:
        assert response.status_code == 200, response.text
        assert response.headers["Cache-Control"] == "no-store"
        assert_documented(schema, "/v1/users/me", "GET", response)
    assert jwks.headers["Cache-Control"].startswith("public, max-age=")
    assert_documented(schema, "/.well-known/jwks.json", "GET", jwks)
