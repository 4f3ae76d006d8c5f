"""204 No Content responses: no body and no Content-Type, on every route that sends one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Response

from service.app import close_app, create_app
from tests.conftest import PASSWORD
from tests.helpers import bearer

BANNED_ADDRESS = "203.0.113.9"


def log_in(client, email: str) -> dict:
    response = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def other_session_id(client, access_token: str) -> str:
    sessions = client.get("/v1/auth/sessions", headers=bearer(access_token)).get_json()["sessions"]
    return next(session["id"] for session in sessions if not session["current"])


# Each function prepares the state that makes its endpoint send 204, and returns the
# method, path and access token of that request.
def logout_request(client, user, tokens, admin_tokens) -> tuple[str, str, str]:
    return "POST", "/v1/auth/logout", tokens["access_token"]


def end_session_request(client, user, tokens, admin_tokens) -> tuple[str, str, str]:
    log_in(client, user["email"])
    return "DELETE", f"/v1/auth/sessions/{other_session_id(client, tokens['access_token'])}", tokens["access_token"]


def delete_user_request(client, user, tokens, admin_tokens) -> tuple[str, str, str]:
    return "DELETE", f"/v1/admin/users/{user['id']}", admin_tokens["access_token"]


def revoke_user_session_request(client, user, tokens, admin_tokens) -> tuple[str, str, str]:
    log_in(client, user["email"])
    session_id = other_session_id(client, tokens["access_token"])
    return "DELETE", f"/v1/admin/users/{user['id']}/sessions/{session_id}", admin_tokens["access_token"]


def delete_ban_request(client, user, tokens, admin_tokens) -> tuple[str, str, str]:
    created = client.post("/v1/admin/bans", json={"ip": BANNED_ADDRESS, "reason": "scanner"},
                          headers=bearer(admin_tokens["access_token"]))
    assert created.status_code == 201, created.get_json()
    return "DELETE", f"/v1/admin/bans/{BANNED_ADDRESS}", admin_tokens["access_token"]


NO_CONTENT_REQUESTS: dict[str, Callable[..., tuple[str, str, str]]] = {
    "auth.logout": logout_request,
    "auth.end_session": end_session_request,
    "admin.delete_user": delete_user_request,
    "admin.revoke_user_session": revoke_user_session_request,
    "admin.delete_ban": delete_ban_request,
}


def no_content_endpoints(app) -> set[str]:
    """Return the endpoints whose declared operation has a 204 response."""
    return {endpoint for endpoint, view in app.view_functions.items()
            if 204 in getattr(getattr(view, "openapi_operation", None), "responses", {})}


def test_every_204_endpoint_tested(app):
    assert no_content_endpoints(app) == set(NO_CONTENT_REQUESTS)


@pytest.mark.parametrize("endpoint", NO_CONTENT_REQUESTS)
def test_204_has_no_content_type(client, user, tokens, admin_tokens, endpoint):
    method, path, access_token = NO_CONTENT_REQUESTS[endpoint](client, user, tokens, admin_tokens)

    response = client.open(path, method=method, headers=bearer(access_token))

    assert response.status_code == 204, response.get_json()
    assert "Content-Type" not in response.headers
    assert "Content-Length" not in response.headers
    assert response.data == b""
    assert response.headers["X-Request-ID"]


def test_openapi_204_has_no_content(client):
    document = client.get("/openapi.json").get_json()
    no_content = [(method, path, operation["responses"]["204"])
                  for path, operations in document["paths"].items()
                  for method, operation in operations.items() if "204" in operation["responses"]]

    assert len(no_content) == len(NO_CONTENT_REQUESTS)
    for method, path, response in no_content:
        assert "content" not in response, (method, path)


@pytest.fixture
def probe_app():
    """An app with extra routes that send 204 and 200 in the ways a view could."""
    app = create_app()
    app.config["TESTING"] = True
    app.add_url_rule("/probe/typed-204", "typed_204",
                     lambda: Response(status=204, mimetype="application/json"))
    app.add_url_rule("/probe/tuple-204", "tuple_204", lambda: ("", 204))
    app.add_url_rule("/probe/late-204", "late_204", late_no_content)
    app.add_url_rule("/probe/text-200", "text_200", lambda: "text")
    yield app
    close_app(app)


def late_no_content() -> Response:
    response = Response("{}", mimetype="application/json")
    response.status_code = 204
    return response


@pytest.mark.parametrize("path", ["/probe/typed-204", "/probe/tuple-204", "/probe/late-204"])
def test_any_204_loses_content_type(probe_app, path):
    response = probe_app.test_client().get(path)

    assert response.status_code == 204
    assert "Content-Type" not in response.headers


def test_200_keeps_content_type(probe_app):
    response = probe_app.test_client().get("/probe/text-200")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
