"""The Redis pools against the real test Redis.

A request that finds no free connection gets a 503, and so does one to a server that
became a replica. Replies longer than a connection's read buffer arrive whole. The
lent-connection gauge counts only connections that were lent.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import redis

from service import errors, redis_store
from service.app import close_app, create_app
from service.context import EXTENSION_KEY
from service.limits import LIMITER_KEY
from service.readiness import READY_KEY
from tests.conftest import PASSWORD
from tests.helpers import assert_pool_wait_problem

POOL_WAIT_SECONDS = 0.3


def test_refresh_gets_503_when_pool_exhausted():
    app = create_app({"redis_pool_size": 1, "redis_pool_wait_seconds": POOL_WAIT_SECONDS})
    try:
        pool = app.extensions[EXTENSION_KEY].redis.connection_pool
        client = app.test_client()
        body = {"refresh_token": "not-a-real-refresh-token"}

        busy_connection = pool.get_connection()
        try:
            started = time.monotonic()
            response = client.post("/v1/auth/refresh", json=body)
            elapsed = time.monotonic() - started
        finally:
            pool.release(busy_connection)

        assert_pool_wait_problem(response, elapsed, POOL_WAIT_SECONDS, "redis_unavailable")

        # With the connection back in the pool, the same request reaches Redis.
        after = client.post("/v1/auth/refresh", json=body)
        assert after.status_code == 401
        assert after.get_json()["code"] == "invalid_refresh_token"
    finally:
        close_app(app)


def test_pools_read_long_replies_whole():
    app = create_app()
    try:
        client = app.extensions[EXTENSION_KEY].redis
        limit_pool = app.extensions[LIMITER_KEY].storage.pool
        for pool in (client.connection_pool, limit_pool):
            assert pool.connection_kwargs["socket_read_size"] == redis_store.SOCKET_READ_SIZE

        # A reply 60 times the buffer, and one across many reads in a pipeline.
        key = f"{redis_store.KEY_PREFIX}test:long-reply"
        value = "0123456789abcdef" * (redis_store.SOCKET_READ_SIZE * 60 // 16)
        try:
            client.set(key, value, ex=60)
            assert client.get(key) == value
            pipe = client.pipeline(transaction=False)
            for _ in range(3):
                pipe.get(key)
            assert pipe.execute() == [value] * 3
        finally:
            client.delete(key)
    finally:
        close_app(app)


def test_read_only_redis_gets_503_then_recovers(settings, user):
    """A standalone Redis that became a replica replies READONLY to writes, as after a failover behind one host name.

    It still replies to PING, so /ready must check with a write to take the pod out of service.
    """
    app = create_app({"ready_cache_seconds": 0})
    admin = redis.Redis.from_url(settings.redis_url.get_secret_value())
    credentials = {"email": user["email"], "password": PASSWORD}
    try:
        client = app.test_client()
        assert client.post("/v1/auth/login", json=credentials).status_code == 200
        assert client.get("/ready").status_code == 200
        # Nothing listens on port 1 of the loopback address, so the server keeps its data and refuses writes.
        admin.replicaof("127.0.0.1", 1)
        try:
            unavailable = client.post("/v1/auth/login", json=credentials)
            not_ready = client.get("/ready")
        finally:
            admin.replicaof("NO", "ONE")

        assert unavailable.status_code == 503
        assert unavailable.get_json()["code"] == "redis_unavailable"
        assert int(unavailable.headers["Retry-After"]) >= 1
        assert not_ready.status_code == 503
        assert not_ready.get_json()["checks"]["redis"]["ok"] is False
        assert not_ready.get_json()["checks"]["mysql"]["ok"] is True
        assert client.post("/v1/auth/login", json=credentials).status_code == 200
        assert client.get("/ready").status_code == 200
        assert admin.ttl(READY_KEY) > 0
    finally:
        admin.close()
        close_app(app)


def test_full_redis_gets_503_and_stays_ready(settings, user):
    """A full Redis under noeviction refuses writes: 503 for them, but the pod stays in service for the reads."""
    app = create_app({"ready_cache_seconds": 0})
    admin = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    credentials = {"email": user["email"], "password": PASSWORD}
    old_limit = admin.config_get("maxmemory")["maxmemory"]
    try:
        client = app.test_client()
        assert client.post("/v1/auth/login", json=credentials).status_code == 200
        admin.config_set("maxmemory", 1)
        try:
            full = client.post("/v1/auth/login", json=credentials)
            ready = client.get("/ready")
        finally:
            admin.config_set("maxmemory", old_limit)

        assert full.status_code == 503
        assert full.get_json()["code"] == "redis_unavailable"
        assert ready.status_code == 200
        assert client.post("/v1/auth/login", json=credentials).status_code == 200
    finally:
        admin.close()
        close_app(app)


def test_failed_connects_leave_lent_gauge_alone():
    # Nothing listens on port 1 of the loopback address, so every connect fails.
    pool = redis_store.TrackedBlockingConnectionPool.from_url("redis://127.0.0.1:1/0", max_connections=2, timeout=0.1)
    lent = redis_store.POOL_IN_USE.labels(pool="redis")
    before = lent._value.get()
    try:
        for _ in range(5):
            with pytest.raises(redis.ConnectionError):
                redis.Redis(connection_pool=pool).ping()
        assert lent._value.get() == before

        working = redis_store.TrackedBlockingConnectionPool.from_url(os.environ["GATEHOUSE_REDIS_URL"],
                                                                    max_connections=2, timeout=0.1)
        connection = working.get_connection()
        assert lent._value.get() == before + 1
        working.release(connection)
        working.release(connection)
        assert lent._value.get() == before
        working.disconnect()
    finally:
        pool.disconnect()


def test_dependency_failures_logged_once_per_interval(capsys):
    app = create_app({"redis_pool_size": 1, "redis_pool_wait_seconds": 0.05})
    try:
        pool = app.extensions[EXTENSION_KEY].redis.connection_pool
        client = app.test_client()
        busy_connection = pool.get_connection()
        try:
            capsys.readouterr()
            statuses = [client.post("/v1/auth/refresh", json={"refresh_token": "x" * 43}).status_code
                        for _ in range(4)]
            time.sleep(errors.DEPENDENCY_LOG_INTERVAL_SECONDS + 0.1)
            statuses.append(client.post("/v1/auth/refresh", json={"refresh_token": "x" * 43}).status_code)
        finally:
            pool.release(busy_connection)
    finally:
        close_app(app)

    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    logged = [event for event in events if event["event"] == "dependency_failed"]
    assert statuses == [503] * 5
    assert [event["failures_unlogged"] for event in logged] == [0, 3]
    # Each request still has its own line with the 503.
    assert [event["status"] for event in events if event["event"] == "request_completed"] == [503] * 5
