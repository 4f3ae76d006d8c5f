"""/v1/users/me on the real MariaDB and Redis."""

from __future__ import annotations

import jwt
import pymysql
import pytest

from service.database import connect_args


def test_me_returns_user_and_roles(client, user, tokens, settings):
    connection = pymysql.connect(**connect_args(settings))
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO user_roles (user_id, role_id, granted_at)"
                       " SELECT %s, id, UTC_TIMESTAMP(6) FROM roles WHERE name = 'admin'", (user["id"],))
    connection.close()

    response = client.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == user["id"]
    assert body["email"] == "alice@example.com"
    assert body["status"] == "active"
    assert body["roles"] == ["admin"]


def test_me_malformed_header_rejected(client):
    for header in ("Basic abc", "Bearer", "Bearer not.a.jwt", "bearer " + "x" * 5000):
        response = client.get("/v1/users/me", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_me_deleted_user_rejected(client, user, tokens, settings):
    connection = pymysql.connect(**connect_args(settings))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM users WHERE id = %s", (user["id"],))
    connection.close()

    response = client.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_token"


def test_me_joined_authorization_headers_rejected(client, tokens):
    # gunicorn joins two Authorization headers with a comma; the first one fails the scheme check here.
    token = tokens["access_token"]
    for header in (f"Basic Zm9vOmJhcg==,Bearer {token}", f",Bearer {token}", f"Bearer {token},Bearer {token}"):
        response = client.get("/v1/users/me", headers={"Authorization": header})

        assert response.status_code == 401, header
        assert response.get_json()["code"] == "invalid_token", header
        assert "one Authorization header" in response.get_json()["detail"], header


@pytest.mark.parametrize("change", [
    lambda claims: {"exp": str(claims["exp"])},
    lambda claims: {"iat": str(claims["iat"])},
    lambda claims: {"nbf": str(claims["iat"])},
    lambda claims: {"exp": True},
    lambda claims: {"sub": 42},
    lambda claims: {"sid": [claims["sid"]]},
    lambda claims: {"jti": None},
    lambda claims: {"roles": "admin"},
], ids=["exp_string", "iat_string", "nbf_string", "exp_bool", "sub_number", "sid_list", "no_jti", "roles_string"])
def test_me_claim_of_wrong_type_rejected(app, client, tokens, change):
    # The claims of a real session, re-signed with the app's own key, so only the changed claim is wrong.
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    claims.update(change(claims))
    claims = {name: value for name, value in claims.items() if value is not None}
    key = app.extensions["gatehouse"].keys.signing_key
    token = jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "at+jwt"})

    response = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
