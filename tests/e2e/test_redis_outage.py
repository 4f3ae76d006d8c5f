"""Rate limits while the test Redis is stopped and started again under traffic, through gunicorn with 2 workers.

The test stops the real test Redis with SIGTERM, which makes Redis save its data
and exit, and starts it again with scripts/services.sh, as `make test` did. A
fixture restarts it whatever happens, so later tests find it running.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter

import pytest
import redis
import requests

from service.limit_storage import RATE_LIMIT_KEY_PREFIX
from tests.helpers import Gunicorn, redis_answers, start_test_redis, stop_test_redis

pytestmark = pytest.mark.e2e

LIMIT = 10  # per minute, so nothing frees up during the test
RETRY_SECONDS = 0.3
PASSWORD = "correct horse battery staple"


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["GATEHOUSE_REDIS_URL"], socket_connect_timeout=1, socket_timeout=1)


@pytest.fixture
def redis_restarted_afterwards():
    yield
    if not redis_answers():
        start_test_redis()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("gunicorn"), env={
        "GATEHOUSE_TRUSTED_PROXY_COUNT": "1",
        "GATEHOUSE_RATE_LIMIT_REGISTER": f"{LIMIT}/minute",
        "GATEHOUSE_RATE_LIMIT_RETRY_SECONDS": str(RETRY_SECONDS),
        # The traffic gets hundreds of 429s, which would otherwise ban its address.
        "GATEHOUSE_BAN_ENABLED": "false",
    }) as gunicorn:
        yield gunicorn


def empty_register(url: str, client_address: str) -> int:
    """Send a registration without a body: counted in Redis against the register limit, then 400 without MySQL."""
    # A new connection per request, so both workers serve each sequence.
    headers = {"X-Forwarded-For": client_address, "Connection": "close"}
    return requests.post(f"{url}/v1/auth/register", json={}, headers=headers, timeout=10).status_code


def log_records(server: Gunicorn, event: str) -> list[dict]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


class Traffic(threading.Thread):
    """Requests from one client in a loop, at most `max_requests` and `max_seconds`, recording each status."""

    def __init__(self, url: str, max_requests: int = 2000, max_seconds: float = 60) -> None:
        super().__init__(name="traffic", daemon=True)
        self.url = url
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.statuses: Counter[int | str] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self.stopping.is_set() or time.monotonic() > deadline:
                return
            try:
                self.statuses[empty_register(self.url, "203.0.113.1")] += 1
            except requests.RequestException as exc:
                self.statuses[type(exc).__name__] += 1
            self.stopping.wait(0.01)


def test_limits_survive_redis_restart(server, redis_restarted_afterwards):
    traffic = Traffic(server.url)
    traffic.start()
    try:
        time.sleep(0.5)
        assert traffic.statuses[429] > 0, "the traffic never reached its limit before the outage"
        traffic_keys = redis_client().keys(f"{RATE_LIMIT_KEY_PREFIX}:*203.0.113.1/*")
        assert len(traffic_keys) == 1, traffic_keys

        stop_test_redis()
        outage = [empty_register(server.url, "203.0.113.2") for _ in range(3 * LIMIT)]
        register = requests.post(f"{server.url}/v1/auth/register",
                                 json={"email": "outage@example.com", "password": PASSWORD},
                                 headers={"X-Forwarded-For": "203.0.113.3"}, timeout=10)

        start_test_redis()
        # Each worker notices Redis is back on its first request after the retry interval.
        deadline = time.monotonic() + 15
        probe = 0
        while len({record["pid"] for record in log_records(server, "rate_limit_redis_recovered")}) < 2:
            assert time.monotonic() < deadline, "the workers did not return to Redis within 15 s"
            probe += 1
            empty_register(server.url, f"192.0.2.{probe % 250}")
            time.sleep(0.05)
        after = [empty_register(server.url, "203.0.113.4") for _ in range(2 * LIMIT)]
    finally:
        traffic.stopping.set()
        traffic.join(timeout=30)

    # Only normal responses during the whole run: no 500, no 503.
    assert set(traffic.statuses) <= {400, 429}, traffic.statuses
    assert traffic.statuses[400] <= 2 * LIMIT + LIMIT

    # During the outage each worker counts in its own memory: at least the limit, at most twice.
    assert set(outage) == {400, 429}
    assert LIMIT <= outage.count(400) <= 2 * LIMIT
    # Registration needs only MySQL, so it works without Redis.
    assert register.status_code == 201

    # One warning per worker per outage, however many requests ran into it.
    failures = log_records(server, "rate_limit_redis_failed")
    assert sorted(Counter(record["pid"] for record in failures).values()) == [1, 1]
    assert all(record["level"] == "warning" for record in failures)

    # Shared again: exactly the limit across both workers.
    assert after == [400] * LIMIT + [429] * LIMIT

    # The counter written before the outage was saved and came back with Redis.
    assert redis_client().llen(traffic_keys[0]) == LIMIT
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert "gatehouse_rate_limit_fallbacks_total 2.0" in metrics
    assert "gatehouse_rate_limit_memory_fallback 0.0" in metrics
