"""A login whose password check races a change to the account, on the real MariaDB and Redis.

The change runs, through the real service code, right after the login has checked the
password and before it starts the session, which is the interleaving a concurrent
password reset, deletion or disable can produce.
"""

from __future__ import annotations

import json
import threading

import argon2
import pytest

from service import users
from service.argon2id import Argon2id
from tests.conftest import PASSWORD


def reset_password(svc, user_id: str, password: str) -> None:
    with svc.database.transaction() as cursor:
        users.set_password_hash(cursor, user_id, svc.passwords.hash(password))


def disable_account(svc, user_id: str) -> None:
    with svc.database.transaction() as cursor:
        users.set_status(cursor, user_id, users.STATUS_DISABLED)


def delete_account(svc, user_id: str) -> None:
    with svc.database.transaction() as cursor:
        users.delete_user(cursor, user_id)


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
        "password": lambda user_id: reset_password(svc, user_id, "a new long password"),
        "disable": lambda user_id: disable_account(svc, user_id),
        "delete": lambda user_id: delete_account(svc, user_id),
    }
    change_after_check(monkeypatch, changes[change])

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    assert svc.sessions.list(user["id"]) == []


@pytest.mark.parametrize("change", ["password", "disable", "delete"])
def test_login_during_uncommitted_change_keeps_no_session(app, client, user, change):
    """A change ends the sessions inside its transaction: a login that starts one after that must see the change."""
    svc = app.extensions["gatehouse"]
    statements = {
        "password": lambda cursor: users.set_password_hash(cursor, user["id"], svc.passwords.hash("a new long password")),
        "disable": lambda cursor: users.set_status(cursor, user["id"], users.STATUS_DISABLED),
        "delete": lambda cursor: users.delete_user(cursor, user["id"]),
    }
    sessions_ended = threading.Event()
    errors: list[BaseException] = []

    def change_and_commit_later() -> None:
        try:
            with svc.database.transaction() as cursor:
                statements[change](cursor)
                svc.sessions.revoke_user(user["id"])
                sessions_ended.set()
                # The login below starts its session now and checks the account while this is uncommitted.
                threading.Event().wait(0.5)
        except BaseException as exc:
            errors.append(exc)
            sessions_ended.set()

    changer = threading.Thread(target=change_and_commit_later)
    changer.start()
    assert sessions_ended.wait(10)

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})
    changer.join(10)

    assert errors == []
    assert response.status_code == 401
    assert svc.sessions.list(user["id"]) == []


def test_login_without_change_keeps_session(app, client, user, monkeypatch):
    svc = app.extensions["gatehouse"]
    change_after_check(monkeypatch, lambda _user_id: None)

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 200
    assert len(svc.sessions.list(user["id"])) == 1


# The default before OWASP's 7 MiB configuration became it: a login re-hashes such a password.
OLD_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def stored_hash(svc, user_id: str) -> str:
    with svc.database.cursor() as cursor:
        cursor.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,))
        return cursor.fetchone()["password_hash"]


def change_during_upgrade(monkeypatch, svc, user_id: str, change):
    """Give the account an outdated hash, and make the login's re-hash call `change(hash_function)` once."""
    with svc.database.cursor() as cursor:
        cursor.execute("UPDATE users SET password_hash = %s WHERE id = %s", (OLD_HASHER.hash(PASSWORD), user_id))
    original_hash = svc.passwords.hash
    calls = []

    def hash_then_change(password):
        new_hash = original_hash(password)
        if not calls:
            calls.append(password)
            change(original_hash)
        return new_hash

    monkeypatch.setattr(svc.passwords, "hash", hash_then_change)


def test_login_racing_another_logins_upgrade_succeeds(app, client, user, monkeypatch):
    svc = app.extensions["gatehouse"]
    theirs = []

    def other_login_upgrades(hash_function):
        theirs.append(hash_function(PASSWORD))
        with svc.database.cursor() as cursor:
            cursor.execute("UPDATE users SET password_hash = %s WHERE id = %s", (theirs[0], user["id"]))

    change_during_upgrade(monkeypatch, svc, user["id"], other_login_upgrades)

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 200
    assert len(svc.sessions.list(user["id"])) == 1
    assert stored_hash(svc, user["id"]) == theirs[0]


def test_password_reset_during_upgrade_is_kept(app, client, user, monkeypatch):
    svc = app.extensions["gatehouse"]

    def reset(hash_function):
        reset_password(svc, user["id"], "a new long password")

    change_during_upgrade(monkeypatch, svc, user["id"], reset)

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    assert svc.sessions.list(user["id"]) == []
    assert svc.passwords.verify(stored_hash(svc, user["id"]), "a new long password")
    assert not svc.passwords.verify(stored_hash(svc, user["id"]), PASSWORD)


def test_disable_during_upgrade_keeps_no_session(app, client, user, monkeypatch):
    svc = app.extensions["gatehouse"]
    outdated = []

    def disable(hash_function):
        outdated.append(stored_hash(svc, user["id"]))
        disable_account(svc, user["id"])

    change_during_upgrade(monkeypatch, svc, user["id"], disable)

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 401
    assert svc.sessions.list(user["id"]) == []
    assert stored_hash(svc, user["id"]) == outdated[0]


def change_after_current_password_check(monkeypatch, change):
    """Make a password change call `change(user_id)` right after its current password has passed."""
    check = users.current_password_hash

    def check_then_change(database, passwords, user_id, password):
        checked = check(database, passwords, user_id, password)
        change(user_id)
        return checked

    monkeypatch.setattr(users, "current_password_hash", check_then_change)


def change_own_password(client, tokens):
    return client.post("/v1/users/me/password", headers={"Authorization": f"Bearer {tokens['access_token']}"},
                       json={"current_password": PASSWORD, "new_password": "the holder's new password"})


def test_reset_racing_password_change_is_kept(app, client, user, tokens, monkeypatch):
    svc = app.extensions["gatehouse"]
    change_after_current_password_check(monkeypatch, lambda user_id: reset_password(
        svc, user_id, "the administrator's password"))

    response = change_own_password(client, tokens)

    assert response.status_code == 403
    assert response.get_json()["code"] == "invalid_current_password"
    assert svc.passwords.verify(stored_hash(svc, user["id"]), "the administrator's password")


def test_password_change_after_another_logins_upgrade_succeeds(app, client, user, tokens, monkeypatch):
    svc = app.extensions["gatehouse"]

    def other_login_upgrades(user_id):
        with svc.database.cursor() as cursor:
            cursor.execute("UPDATE users SET password_hash = %s WHERE id = %s", (svc.passwords.hash(PASSWORD), user_id))

    change_after_current_password_check(monkeypatch, other_login_upgrades)

    response = change_own_password(client, tokens)

    assert response.status_code == 200
    assert svc.passwords.verify(stored_hash(svc, user["id"]), "the holder's new password")


def test_login_racing_rehash_with_other_parameters_keeps_session(app, client, user, monkeypatch):
    # A worker with other argon2 parameters, as during a rollout that changes them,
    # re-hashes the same password between this login's check and its session.
    svc = app.extensions["gatehouse"]

    def rehash_elsewhere(user_id):
        with svc.database.cursor() as cursor:
            cursor.execute("UPDATE users SET password_hash = %s WHERE id = %s", (OLD_HASHER.hash(PASSWORD), user_id))

    change_after_check(monkeypatch, rehash_elsewhere)

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 200
    assert len(svc.sessions.list(user["id"])) == 1


class RecordingHasher:
    """An argon2id hasher that records the hashes it is asked to verify against."""

    def __init__(self, hasher: Argon2id) -> None:
        self._hasher = hasher
        self.verified: list[str] = []

    def verify(self, stored: str, password: str) -> bool:
        self.verified.append(stored)
        return self._hasher.verify(stored, password)

    def __getattr__(self, name: str):
        return getattr(self._hasher, name)


@pytest.mark.parametrize(("stored", "scheme"), [
    ("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", "2b"),
    ("", "unknown"),
    # A password stored by mistake: the log names no part of it.
    ("$Tr0ub4dor&3PlainSecret", "unknown"),
    ("$argon2id$v=19$m=1,t=5,p=1$" + "A" * 22 + "$" + "A" * 43, "argon2id"),
], ids=["bcrypt", "empty", "plaintext", "memory_too_small"])
def test_unreadable_stored_hash_fails_like_wrong_password(app, client, user, capsys, monkeypatch, stored, scheme):
    svc = app.extensions["gatehouse"]
    with svc.database.cursor() as cursor:
        cursor.execute("UPDATE users SET password_hash = %s WHERE id = %s", (stored, user["id"]))
    recording = RecordingHasher(svc.passwords._hasher)
    monkeypatch.setattr(svc.passwords, "_hasher", recording)
    capsys.readouterr()

    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})

    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_credentials"
    # The dummy hash ran after the unreadable one, so the response took as long as a wrong password's.
    assert recording.verified[-1] == svc.passwords._dummy_hash
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [logged] = [event for event in events if event["event"] == "password_hash_unreadable"]
    assert logged["user_id"] == user["id"]
    assert logged["scheme"] == scheme
    assert logged["level"] == "error"
    assert "Tr0ub4dor" not in json.dumps(events)
