"""New passwords on the blocklist get 422 password_blocklisted on every route that sets one, and nothing changes."""

from __future__ import annotations

import pytest

from service.app import close_app, create_app
from service.argon2id import Argon2id
from service.errors import PasswordBlocklisted
from tests.blueprints.test_auth import run_sql
from tests.conftest import PASSWORD
from tests.helpers import bearer
from tests.test_cli import register_and_login, run_create, run_users

REFUSED = [
    ("alice@example.com", "Password1"),
    ("alice@example.com", "ｑｗｅｒｔｙｕｉｏｐ"),
    ("alice.smith@example.com", "alice.smith2024!"),
    ("alice@example.com", "alice@example.com"),
    ("alice@example.com", "gatehouse!"),
    # Blank once spaces and invisible characters are left out, or a short unit repeated.
    ("alice@example.com", " " * 8),
    ("alice@example.com", "\u200b" * 8),
    ("alice@example.com", "!@" * 5),
]


def assert_blocklisted(response, field: str) -> None:
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["code"] == "password_blocklisted"
    assert problem["field"] == field
    assert problem["detail"]


@pytest.mark.parametrize(("email", "password"), REFUSED)
def test_register_refuses_and_stores_nothing(client, settings, email, password):
    response = client.post("/v1/auth/register", json={"email": email, "password": password})

    assert_blocklisted(response, "password")
    assert password not in response.get_data(as_text=True)
    assert run_sql(settings, "SELECT COUNT(*) AS n FROM users")[0]["n"] == 0


def test_password_change_refuses_and_keeps_the_password(client, tokens):
    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": PASSWORD, "new_password": "iloveyou"})

    assert_blocklisted(response, "new_password")
    login = client.post("/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    assert login.status_code == 200
    # The session that asked is still live.
    assert client.get("/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 200


def test_change_rejects_email_before_current(client, tokens):
    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": "not the password", "new_password": "Alice2026!"})

    assert_blocklisted(response, "new_password")


def test_admin_reset_refuses_and_keeps_sessions(client, admin_tokens, tokens, user):
    response = client.put(f"/v1/admin/users/{user['id']}/password", json={"password": "trustno1"},
                          headers=bearer(admin_tokens["access_token"]))

    assert_blocklisted(response, "password")
    assert client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 200


def test_login_with_a_listed_password_still_works(client, settings):
    """Accounts whose password predates the list keep logging in; only new passwords are checked."""
    client.post("/v1/auth/register", json={"email": "alice@example.com", "password": PASSWORD})
    legacy_hash = Argon2id(settings.argon2_memory_kib, settings.argon2_time_cost,
                           settings.argon2_parallelism).hash("password1")
    run_sql(settings, "UPDATE users SET password_hash = %s", (legacy_hash,))

    login = client.post("/v1/auth/login", json={"email": "alice@example.com", "password": "password1"})

    assert login.status_code == 200


def test_operator_file_adds_entries(settings, tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_text("Acme Rocket Sled\n")
    app = create_app({"password_blocklist_file": str(path)})
    try:
        client = app.test_client()
        refused = client.post("/v1/auth/register", json={"email": "wile@example.com", "password": "acme rocket sled"})
        accepted = client.post("/v1/auth/register", json={"email": "wile@example.com", "password": PASSWORD})
    finally:
        close_app(app)

    assert_blocklisted(refused, "password")
    assert accepted.status_code == 201


def test_cli_create_refuses():
    result = run_create("--email", "ops@example.com", stdin="letmein1\n")

    assert result.returncode == 2
    assert "commonly used" in result.stderr
    assert "letmein1" not in result.stdout + result.stderr


def test_cli_set_password_refuses(client):
    register_and_login(client)

    result = run_users("set-password", "--email", "bob@example.com", stdin="bob@example.com\n")

    assert result.returncode == 2
    assert "email address" in result.stderr
    assert client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).status_code == 200


@pytest.mark.parametrize("password", ["new password\n", "tab\tseparated words", "nul\x00in the middle"])
def test_new_password_with_control_characters_rejected(client, settings, password):
    response = client.post("/v1/auth/register", json={"email": "alice@example.com", "password": password})

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "password"
    assert "control characters" in response.get_json()["detail"]
    assert run_sql(settings, "SELECT COUNT(*) AS n FROM users")[0]["n"] == 0


def test_operator_list_survives_damaged_file(settings, tmp_path):
    """A worker checks new passwords against the list its settings check read, not the file as it is now."""
    from service.passwords import Passwords

    path = tmp_path / "blocked.txt"
    path.write_text("acme rocket sled\n")
    passwords = Passwords(settings.model_copy(update={"password_blocklist_file": path}))
    path.write_bytes(b"acme rocket sled\n\xff not UTF-8\n")

    with pytest.raises(PasswordBlocklisted):
        passwords.check_new("Acme Rocket Sled", email="wile@example.com", field="password")
    passwords.check_new(PASSWORD, email="wile@example.com", field="password")
