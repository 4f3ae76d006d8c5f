"""The gunicorn master exits with a message naming the cause when a setting or dependency is unusable."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pymysql
import pytest

from service.config import Settings
from service.database import connect_args
from service.migrate import MIGRATION_TABLE, expected_versions
from tests.helpers import Gunicorn, free_port, run_as_mysql_root

pytestmark = pytest.mark.e2e

# Every case fails within a few seconds, so the bound only catches a master that never exits.
EXIT_TIMEOUT_SECONDS = 30


def start_until_exit(tmp_path: Path, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
                     timeout: float = EXIT_TIMEOUT_SECONDS) -> tuple[int, str]:
    """Start a gunicorn master, wait for it to exit and return its exit code and output."""
    gunicorn = Gunicorn(tmp_path, env=env)
    for name in unset:
        gunicorn.env.pop(name, None)
    gunicorn.start()
    try:
        returncode = gunicorn.wait_exit(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"gunicorn still running after {timeout} s:\n{gunicorn.output()}") from None
    finally:
        gunicorn.stop()
    return returncode, gunicorn.output()


def assert_no_mysql_password(output: str) -> None:
    password = os.environ.get("GATEHOUSE_MYSQL_PASSWORD", "")
    assert password
    assert password not in output


def test_empty_keys_dir_stops_start(tmp_path):
    keys_dir = tmp_path / "no-keys"
    keys_dir.mkdir()

    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_KEYS_DIR": str(keys_dir)})

    assert returncode != 0, output
    assert "signing key" in output
    assert "gatehouse keys generate" in output
    assert str(keys_dir) in output
    assert_no_mysql_password(output)


def test_unreachable_mysql_stops_start(tmp_path):
    # Nothing listens on a port the kernel just handed out and released.
    env = {"GATEHOUSE_MYSQL_PORT": str(free_port()), "GATEHOUSE_STARTUP_TIMEOUT_SECONDS": "1"}

    # The bound is below the default start-up timeout of 30 s, so a master that ignores the setting fails here.
    returncode, output = start_until_exit(tmp_path, env, timeout=20)

    assert returncode != 0, output
    assert "mysql unreachable" in output
    assert "startup_check_retrying" in output
    assert_no_mysql_password(output)


def test_sigterm_during_checks_stops_check_process(tmp_path):
    # The checks retry an unreachable MySQL for up to 20 s, so they are still running at the signal.
    gunicorn = Gunicorn(tmp_path, env={"GATEHOUSE_MYSQL_PORT": str(free_port()),
                                       "GATEHOUSE_STARTUP_TIMEOUT_SECONDS": "20"})
    gunicorn.start()
    try:
        deadline = time.monotonic() + 20
        while "startup_check_retrying" not in gunicorn.output():
            assert time.monotonic() < deadline, gunicorn.output()
            time.sleep(0.05)
        checks = [pid for pid, command in processes_of(gunicorn.process.pid).items() if "service.cli check" in command]
        assert len(checks) == 1

        gunicorn.process.send_signal(signal.SIGTERM)
        returncode = gunicorn.wait_exit(timeout=10)
    finally:
        gunicorn.stop()

    assert returncode == 128 + signal.SIGTERM
    assert "startup_interrupted" in gunicorn.output()
    assert not Path(f"/proc/{checks[0]}").exists()


def processes_of(parent: int) -> dict[int, str]:
    """Return the command line of each child process of parent, by pid."""
    children = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                children[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return children


def test_misspelled_setting_logged_at_start(tmp_path):
    # The start fails fast on an unreachable MySQL, after the master logged its settings.
    env = {"GATEHOUSE_MYSQL_PASWORD": "typo-value-7f3a", "GATEHOUSE_MYSQL_PORT": str(free_port()),
           "GATEHOUSE_STARTUP_TIMEOUT_SECONDS": "1"}

    _, output = start_until_exit(tmp_path, env, timeout=20)

    [line] = [line for line in output.splitlines() if "settings_unknown_variables" in line]
    assert json.loads(line)["names"] == ["GATEHOUSE_MYSQL_PASWORD"]
    assert "typo-value-7f3a" not in output


def test_failed_check_reason_in_log_file(tmp_path):
    log_path = tmp_path / "logs" / "gatehouse.log"
    log_path.parent.mkdir()
    env = {"GATEHOUSE_LOG_FILE": str(log_path), "GATEHOUSE_MYSQL_PORT": str(free_port()),
           "GATEHOUSE_STARTUP_TIMEOUT_SECONDS": "1"}

    returncode, output = start_until_exit(tmp_path, env, timeout=20)

    assert returncode == 3, output
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    reasons = [event["error"] for event in events if event["event"] == "startup_check_failed" and "error" in event]
    assert len(reasons) == 1
    assert reasons[0].startswith("mysql unreachable after ")


def test_mysql_without_tls_stops_start_at_once(tmp_path):
    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_MYSQL_TLS_MODE": "required"}, timeout=20)

    assert returncode == 3, output
    assert "TLS to MySQL failed" in output
    assert "GATEHOUSE_MYSQL_TLS_MODE" in output
    assert "startup_check_retrying" not in output
    assert_no_mysql_password(output)


def test_rejected_mysql_login_stops_start_at_once(tmp_path):
    # The bound is below the default start-up timeout of 30 s, so a master that retries fails here.
    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_MYSQL_PASSWORD": "wrong-password"}, timeout=20)

    assert returncode == 3, output
    assert "MySQL error 1045" in output
    assert "GATEHOUSE_MYSQL_PASSWORD" in output
    assert "startup_check_retrying" not in output
    assert "wrong-password" not in output


def test_malformed_workers_stops_start(tmp_path):
    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_WORKERS": "many"})

    assert returncode != 0, output
    assert "GATEHOUSE_WORKERS" in output
    assert "invalid" in output


def assert_one_line_configuration_error(returncode: int, output: str, variable: str,
                                        problem: str = "is invalid (") -> None:
    """Check that the master exited 2 with one line naming the variable and the problem, and no stack trace."""
    assert returncode == 2, output
    lines = [line for line in output.splitlines() if variable in line]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"gatehouse: invalid configuration: {variable} {problem}"), output
    assert "Traceback" not in output


def test_log_file_that_is_directory_stops_start(tmp_path):
    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_LOG_FILE": str(tmp_path)})

    assert_one_line_configuration_error(returncode, output, "GATEHOUSE_LOG_FILE")
    assert "is a directory" in output
    assert "Logging error" not in output


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_log_file_in_sysfs_stops_start(tmp_path):
    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_LOG_FILE": "/sys/gatehouse.log"})

    assert_one_line_configuration_error(returncode, output, "GATEHOUSE_LOG_FILE")
    assert "cannot create a file in directory /sys" in output


@pytest.mark.parametrize("url", ["notaurl", "redis://:{password}@127.0.0.1:abc/0", "redis://:{password}@[::1/0",
                                 "redis://:{password}@127.0.0.1:6379/0?db=one",
                                 "redis://:{password}@127.0.0.1:6379/0?socket_timeout=10"])
def test_invalid_redis_url_stops_start(tmp_path, url):
    password = "redis-url-secret-5d2b"

    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_REDIS_URL": url.format(password=password)})

    assert_one_line_configuration_error(returncode, output, "GATEHOUSE_REDIS_URL")
    assert password not in output


@pytest.mark.parametrize("variable", ["GATEHOUSE_KEYS_DIR", "GATEHOUSE_MYSQL_PASSWORD", "GATEHOUSE_MYSQL_HOST"])
def test_empty_setting_stops_start(tmp_path, variable):
    returncode, output = start_until_exit(tmp_path, {variable: ""})

    assert_one_line_configuration_error(returncode, output, variable, problem="is empty: ")
    assert "startup_check_retrying" not in output


def test_empty_metrics_dir_stops_start(tmp_path):
    returncode, output = start_until_exit(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": ""})

    assert_one_line_configuration_error(returncode, output, "PROMETHEUS_MULTIPROC_DIR", problem="is empty: ")


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_metrics_dir_in_sysfs_stops_start(tmp_path):
    returncode, output = start_until_exit(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": "/sys/gatehouse-metrics"})

    assert_one_line_configuration_error(returncode, output, "PROMETHEUS_MULTIPROC_DIR")
    assert "/sys/gatehouse-metrics" in output


def test_missing_mysql_password_stops_start(tmp_path):
    returncode, output = start_until_exit(tmp_path, unset=("GATEHOUSE_MYSQL_PASSWORD",))

    assert returncode != 0, output
    assert "GATEHOUSE_MYSQL_PASSWORD" in output
    assert "not set" in output


def application_account(settings: Settings) -> str:
    """Return the MariaDB account the service logs in as, quoted for GRANT and REVOKE."""
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER() AS account")
            user, _, host = cursor.fetchone()["account"].rpartition("@")
    finally:
        connection.close()
    return f"'{user}'@'{host}'"


@pytest.fixture
def empty_database(settings: Settings):
    """A database without tables that the service account may use, dropped after the test."""
    name = f"gatehouse_empty_{uuid.uuid4().hex[:12]}"
    account = application_account(settings)
    run_as_mysql_root(f"CREATE DATABASE `{name}`")
    try:
        run_as_mysql_root(f"GRANT ALL PRIVILEGES ON `{name}`.* TO {account}")
        try:
            yield name
        finally:
            run_as_mysql_root(f"REVOKE ALL PRIVILEGES ON `{name}`.* FROM {account}")
    finally:
        run_as_mysql_root(f"DROP DATABASE `{name}`")


def test_unmigrated_database_stops_start(tmp_path, empty_database):
    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_MYSQL_DATABASE": empty_database})

    assert returncode != 0, output
    assert "schema missing" in output
    assert "gatehouse migrate" in output
    # A missing schema is not a connection failure, so start-up fails at once instead of retrying.
    assert "startup_check_retrying" not in output


def test_pending_migrations_stop_start(tmp_path, empty_database, settings: Settings):
    # yoyo's table exists but records no migration, as in a database migrated by an older release.
    run_as_mysql_root(
        f"CREATE TABLE `{empty_database}`.`{MIGRATION_TABLE}` LIKE `{settings.mysql_database}`.`{MIGRATION_TABLE}`"
    )

    returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_MYSQL_DATABASE": empty_database})

    assert returncode != 0, output
    assert "pending migrations" in output
    for version in expected_versions():
        assert version in output
    assert "gatehouse migrate" in output


def test_expected_versions_match_yoyo():
    from yoyo import read_migrations

    from service.migrate import migrations_dir

    assert expected_versions() == {migration.id for migration in read_migrations(migrations_dir())}


# No unresolvable host name: resolving one would query a DNS server.
@pytest.mark.parametrize("bind", ["taken", "not_local"])
def test_unusable_bind_address_stops_start_at_once(tmp_path, bind):
    """A port in use or an address the host lacks stops the start at once, with a line naming GATEHOUSE_BIND."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = {"taken": f"127.0.0.1:{holder.getsockname()[1]}", "not_local": "192.0.2.1:8000"}[bind]

        started = time.monotonic()
        returncode, output = start_until_exit(tmp_path, {"GATEHOUSE_BIND": address})
        seconds = time.monotonic() - started

    assert returncode == 3, output
    [failure] = [json.loads(line) for line in output.splitlines() if '"bind_failed"' in line]
    assert failure["error"].startswith(f"GATEHOUSE_BIND {address}: ")
    assert "startup_checks_passed" not in output
    # gunicorn's own bind retries take 5 s.
    assert seconds < 5
