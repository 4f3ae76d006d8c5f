"""The `gatehouse users` commands against the real MariaDB and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from service.config import load_settings
from tests.blueprints.test_auth import run_sql
from tests.conftest import PASSWORD
from tests.helpers import ROOT, bearer, wait_until


def run_create(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "users", "create", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})


def test_create_reads_password_from_environment(client):
    result = run_create("--email", "ops@example.com", env={"GATEHOUSE_NEW_USER_PASSWORD": "from the environment"})
    assert result.returncode == 0, result.stderr
    login = client.post("/v1/auth/login", json={"email": "ops@example.com", "password": "from the environment"})
    assert login.status_code == 200


def test_create_reads_password_from_stdin(client):
    result = run_create("--email", "ops@example.com", stdin="from standard input\n")
    assert result.returncode == 0, result.stderr
    login = client.post("/v1/auth/login", json={"email": "ops@example.com", "password": "from standard input"})
    assert login.status_code == 200
    assert "from standard input" not in result.stdout + result.stderr


def test_commands_skip_server_metrics_dir(client, tmp_path):
    # As when an operator runs a command inside a server's pod, with its environment.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()

    result = run_create("--email", "ops@example.com", stdin="long enough password\n",
                        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})

    assert result.returncode == 0, result.stderr
    assert list(metrics_dir.iterdir()) == []


def test_create_rejects_unknown_role_before_creating(client):
    result = run_create("--email", "ops@example.com", "--role", "wizard", stdin="long enough password\n")
    assert result.returncode == 2
    assert "unknown role wizard" in result.stderr
    login = client.post("/v1/auth/login", json={"email": "ops@example.com", "password": "long enough password"})
    assert login.status_code == 401


def test_create_rejects_weak_password():
    result = run_create("--email", "ops@example.com", stdin="short\n")
    assert result.returncode == 2
    assert "invalid password" in result.stderr


def test_create_duplicate_fails(client):
    assert run_create("--email", "ops@example.com", stdin="long enough password\n").returncode == 0
    result = run_create("--email", "OPS@example.com", stdin="long enough password\n")
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert "/roles/" in result.stderr


def test_create_without_password_says_how():
    result = run_create("--email", "ops@example.com", stdin="")
    assert result.returncode == 2
    assert "no password given" in result.stderr
    assert "GATEHOUSE_NEW_USER_PASSWORD" in result.stderr
    assert "configuration" not in result.stderr


def test_create_invalid_email_without_pydantic_prefix():
    result = run_create("--email", "not-an-email", stdin="long enough password\n")
    assert result.returncode == 2
    assert "invalid email" in result.stderr
    assert "Value error" not in result.stderr


def test_create_rejects_look_alike_email(client):
    result = run_create("--email", "\u0430lice@example.com", stdin="long enough password\n")
    assert result.returncode == 2
    assert "invalid email" in result.stderr
    assert "U+0430 CYRILLIC SMALL LETTER A" in result.stderr
    login = client.post("/v1/auth/login", json={"email": "\u0430lice@example.com", "password": "long enough password"})
    assert login.status_code == 401


def test_create_rejects_long_local_part(client):
    email = "a" * 65 + "@example.com"
    result = run_create("--email", email, stdin="long enough password\n")

    assert result.returncode == 2
    assert "invalid email" in result.stderr
    assert "too long before the @-sign" in result.stderr
    assert client.post("/v1/auth/login", json={"email": email, "password": "long enough password"}).status_code == 401


def test_create_prints_only_the_id(client):
    result = run_create("--email", "ops@example.com", stdin="long enough password\n")
    assert result.returncode == 0, result.stderr
    user_id = result.stdout.strip()
    assert result.stdout == user_id + "\n"
    assert len(user_id) == 32
    assert '"event": "user_created"' in result.stderr or '"event":"user_created"' in result.stderr


NEW_PASSWORD = "a new password for bob"


def run_users(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "users", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})


def register_and_login(client, email: str = "bob@example.com") -> tuple[str, dict]:
    registered = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.get_json()
    login = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.get_json()
    return registered.get_json()["id"], login.get_json()


def wait_until_revoked(client, pair: dict) -> None:
    """Wait until the app rejects the access token, as the command's revocation reaches it through pub/sub."""
    wait_until(lambda: client.get("/v1/users/me", headers=bearer(pair["access_token"])).status_code == 401, 2.0,
               "the app still accepts the access token of an ended session")
    me = client.get("/v1/users/me", headers=bearer(pair["access_token"]))
    assert me.get_json()["code"] == "session_revoked"


def cli_audit_entries(action: str) -> list[dict]:
    rows = run_sql(load_settings(), "SELECT actor_id, target_id, detail, client_ip FROM audit_log WHERE action = %s",
                   (action,))
    return [{**row, "detail": json.loads(row["detail"])} for row in rows]


def test_create_grants_repeated_role_once(client):
    result = run_create("--email", "ops@example.com", "--role", "admin", "--role", "admin",
                        stdin="long enough password\n")

    assert result.returncode == 0, result.stderr
    user_id = result.stdout.strip()
    assert cli_audit_entries("role_granted") == [
        {"actor_id": None, "target_id": user_id, "detail": {"role": "admin", "via": "cli"}, "client_ip": ""}]
    assert cli_audit_entries("user_created") == [
        {"actor_id": None, "target_id": user_id, "detail": {"via": "cli"}, "client_ip": ""}]
    [created] = [record for record in map(json.loads, result.stderr.splitlines()) if record["event"] == "user_created"]
    assert created["roles"] == ["admin"]


def test_create_without_role_audited(client):
    result = run_create("--email", "plain@example.com", stdin="long enough password\n")

    assert result.returncode == 0, result.stderr
    assert cli_audit_entries("user_created") == [
        {"actor_id": None, "target_id": result.stdout.strip(), "detail": {"via": "cli"}, "client_ip": ""}]
    assert cli_audit_entries("role_granted") == []


def test_set_password_from_stdin(client):
    user_id, pair = register_and_login(client)

    result = run_users("set-password", "--email", "bob@example.com", stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 0, result.stderr
    assert result.stdout == user_id + "\n"
    assert NEW_PASSWORD not in result.stdout + result.stderr
    wait_until_revoked(client, pair)
    refresh = client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refresh.status_code == 401
    old = client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD})
    new = client.post("/v1/auth/login", json={"email": "bob@example.com", "password": NEW_PASSWORD})
    assert old.status_code == 401
    assert new.status_code == 200


def test_set_password_is_audited(client):
    user_id, _ = register_and_login(client)

    result = run_users("set-password", "--email", "bob@example.com", env={"GATEHOUSE_NEW_USER_PASSWORD": NEW_PASSWORD})

    assert result.returncode == 0, result.stderr
    assert cli_audit_entries("password_reset") == [
        {"actor_id": None, "target_id": user_id, "detail": {"sessions_ended": 1, "via": "cli"}, "client_ip": ""}]
    assert '"action":"password_reset"' in result.stderr.replace(" ", "")


def test_set_password_finds_email_as_login_does(client):
    user_id, _ = register_and_login(client)

    result = run_users("set-password", "--email", " BOB@Example.COM ", stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 0, result.stderr
    assert result.stdout == user_id + "\n"


def test_set_password_rejects_weak_password(client):
    register_and_login(client)

    result = run_users("set-password", "--email", "bob@example.com", stdin="short\n")

    assert result.returncode == 2
    assert "invalid password" in result.stderr
    assert result.stdout == ""
    assert client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).status_code == 200


def test_set_password_without_password_says_how(client):
    register_and_login(client)

    result = run_users("set-password", "--email", "bob@example.com", stdin="")

    assert result.returncode == 2
    assert "no password given" in result.stderr
    assert "GATEHOUSE_NEW_USER_PASSWORD" in result.stderr


def test_set_password_unknown_email_fails():
    result = run_users("set-password", "--email", "nobody@example.com", stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 1
    assert "no account has the email nobody@example.com" in result.stderr
    assert result.stdout == ""
    assert cli_audit_entries("password_reset") == []


def test_set_password_invalid_email_fails():
    result = run_users("set-password", "--email", "not-an-email", stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 2
    assert "invalid email" in result.stderr
    assert "Value error" not in result.stderr


def test_delete_without_yes_deletes_nothing(client):
    _, pair = register_and_login(client)

    result = run_users("delete", "--email", "bob@example.com")

    assert result.returncode == 2
    assert "deleting the account of bob@example.com removes it" in result.stderr
    assert "--yes" in result.stderr
    assert result.stdout == ""
    assert client.get("/v1/users/me", headers=bearer(pair["access_token"])).status_code == 200
    assert cli_audit_entries("user_deleted") == []


def test_delete_confirmation_names_stored_email(client):
    register_and_login(client)

    # Fullwidth letters and capitals reach the account bob@example.com.
    result = run_users("delete", "--email", "\uff22OB@Example.com")

    assert result.returncode == 2
    assert "deleting the account of bob@example.com removes it" in result.stderr


def test_delete_ends_sessions_and_frees_email(client):
    user_id, pair = register_and_login(client)

    result = run_users("delete", "--email", "bob@example.com", "--yes")

    assert result.returncode == 0, result.stderr
    assert result.stdout == user_id + "\n"
    wait_until_revoked(client, pair)
    assert client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401
    assert list(run_sql(load_settings(), "SELECT id FROM users WHERE id = %s", (user_id,))) == []
    registered = client.post("/v1/auth/register", json={"email": "bob@example.com", "password": PASSWORD})
    assert registered.status_code == 201
    assert registered.get_json()["id"] != user_id


def test_delete_is_audited_without_email(client):
    user_id, _ = register_and_login(client)

    result = run_users("delete", "--email", "bob@example.com", "--yes")

    assert result.returncode == 0, result.stderr
    assert cli_audit_entries("user_deleted") == [
        {"actor_id": None, "target_id": user_id, "detail": {"sessions_ended": 1, "via": "cli"}, "client_ip": ""}]
    assert "bob@example.com" not in result.stderr


def test_delete_unknown_email_fails():
    result = run_users("delete", "--email", "nobody@example.com", "--yes")

    assert result.returncode == 1
    assert "no account has the email nobody@example.com" in result.stderr
    assert result.stdout == ""


def test_delete_unknown_email_without_yes_fails():
    result = run_users("delete", "--email", "nobody@example.com")
    set_password = run_users("set-password", "--email", "nobody@example.com", stdin=NEW_PASSWORD + "\n")

    assert result.returncode == 1
    assert result.returncode == set_password.returncode
    assert "no account has the email nobody@example.com" in result.stderr
    assert "--yes" not in result.stderr
    assert result.stdout == ""


def test_delete_invalid_email_without_yes_fails():
    result = run_users("delete", "--email", "not-an-email")

    assert result.returncode == 2
    assert "invalid email" in result.stderr
    assert "--yes" not in result.stderr


def test_create_strips_crlf_line_ending(client):
    result = run_create("--email", "ops@example.com", stdin="typed on windows\r\n")
    assert result.returncode == 0, result.stderr

    login = client.post("/v1/auth/login", json={"email": "ops@example.com", "password": "typed on windows"})

    assert login.status_code == 200


def test_keys_generate_prints_the_new_path(tmp_path):
    result = subprocess.run([sys.executable, "-m", "service.cli", "keys", "generate", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert result.returncode == 0, result.stderr
    [path] = tmp_path.glob("*.pem")
    assert result.stdout == f"{path}\n"
