"""The MySQL pool against the real test MariaDB: lost connections, exhaustion and autocommit."""

from __future__ import annotations

import time
import uuid

import pymysql
import pytest

from service import database as database_module
from service import errors
from service.app import close_app, create_app
from service.config import Settings, load_settings
from service.context import EXTENSION_KEY
from service.database import Database, connect_args
from service.errors import DatabaseUnavailable
from tests.helpers import assert_pool_wait_problem, captured_logs, run_as_mysql_root

POOL_WAIT_SECONDS = 0.3


@pytest.fixture
def database(settings: Settings):
    """A pool of one connection, so every checkout hands out the same connection while it lives."""
    database = Database(load_settings({"mysql_pool_size": 1, "mysql_pool_wait_seconds": POOL_WAIT_SECONDS}))
    yield database
    database.close()


def connection_id(database: Database) -> int:
    with database.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID() AS id")
        return cursor.fetchone()["id"]


def session_pings(database: Database) -> tuple[int, int]:
    """Return the connection id and the pings it has received (MariaDB counts COM_PING in Com_admin_commands)."""
    with database.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Com_admin_commands'")
        pings = int(cursor.fetchone()["Value"])
        cursor.execute("SELECT CONNECTION_ID() AS id")
        return cursor.fetchone()["id"], pings


def wait_until_closed_by_server(thread_id: int, timeout: float = 10.0) -> None:
    """Wait until the server no longer lists the connection, so the test starts from a closed one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = run_as_mysql_root(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {thread_id}")
        if listed.strip() == "0":
            return
        time.sleep(0.1)
    raise AssertionError(f"connection {thread_id} is still open on the server after {timeout} s")


def test_pool_reuses_one_connection(database):
    # The other tests rely on this: without reuse they would never check out a dead connection.
    assert connection_id(database) == connection_id(database)


@pytest.mark.parametrize("ping_after_idle_seconds", [database_module.PING_AFTER_IDLE_SECONDS, 0.0])
def test_killed_connection_replaced_on_checkout(database, monkeypatch, ping_after_idle_seconds):
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_SECONDS", ping_after_idle_seconds)
    killed_id = connection_id(database)
    run_as_mysql_root(f"KILL {killed_id}")
    wait_until_closed_by_server(killed_id)

    with database.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID() AS id, 1 + 1 AS two")
        row = cursor.fetchone()

    assert row["two"] == 2
    assert row["id"] != killed_id
    assert database.in_use == 0


def test_recent_connection_taken_without_ping(database):
    first_id, pings_before = session_pings(database)

    second_id, pings_after = session_pings(database)

    assert second_id == first_id
    assert pings_after == pings_before


def test_idle_connection_pinged(database, monkeypatch):
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_SECONDS", 0.2)
    first_id, pings_before = session_pings(database)
    time.sleep(0.3)

    second_id, pings_after = session_pings(database)

    assert second_id == first_id
    assert pings_after == pings_before + 1


@pytest.mark.parametrize("ping_after_idle_seconds", [database_module.PING_AFTER_IDLE_SECONDS, 0.0])
def test_idle_connection_past_wait_timeout_replaced(database, monkeypatch, ping_after_idle_seconds):
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE_SECONDS", ping_after_idle_seconds)
    with database.cursor() as cursor:
        cursor.execute("SET SESSION wait_timeout = 1")
        cursor.execute("SELECT CONNECTION_ID() AS id")
        idle_id = cursor.fetchone()["id"]

    time.sleep(2)
    wait_until_closed_by_server(idle_id)

    with database.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID() AS id, @@SESSION.wait_timeout AS wait_timeout")
        row = cursor.fetchone()

    assert row["id"] != idle_id
    # A new session starts from the server default, not from the closed session's setting.
    assert row["wait_timeout"] != 1


def test_exhausted_pool_raises_after_wait(database):
    with database.connection():
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            with database.connection():
                pass
        elapsed = time.monotonic() - started

    assert elapsed >= POOL_WAIT_SECONDS * 0.8
    assert elapsed < 5
    assert database.in_use == 0

    # The failed checkout gave its slot back, so the pool serves again.
    with database.cursor() as cursor:
        cursor.execute("SELECT 1 AS one")
        assert cursor.fetchone()["one"] == 1


def test_request_gets_503_when_pool_exhausted():
    app = create_app({"mysql_pool_size": 1, "mysql_pool_wait_seconds": POOL_WAIT_SECONDS})
    try:
        database = app.extensions[EXTENSION_KEY].database
        client = app.test_client()
        credentials = {"email": "nobody@example.com", "password": "wrong password"}

        # The semaphore is not reentrant, so the test client's checkout in this thread waits too.
        with database.connection():
            started = time.monotonic()
            response = client.post("/v1/auth/login", json=credentials)
            elapsed = time.monotonic() - started

        assert_pool_wait_problem(response, elapsed, POOL_WAIT_SECONDS, "database_unavailable")

        # With the connection back in the pool, the same request reaches MySQL.
        after = client.post("/v1/auth/login", json=credentials)
        assert after.status_code == 401
        assert after.get_json()["code"] == "invalid_credentials"
    finally:
        close_app(app)


def test_autocommit_survives_reconnect(database, settings: Settings):
    killed_id = connection_id(database)
    run_as_mysql_root(f"KILL {killed_id}")
    wait_until_closed_by_server(killed_id)

    user_id = uuid.uuid4().hex
    email = f"{user_id}@example.com"
    with database.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID() AS id")
        assert cursor.fetchone()["id"] != killed_id
        cursor.execute(
            "INSERT INTO users (id, email, password_hash, status, created_at, updated_at)"
            " VALUES (%s, %s, 'not-a-hash', 'active', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
            (user_id, email),
        )

    # A row left in an open transaction on the pooled connection would be invisible here.
    fresh = pymysql.connect(**connect_args(settings))
    try:
        with fresh.cursor() as cursor:
            cursor.execute("SELECT email FROM users WHERE id = %s", (user_id,))
            row = cursor.fetchone()
    finally:
        fresh.close()

    assert row is not None
    assert row["email"] == email


def test_timed_out_write_not_repeated(settings):
    # The server finishes the INSERT after the client gave up reading; re-running it
    # on a new connection would store a second row. The table has no unique key, so
    # a repeated INSERT cannot be stopped by a constraint either.
    table = f"{settings.mysql_database}.pool_write_probe"
    run_as_mysql_root(f"CREATE TABLE IF NOT EXISTS {table} (marker VARCHAR(32) NOT NULL)")
    database = Database(load_settings({"mysql_pool_size": 1, "mysql_read_timeout": 1}))
    marker = uuid.uuid4().hex
    try:
        with pytest.raises(pymysql.err.OperationalError):
            with database.cursor() as cursor:
                cursor.execute("INSERT INTO pool_write_probe (marker) SELECT %s FROM (SELECT SLEEP(1.3)) AS delay",
                               (marker,))
        time.sleep(2.0)
        rows = run_as_mysql_root(f"SELECT COUNT(*) FROM {table} WHERE marker = '{marker}'")
        assert rows.strip() == "1"
    finally:
        database.close()
        run_as_mysql_root(f"DROP TABLE IF EXISTS {table}")


def test_closed_connection_failure_explained_in_log():
    """PyMySQL's InterfaceError(0, '') for a closed connection gets a cause in dependency_failed."""
    with captured_logs(errors) as logs:
        errors.DependencyFailureLog().failed("mysql", pymysql.err.InterfaceError(0, ""))

    [line] = [entry for entry in logs if entry["event"] == "dependency_failed"]
    assert line["error"].startswith("InterfaceError(0, '')")
    assert "already closed" in line["error"]
