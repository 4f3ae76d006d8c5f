"""The client option file of the backup commands, read by the real mariadb client and mariadb-dump.

Each case creates an account on the test MariaDB with a password that an unquoted
option file would change, and logs in through the file that mysql_defaults_file writes.
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
from service.maintenance.dumps import mysql_defaults_file
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
