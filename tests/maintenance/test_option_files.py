"""The client option file of the backup commands, read by the real mariadb client and mariadb-dump.

The password cases create an account on the test MariaDB with a password that an
unquoted option file would change, and log in through the file that mysql_defaults_file
writes. The TLS cases connect to a scratch MariaDB with TLS in each GATEHOUSE_MYSQL_TLS_MODE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr
from pymysql.converters import escape_string

from service.config import Settings
from service.maintenance import dumps
from service.maintenance.dumps import BackupFailed, mysql_defaults_file, mysql_tls_options
from service.maintenance.option_files import mysql_option
from tests.helpers import ROOT, run_as_mysql_root

# The service connects from 127.0.0.1, and its account is defined for that host.
HOST = "127.0.0.1"
PASSWORDS = [
    "abc#def",
    " abc ",
    "a\\b",
    'a"b',
    "a'b",
    'a\\"b\\\\',
    '"quoted"',
    "'single'",
    "#",
    "end\\",
    "a\\sb",
    "tab\there",
    "line\nbreak",
    "=;[client]",
    "gr\u00fc\u00dfe",
]


@pytest.fixture
def make_account(settings: Settings):
    """Return a function that creates an account with a password and returns settings that use it."""
    created: list[str] = []

    def create(password: str, *, grant: bool = False) -> Settings:
        user = f"gh_option_{len(created)}"
        run_as_mysql_root(f"CREATE USER '{user}'@'{HOST}' IDENTIFIED BY '{escape_string(password)}'")
        created.append(user)
        if grant:
            run_as_mysql_root(f"GRANT ALL PRIVILEGES ON `{settings.mysql_database}`.* TO '{user}'@'{HOST}'")
        return settings.model_copy(update={"mysql_user": user, "mysql_password": SecretStr(password)})

    yield create
    for user in created:
        run_as_mysql_root(f"DROP USER IF EXISTS '{user}'@'{HOST}'")


@pytest.mark.parametrize("password", PASSWORDS, ids=repr)
def test_client_logs_in_through_option_file(make_account, password):
    account = make_account(password)

    with mysql_defaults_file(account) as defaults_file:
        result = subprocess.run(
            ["mariadb", f"--defaults-file={defaults_file}", "--batch", "--skip-column-names",
             "--execute", "SELECT CURRENT_USER()"],
            capture_output=True, text=True, timeout=30,
        )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{account.mysql_user}@{HOST}"


def test_option_line_quotes_and_escapes():
    assert mysql_option("password", 'a#b "c" \\') == 'password="a#b \\"c\\" \\\\"\n'
    assert mysql_option("port", 3306) == 'port="3306"\n'


def test_backup_create_with_hash_in_password(make_account, tmp_path):
    account = make_account(" a#b c ", grant=True)

    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "backup", "create"], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
        env={**os.environ, "GATEHOUSE_BACKUP_DIR": str(tmp_path), "GATEHOUSE_MYSQL_USER": account.mysql_user,
             "GATEHOUSE_MYSQL_PASSWORD": account.mysql_password.get_secret_value()},
    )

    events = [json.loads(line) for line in (result.stdout + result.stderr).splitlines() if line.startswith("{")]
    assert result.returncode == 0, (events, result.stderr)
    assert [event["event"] for event in events if event["event"].startswith("job_")] == ["job_succeeded"]


def client_output(settings: Settings, sql: str) -> subprocess.CompletedProcess:
    """Run one statement with the mariadb client through the option file of the settings."""
    with mysql_defaults_file(settings) as defaults_file:
        return subprocess.run(
            ["mariadb", f"--defaults-file={defaults_file}", "--batch", "--skip-column-names", "--execute", sql],
            capture_output=True, text=True, timeout=30,
        )


def client_cipher(settings: Settings) -> str:
    result = client_output(settings, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().partition("\t")[2]


@pytest.fixture
def without_server_check(monkeypatch):
    """Leave out the PyMySQL check of mysql_defaults_file, so that the mariadb client meets the server alone."""
    monkeypatch.setattr(dumps, "check_server_tls", lambda settings: None)


def test_tls_lines_per_mode(tls_server):
    ca = tls_server.ca.certificate_path
    ca_line = mysql_option("ssl-ca", ca)
    client_lines = (mysql_option("ssl-cert", tls_server.client_certificate)
                    + mysql_option("ssl-key", tls_server.client_key))

    assert mysql_tls_options(tls_server.settings("disabled")) == "skip-ssl\n"
    assert mysql_tls_options(tls_server.settings("preferred")) == ""
    assert mysql_tls_options(tls_server.settings("required")) == "ssl\n"
    assert mysql_tls_options(tls_server.settings("verify_ca")) == "ssl\n" + ca_line
    assert mysql_tls_options(tls_server.settings("verify_identity")) == "ssl\n" + ca_line + "ssl-verify-server-cert\n"
    assert mysql_tls_options(tls_server.x509_settings()) == ("ssl\n" + ca_line + "ssl-verify-server-cert\n"
                                                             + client_lines)


def test_option_file_ends_with_tls_lines(tls_server):
    settings = tls_server.x509_settings()

    with mysql_defaults_file(settings) as defaults_file:
        text = defaults_file.read_text()

    assert text.startswith("[client]\n")
    assert text.endswith("protocol=TCP\n" + mysql_tls_options(settings))


@pytest.mark.parametrize("mode", ["preferred", "required", "verify_ca", "verify_identity"])
def test_client_uses_tls(tls_server, mode):
    assert client_cipher(tls_server.settings(mode)) != ""


def test_client_disabled_skips_tls(tls_server):
    assert client_cipher(tls_server.settings("disabled")) == ""


def test_client_presents_certificate(tls_server):
    settings = tls_server.x509_settings()

    result = client_output(settings, "SELECT CURRENT_USER()")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{settings.mysql_user}@%"


@pytest.mark.parametrize("mode", ["verify_ca", "verify_identity"])
def test_client_rejects_other_ca(tls_server, without_server_check, mode):
    result = client_output(tls_server.settings(mode, mysql_tls_ca=tls_server.other_ca.certificate_path), "SELECT 1")

    assert result.returncode != 0
    assert "ERROR 2026" in result.stderr


def test_client_checks_host_name_in_verify_identity(tls_server, without_server_check):
    refused = client_output(tls_server.settings("verify_identity", mysql_host="localhost"), "SELECT 1")
    accepted = client_output(tls_server.settings("verify_ca", mysql_host="localhost"), "SELECT 1")

    assert refused.returncode != 0
    assert "ERROR 2026" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr


def test_client_falls_back_without_server_tls(settings, without_server_check):
    # Why mysql_defaults_file checks with PyMySQL first: the client connects in plain text here.
    assert client_cipher(settings.model_copy(update={"mysql_tls_mode": "required"})) == ""


def test_option_file_requires_server_tls(settings):
    with pytest.raises(BackupFailed) as excinfo:
        with mysql_defaults_file(settings.model_copy(update={"mysql_tls_mode": "required"})):
            pass

    assert str(excinfo.value).startswith("TLS to MySQL failed (")
    assert "offers none" in str(excinfo.value)


def test_option_file_checks_server_certificate(tls_server):
    settings = tls_server.settings("verify_ca", mysql_tls_ca=tls_server.other_ca.certificate_path)

    with pytest.raises(BackupFailed) as excinfo:
        with mysql_defaults_file(settings):
            pass

    assert "certificate verify failed" in str(excinfo.value)
    assert "GATEHOUSE_MYSQL_TLS_CA" in str(excinfo.value)


def test_backup_and_restore_over_tls(tls_server, tmp_path):
    """backup create and restore reach a server that requires a client certificate, with a verified host name."""
    settings = tls_server.x509_settings()
    tls_environment = {
        "GATEHOUSE_BACKUP_DIR": str(tmp_path), "GATEHOUSE_MYSQL_HOST": settings.mysql_host,
        "GATEHOUSE_MYSQL_PORT": str(settings.mysql_port), "GATEHOUSE_MYSQL_USER": settings.mysql_user,
        "GATEHOUSE_MYSQL_PASSWORD": settings.mysql_password.get_secret_value(),
        "GATEHOUSE_MYSQL_DATABASE": settings.mysql_database, "GATEHOUSE_MYSQL_TLS_MODE": "verify_identity",
        "GATEHOUSE_MYSQL_TLS_CA": str(settings.mysql_tls_ca), "GATEHOUSE_MYSQL_TLS_CERT": str(settings.mysql_tls_cert),
        "GATEHOUSE_MYSQL_TLS_KEY": str(settings.mysql_tls_key),
    }

    def gatehouse(*args: str) -> list[dict]:
        result = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=300, env={**os.environ, **tls_environment})
        events = [json.loads(line) for line in (result.stdout + result.stderr).splitlines() if line.startswith("{")]
        assert result.returncode == 0, (events, result.stderr)
        return events

    created = gatehouse("backup", "create")
    backup = next(event["backup"] for event in created if event["event"] == "job_succeeded")
    restored = gatehouse("backup", "restore", backup, "--yes")

    assert [event["event"] for event in restored if event["event"].startswith("job_")] == ["job_succeeded"]
