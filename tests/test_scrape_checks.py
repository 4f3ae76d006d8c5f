"""A scrape of /metrics waits a bounded time for the dependency checks, on the real MariaDB and a paused Redis.

CLIENT PAUSE makes the test Redis hold every command, as a hung server does, and it
resumes by itself.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from service.app import close_app, create_app

PAUSE_MS = 1500
WAIT_SECONDS = 0.3


@pytest.fixture
def paused_redis(settings):
    """Return a function that pauses the test Redis for PAUSE_MS; the fixture waits until it has resumed."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    yield lambda: client.client_pause(PAUSE_MS, all=True)
    time.sleep(PAUSE_MS / 1000)
    client.close()


@pytest.fixture
def fresh_app():
    # No cache, so every call runs the checks again.
    app = create_app({"ready_cache_seconds": 0})
    yield app
    close_app(app)


def test_stalled_redis_check_reported_down(fresh_app, paused_redis):
    probe = fresh_app.extensions["gatehouse"].readiness
    assert {name: check.ok for name, check in probe.results_within(5).items()} == {"mysql": True, "redis": True}
    paused_redis()

    started = time.monotonic()
    results = probe.results_within(WAIT_SECONDS)
    elapsed = time.monotonic() - started

    assert elapsed < WAIT_SECONDS + 0.5
    assert results["mysql"].ok
    assert not results["redis"].ok
    assert results["redis"].error == "check_stalled"
    assert results["redis"].latency_ms > 0


def test_stalled_check_of_another_caller_reported_down(fresh_app, paused_redis):
    probe = fresh_app.extensions["gatehouse"].readiness
    probe.results_within(5)
    paused_redis()
    # A /ready probe of the same worker runs the checks first and waits on Redis.
    ready_probe = threading.Thread(target=probe.report)
    ready_probe.start()
    time.sleep(0.1)

    started = time.monotonic()
    results = probe.results_within(WAIT_SECONDS)
    elapsed = time.monotonic() - started
    ready_probe.join(10)

    assert elapsed < WAIT_SECONDS + 0.5
    assert not results["redis"].ok
    assert results["redis"].error == "check_stalled"


def test_scrape_with_hung_redis_ends_in_time(fresh_app, paused_redis, monkeypatch):
    monkeypatch.setattr("service.metrics.SCRAPE_CHECK_WAIT_SECONDS", WAIT_SECONDS)
    client = fresh_app.test_client()
    assert client.get("/metrics").status_code == 200
    paused_redis()

    started = time.monotonic()
    response = client.get("/metrics")
    elapsed = time.monotonic() - started

    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert elapsed < WAIT_SECONDS + 0.5
    assert 'gatehouse_dependency_up{dependency="redis"} 0.0' in text
    assert 'gatehouse_dependency_up{dependency="mysql"} 1.0' in text
    # Read from Redis, so left out rather than waited for.
    assert "gatehouse_blacklisted_ips" not in text


def test_ready_probes_during_stalled_check_not_ready(fresh_app, paused_redis, monkeypatch):
    """Probes that arrive while another probe's check waits on a hung server get the cached result only briefly."""
    monkeypatch.setattr("service.readiness.STALLED_CHECK_SECONDS", WAIT_SECONDS)
    client = fresh_app.test_client()
    assert client.get("/ready").status_code == 200
    paused_redis()
    running_probe = threading.Thread(target=fresh_app.extensions["gatehouse"].readiness.report)
    running_probe.start()
    time.sleep(0.1)

    early = client.get("/ready")
    time.sleep(WAIT_SECONDS)
    late = client.get("/ready")
    running_probe.join(10)

    assert early.status_code == 200
    assert late.status_code == 503
    assert late.get_json()["checks"]["redis"]["ok"] is False
    assert late.get_json()["checks"]["redis"]["error"] == "check_stalled"
    assert late.get_json()["checks"]["mysql"]["ok"] is True
