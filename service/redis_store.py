"""Redis connection pools to the master, standalone or found through Sentinel, with a bounded wait."""

from __future__ import annotations

from typing import Any

import redis
import structlog
from redis.sentinel import Sentinel, SentinelConnectionPool

from service.config import Settings
from service.metrics import POOL_IN_USE, POOL_MAX

log = structlog.get_logger(__name__)

# Every key the service writes starts with this, so the database can be shared with other tools.
KEY_PREFIX = "gh:"


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A BlockingConnectionPool whose connections go to the master that the Sentinels name.

    redis-py 8.2 offers Sentinel support only on the unbounded ConnectionPool. Through
    the method resolution order this class takes connection set-up from
    SentinelConnectionPool and the bounded wait from BlockingConnectionPool. Each new
    connection asks the Sentinels for the master's address, and a connection to a
    master that has since been demoted is dropped on its READONLY error or when it
    is released, so after a failover the pool refills with connections to the new master.
    """


class _PoolGauges:
    """Counts lent connections in the pool gauges; mixed in before a pool class."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = super().get_connection(*args, **kwargs)  # type: ignore[misc]
        POOL_IN_USE.labels(pool="redis").inc()
        return connection

    def release(self, connection: Any) -> None:
        POOL_IN_USE.labels(pool="redis").dec()
        super().release(connection)  # type: ignore[misc]


class TrackedBlockingConnectionPool(_PoolGauges, redis.BlockingConnectionPool):
    """A BlockingConnectionPool that counts lent connections in the pool gauges."""


class TrackedSentinelBlockingConnectionPool(_PoolGauges, SentinelBlockingConnectionPool):
    """A SentinelBlockingConnectionPool that counts lent connections in the pool gauges."""


def create_sentinel(settings: Settings) -> Sentinel:
    """Build the client of the Sentinels named by GATEHOUSE_REDIS_SENTINELS."""
    password = settings.redis_sentinel_password
    return Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs={
            "password": password.get_secret_value() if password else None,
            "socket_connect_timeout": settings.redis_connect_timeout,
            "socket_timeout": settings.redis_socket_timeout,
        },
    )


def create_pool(settings: Settings, *, max_connections: int, timeout: float, socket_timeout: float | None,
                tracked: bool = False, **options: Any) -> redis.BlockingConnectionPool:
    """Build a bounded pool of connections to the Redis master, in the mode that GATEHOUSE_REDIS_MODE selects.

    A caller that finds every connection busy waits up to `timeout` seconds and then
    gets redis.ConnectionError. `tracked` counts lent connections in the pool
    gauges. `options` go to every connection, such as decode_responses.
    """
    connection_options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": timeout,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "health_check_interval": 30,
        **options,
    }
    if settings.redis_mode == "sentinel":
        pool_class = TrackedSentinelBlockingConnectionPool if tracked else SentinelBlockingConnectionPool
        password = settings.redis_password
        return pool_class(
            settings.redis_sentinel_service,
            create_sentinel(settings),
            password=password.get_secret_value() if password else None,
            db=settings.redis_db or 0,
            **connection_options,
        )

    assert settings.redis_url is not None  # config.py requires it in standalone mode
    pool_class = TrackedBlockingConnectionPool if tracked else redis.BlockingConnectionPool
    return pool_class.from_url(settings.redis_url.get_secret_value(), **connection_options)


def create_client(settings: Settings) -> redis.Redis:
    """Build the request client over a pool of redis_pool_size connections to the master.

    When every connection is busy, a caller waits up to redis_pool_wait_seconds and
    then gets redis.ConnectionError, which the error handler turns into a 503.
    """
    pool = create_pool(
        settings,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_pool_wait_seconds,
        socket_timeout=settings.redis_socket_timeout,
        tracked=True,
        decode_responses=True,
    )
    POOL_MAX.labels(pool="redis").set(settings.redis_pool_size)
    return redis.Redis(connection_pool=pool)


def close_client(client: redis.Redis) -> None:
    """Disconnect every pooled connection; log instead of raising."""
    try:
        client.connection_pool.disconnect()
        if isinstance(client.connection_pool, SentinelConnectionPool):
            client.connection_pool.sentinel_manager.close()
    except Exception as exc:  # teardown must not raise
        log.warning("redis_pool_close_failed", error=repr(exc))
