"""A change whose Redis step fails changes nothing in MySQL, writes no audit row, and a retry completes it.

The fault is real: the account's session index in the test Redis is replaced by a
string, so the script that ends the account's sessions fails with WRONGTYPE. Removing
the string repairs it, as an operator would after an outage.
"""

from __future__ import annotations

import pytest
import redis

from service.sessions import user_sessions_key
from tests.conftest import PASSWORD
from tests.helpers import bearer

NEW_PASSWORD = "a completely different passphrase"


@pytest.fixture
def store(settings):
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    yield client
    client.close()


def break_session_index(store, user_id: str) -> None:
    store.set(user_sessions_key(user_id), "not a sorted set")


def repair_session_index(store, user_id: str) -> None:
    store.delete(user_sessions_key(user_id))


def audit_actions(client, admin_tokens) -> list[str]:
    response = client.get("/v1/admin/audit", headers=bearer(admin_tokens["access_token"]))
    return [entry["action"] for entry in response.get_json()["entries"]]


def logs_in(client, email: str, password: str) -> bool:
    return client.post("/v1/auth/login", json={"email": email, "password": password}).status_code == 200


def account_unchanged(app, user_id: str) -> bool:
    """Tell from MySQL alone whether the account exists, is active and has its first password."""
    svc = app.extensions["gatehouse"]
    with svc.database.cursor() as cursor:
        cursor.execute("SELECT password_hash, status FROM users WHERE id = %s", (user_id,))
        row = cursor.fetchone()
    return row is not None and row["status"] == "active" and svc.passwords.verify(row["password_hash"], PASSWORD)


def test_own_password_change_rolled_back(app, client, user, tokens, store):
    headers = bearer(tokens["access_token"])
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    break_session_index(store, user["id"])

    failed = client.post("/v1/users/me/password", json=body, headers=headers)

    assert failed.status_code == 500
    assert account_unchanged(app, user["id"])
    repair_session_index(store, user["id"])
    # The retry that the error invites finds the old password in place and completes.
    assert client.post("/v1/users/me/password", json=body, headers=headers).status_code == 200
    assert logs_in(client, user["email"], NEW_PASSWORD)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/admin/users/{id}/disable", None),
    ("PUT", "/v1/admin/users/{id}/password", {"password": NEW_PASSWORD}),
    ("DELETE", "/v1/admin/users/{id}", None),
], ids=["disable", "password_reset", "delete"])
def test_admin_change_rolled_back(app, client, user, admin_tokens, store, method, path, body):
    headers = bearer(admin_tokens["access_token"])
    url = path.format(id=user["id"])
    actions_before = audit_actions(client, admin_tokens)
    break_session_index(store, user["id"])

    failed = client.open(url, method=method, json=body, headers=headers)

    assert failed.status_code == 500
    assert account_unchanged(app, user["id"])
    assert audit_actions(client, admin_tokens) == actions_before
    repair_session_index(store, user["id"])
    assert client.open(url, method=method, json=body, headers=headers).status_code in (200, 204)
    assert not account_unchanged(app, user["id"])
    assert len(audit_actions(client, admin_tokens)) == len(actions_before) + 1
