"""A login whose password check races a change to the account, on the real MariaDB and Redis.

The change runs, through the real service code, right after the login has checked the
password and before it starts the session, which is the interleaving a concurrent
password reset, deletion or disable can produce.
"""

from __future__ import annotations

import pytest

from service import users
from tests.conftest import PASSWORD


def change_after_check(monkeypatch, change):
    """Make each password check call `change(user_id)` once the password has passed."""
    check = users.authenticate

    def check_then_change(database, passwords, email, password):
        user, password_hash = check(database, passwords, email, password)
        change(user.id)
        return user, password_hash

    monkeypatch.setattr(users, "authenticate", check_then_change)


@pytest.mark.parametrize("change", ["password", "disable", "delete"])
def test_login_racing_change_keeps_no_session(app, client, user, monkeypatch, change):
    svc = app.extensions["gatehouse"]
    changes = {
        "password": lambda user_id: users.set_password(svc.database, svc.passwords, user_id, "a new long password"),
        "disable": lambda user_id: users.set_status(svc.database, user_id, users.STATUS_DISABLED),
        "delete": lambda user_id: users.delete_user(svc.database, user_id),
    }
    change_after_check(monkeypatch, changes[change])

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    assert svc.sessions.list(user["id"]) == []


def test_login_without_change_keeps_session(app, client, user, monkeypatch):
    svc = app.extensions["gatehouse"]
    change_after_check(monkeypatch, lambda _user_id: None)

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 200
    assert len(svc.sessions.list(user["id"])) == 1
