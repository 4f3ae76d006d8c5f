"""Pooled MySQL connections that the server closed while the service was idle, through gunicorn with 2 workers."""

from __future__ import annotations

import time

import pytest
import requests

from service.config import load_settings
from tests.conftest import PASSWORD
from tests.helpers import Gunicorn, run_as_mysql_root, wait_until

pytestmark = pytest.mark.e2e

WAIT_TIMEOUT_SECONDS = 3
IDLE_SECONDS = 6
# Enough new connections that both workers check out a pooled MySQL connection.
REQUESTS = 8


def open_service_connections() -> int:
    """Return how many connections of the service's MySQL user the server lists."""
    user = load_settings().mysql_user
    rows = run_as_mysql_root(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'")
    return int(rows.strip())


def login(url: str) -> int:
    body = {"email": "idle@example.com", "password": PASSWORD}
    return requests.post(f"{url}/v1/auth/login", json=body, headers={"Connection": "close"}, timeout=10).status_code


@pytest.fixture
def short_wait_timeout():
    """Set the server's global wait_timeout, which new connections take, and restore it afterwards."""
    original = run_as_mysql_root("SELECT @@GLOBAL.wait_timeout").strip()
    run_as_mysql_root(f"SET GLOBAL wait_timeout = {WAIT_TIMEOUT_SECONDS}")
    try:
        yield
    finally:
        run_as_mysql_root(f"SET GLOBAL wait_timeout = {int(original)}")


def test_first_request_after_wait_timeout(tmp_path, short_wait_timeout):
    # Started after the change, so that every pooled connection has the short wait_timeout.
    gunicorn = Gunicorn(tmp_path)
    gunicorn.start()
    try:
        gunicorn.wait_ready()
        register = requests.post(f"{gunicorn.url}/v1/auth/register",
                                 json={"email": "idle@example.com", "password": PASSWORD}, timeout=10)
        assert register.status_code == 201, register.text
        assert [login(gunicorn.url) for _ in range(REQUESTS)] == [200] * REQUESTS
        assert open_service_connections() > 0

        time.sleep(IDLE_SECONDS)
        # The server closed every idle pooled connection: the pool now holds only dead ones.
        wait_until(lambda: open_service_connections() == 0, 5, "MariaDB kept idle connections past wait_timeout")

        first = login(gunicorn.url)
        later = [login(gunicorn.url) for _ in range(REQUESTS)]
        workers = gunicorn.worker_pids()
    finally:
        gunicorn.stop()

    assert first == 200
    assert later == [200] * REQUESTS
    assert len(workers) == 2
    assert "server_error" not in gunicorn.output()
