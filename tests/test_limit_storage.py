"""The rate-limit storage falls back to memory when Redis fails, and the app never fails because of it."""

from __future__ import annotations

import json
import time

import pytest
import redis
from limits import parse
from limits.strategies import MovingWindowRateLimiter

from service import metrics
from service.app import close_app, create_app
from service.limit_storage import RATE_LIMIT_KEY_PREFIX, BoundedMemoryStorage, FailoverStorage
from service.limits import limit_storage
from service.logs import configure_logging
from tests.helpers import free_port


def unreachable_redis_url() -> str:
    # Nothing listens on a port that was free a moment ago, so every connection is refused.
    return f"redis://:some-password@127.0.0.1:{free_port()}/0"


def small_pool(url: str, socket_timeout: float) -> redis.BlockingConnectionPool:
    return redis.BlockingConnectionPool.from_url(url, max_connections=2, timeout=0.5, socket_connect_timeout=0.5,
                                                 socket_timeout=socket_timeout)


def log_events(text: str, event: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


@pytest.fixture(autouse=True)
def json_logs():
    # Storage tests that create no app still need the service's JSON log format.
    configure_logging("info")


@pytest.fixture
def unreachable_storage():
    storage = FailoverStorage(connection_pool=small_pool(unreachable_redis_url(), socket_timeout=0.5), retry_seconds=60)
    yield storage
    storage.close()


def test_limits_apply_from_memory_when_redis_refuses(unreachable_storage):
    limiter = MovingWindowRateLimiter(unreachable_storage)
    item = parse("3/minute")

    results = [limiter.hit(item, "client") for _ in range(4)]

    assert results == [True, True, True, False]
    assert unreachable_storage.using_memory


def test_outage_logged_and_counted_once(unreachable_storage, capsys):
    limiter = MovingWindowRateLimiter(unreachable_storage)
    fallbacks_before = metrics.RATE_LIMIT_FALLBACKS._value.get()

    for _ in range(20):
        limiter.hit(parse("100/minute"), "client")

    warnings = log_events(capsys.readouterr().out, "rate_limit_redis_failed")
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "some-password" not in json.dumps(warnings[0])
    assert metrics.RATE_LIMIT_FALLBACKS._value.get() == fallbacks_before + 1


def test_memory_used_until_retry_interval(unreachable_storage, settings, capsys):
    limiter = MovingWindowRateLimiter(unreachable_storage)
    limiter.hit(parse("3/minute"), "client")

    # The retry interval (60 s) has not passed, so no call reaches Redis and none logs again.
    for _ in range(5):
        limiter.hit(parse("3/minute"), "client")

    assert len(log_events(capsys.readouterr().out, "rate_limit_redis_failed")) == 1
    assert limiter.get_window_stats(parse("3/minute"), "client").remaining == 0


def test_storage_recovers_after_redis_pause(settings, capsys):
    url = settings.redis_url.get_secret_value()
    storage = FailoverStorage(connection_pool=small_pool(url, socket_timeout=0.2), retry_seconds=0.2)
    limiter = MovingWindowRateLimiter(storage)
    item = parse("100/minute")
    try:
        limiter.hit(item, "client")
        # Every command waits until the pause ends, so the storage's 0.2 s timeout expires.
        redis.Redis.from_url(url).client_pause(700, all=True)
        limiter.hit(item, "client")
        assert storage.using_memory

        deadline = time.monotonic() + 5
        while storage.using_memory and time.monotonic() < deadline:
            time.sleep(0.1)
            limiter.hit(item, "client")

        assert not storage.using_memory
        output = capsys.readouterr().out
        assert len(log_events(output, "rate_limit_redis_failed")) == 1
        assert len(log_events(output, "rate_limit_redis_recovered")) == 1
        # Back in Redis: the hit before the pause is still counted there.
        assert limiter.get_window_stats(item, "client").remaining < 99
    finally:
        storage.close()


def test_app_answers_normally_without_redis(capsys):
    app = create_app({"redis_url": unreachable_redis_url(), "rate_limit_register": "3/minute"})
    try:
        client = app.test_client()
        # Registrations without a body count against the register limit, which counts in Redis.
        # An address outside the ban allowlist (loopback), so a 429 would be counted toward a ban.
        empty = [client.post("/v1/auth/register", json={}, environ_base={"REMOTE_ADDR": "192.0.2.5"})
                 for _ in range(4)]
        register = client.post("/v1/auth/register", json={"email": "alice@example.com",
                                                           "password": "correct horse battery staple"})

        assert [response.status_code for response in empty] == [400, 400, 400, 429]
        assert int(empty[-1].headers["Retry-After"]) >= 1
        assert empty[0].headers["X-RateLimit-Remaining"] == "2"
        # Registration needs only MySQL, so it succeeds while Redis is gone.
        assert register.status_code == 201
        assert limit_storage(app).using_memory
        output = capsys.readouterr().out
        assert len(log_events(output, "rate_limit_redis_failed")) == 1
        # The 429 is not counted toward a ban while Redis is known to be down, so it logs no failure.
        assert log_events(output, "abuse_record_failed") == []
    finally:
        close_app(app)


def test_memory_window_admits_after_expiry():
    limiter = MovingWindowRateLimiter(BoundedMemoryStorage())
    item = parse("2/1second")

    first = [limiter.hit(item, "client") for _ in range(3)]
    stats = limiter.get_window_stats(item, "client")
    checked_at = time.time()
    time.sleep(1.05)
    later = limiter.hit(item, "client")

    assert first == [True, True, False]
    assert stats.remaining == 0
    assert checked_at < stats.reset_time <= checked_at + 1
    assert later is True


def test_memory_keys_bounded():
    storage = BoundedMemoryStorage(max_keys=100)
    limiter = MovingWindowRateLimiter(storage)
    item = parse("1/minute")

    for n in range(1000):
        limiter.hit(item, f"client{n}")

    # The oldest keys were evicted, so their next request counts from zero.
    assert limiter.hit(item, "client0") is True
    assert limiter.hit(item, "client999") is False


def test_memory_counter_expires_from_first_increment():
    storage = BoundedMemoryStorage()

    values = [storage.incr("key", 1), storage.incr("key", 1)]
    time.sleep(1.05)

    assert values == [1, 2]
    assert storage.get("key") == 0
    assert storage.incr("key", 1) == 1


def test_memory_cost_independent_of_key_count():
    storage = BoundedMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = parse("600/minute")
    for n in range(30_000):
        limiter.hit(item, f"client{n}")

    started = time.perf_counter()
    for _ in range(1000):
        limiter.hit(item, "one-more")
    elapsed = time.perf_counter() - started

    # No background scan over the 30000 keys: a thousand hits stay far below a second.
    assert elapsed < 0.5


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture
def redis_storage(settings):
    """A FailoverStorage on the test Redis, and a plain client of the same server."""
    url = settings.redis_url.get_secret_value()
    storage = FailoverStorage(connection_pool=small_pool(url, socket_timeout=0.5), retry_seconds=60)
    client = redis.Redis.from_url(url)
    yield storage, client
    storage.close()
    client.close()


def test_window_after_acquire_needs_no_redis_call(redis_storage):
    storage, client = redis_storage
    limiter = MovingWindowRateLimiter(storage)
    item = parse("5/minute")
    assert limiter.hit(item, "client")
    assert limiter.hit(item, "client")
    calls_before = evalsha_calls(client)

    remaining_after_hit = limiter.get_window_stats(item, "client").remaining

    # The window came along with the acquisition, so reading it cost no script call.
    assert evalsha_calls(client) == calls_before
    assert remaining_after_hit == 3
    # It is reported once: a second read queries Redis, and gets the same count.
    assert limiter.get_window_stats(item, "client").remaining == 3
    assert evalsha_calls(client) == calls_before + 1


def test_acquire_survives_script_flush(redis_storage):
    storage, client = redis_storage
    limiter = MovingWindowRateLimiter(storage)
    item = parse("2/minute")
    assert limiter.hit(item, "client")
    client.script_flush()

    assert limiter.hit(item, "client")
    assert not limiter.hit(item, "client")
    assert not storage.using_memory


def test_missing_window_script_counts_once(redis_storage):
    """Only the acquisition script is cached in Redis: the request still counts exactly once."""
    storage, client = redis_storage
    limiter = MovingWindowRateLimiter(storage)
    item = parse("3/minute")
    client.script_flush()
    client.script_load(storage._redis.lua_acquire_moving_window.script)

    results = [limiter.hit(item, "client") for _ in range(4)]

    assert results == [True, True, True, False]
    assert not storage.using_memory


def test_read_many_in_redis(redis_storage):
    storage, _ = redis_storage
    assert storage.acquire_entry("window", 5, 60)
    assert storage.acquire_entry("window", 5, 60)
    storage.incr("counter", 60)

    counters, windows = storage.read_many(["counter", "no-counter"], [("window", 5, 60), ("no-window", 5, 60)])

    assert counters == [1, 0]
    assert [count for _, count in windows] == [2, 0]
    assert not storage.using_memory


def test_read_many_survives_script_flush(redis_storage):
    storage, client = redis_storage
    assert storage.acquire_entry("window", 5, 60)
    client.script_flush()

    _, windows = storage.read_many([], [("window", 5, 60)])

    assert windows[0][1] == 1
    assert not storage.using_memory


def _clear_and_mark_then_read(storage) -> tuple[list[int], list[tuple[float, int]]]:
    """Count a window entry and a marker twice, clear the window and set the marker, then read both."""
    assert storage.acquire_entry("window", 5, 60)
    storage.incr("marker", 60)
    storage.incr("marker", 60)

    storage.clear_and_mark(["window"], "marker", 600)

    return storage.read_many(["marker"], [("window", 5, 60)])


def test_clear_and_mark_in_redis(redis_storage):
    storage, client = redis_storage

    counters, windows = _clear_and_mark_then_read(storage)

    assert counters == [1]
    assert windows[0][1] == 0
    assert 590 <= client.ttl(f"{RATE_LIMIT_KEY_PREFIX}:marker") <= 600


def test_read_many_and_clear_and_mark_from_memory(unreachable_storage):
    counters, windows = _clear_and_mark_then_read(unreachable_storage)

    assert counters == [1]
    assert windows[0][1] == 0
    assert unreachable_storage.using_memory
