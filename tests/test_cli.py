"""The `gatehouse users create` command against the real MariaDB."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT


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
