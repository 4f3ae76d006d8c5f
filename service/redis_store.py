"""Redis connection pool: a blocking pool whose wait for a free connection is bounded."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from flask import Flask

from service.config import Settings
from service.metrics import POOL_IN_USE, POOL_MAX

log = structlog.get_logger(__name__)

# Every key the service writes starts with this, so the database can be shared with other tools.
KEY_PREFIX = "gh:"


class TrackedBlockingConnectionPool(redis.BlockingConnectionPool):
    """A BlockingConnectionPool that counts lent connections in the pool gauges."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = super().get_connection(*args, **kwargs)
        POOL_IN_USE.labels(pool="redis").inc()
        return connection

    def release(self, connection: Any) -> None:
        POOL_IN_USE.labels(pool="redis").dec()
        super().release(connection)


def create_client(settings: Settings) -> redis.Redis:
    """Build a client over a BlockingConnectionPool sized from the settings.

    When every connection is busy, a caller waits up to redis_pool_wait_seconds and
    then gets redis.ConnectionError, which the error handler turns into a 503.
    """
    pool = TrackedBlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_pool_wait_seconds,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        health_check_interval=30,
        decode_responses=True,
    )
    POOL_MAX.labels(pool="redis").set(settings.redis_pool_size)
    return redis.Redis(connection_pool=pool)


def close_client(client: redis.Redis) -> None:
    """Disconnect every pooled connection; log instead of raising."""
    try:
        client.connection_pool.disconnect()
    except Exception as exc:  # teardown must not raise
        log.warning("redis_pool_close_failed", error=repr(exc))

