"""The Redis pool against the real test Redis: a request that finds no free connection gets a 503."""

from __future__ import annotations

import time

from service.app import close_app, create_app
from service.context import EXTENSION_KEY

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

        assert response.status_code == 503
        assert elapsed >= POOL_WAIT_SECONDS * 0.8
        assert elapsed < 5
        assert response.mimetype == "application/problem+json"
        assert response.headers.get("Retry-After", "").isdigit()
        assert int(response.headers["Retry-After"]) >= 1
        problem = response.get_json()
        assert problem["code"] == "redis_unavailable"
        assert problem["status"] == 503

        # With the connection back in the pool, the same request reaches Redis.
        after = client.post("/v1/auth/refresh", json=body)
        assert after.status_code == 401
        assert after.get_json()["code"] == "invalid_refresh_token"
    finally:
        close_app(app)
