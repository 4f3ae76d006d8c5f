"""Redis connection pools to the master, standalone or found through Sentinel, with a bounded wait."""

from __future__ import annotations

import functools
import time
from typing import Any

import redis
import structlog
from redis.sentinel import Sentinel, SentinelConnectionPool

from service.config import Settings
from service.metrics import POOL_IN_USE, POOL_MAX

log = structlog.get_logger(__name__)

# Every key the service writes starts with this, so the database can be shared with other tools.
KEY_PREFIX = "gh:"

# Size of the buffer each connection reads replies into. redis-py 8.2 allocates its default
# of 32 KiB per connection, 1.25 MiB in a worker's two pools of 20. Most replies here are
# a few hundred bytes, and a longer one takes more reads.
SOCKET_READ_SIZE = 4096


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A BlockingConnectionPool whose connections go to the master that the Sentinels name.

    redis-py 8.2 offers Sentinel support only on the unbounded ConnectionPool. Through
    the method resolution order this class takes connection set-up from
    SentinelConnectionPool and the bounded wait from BlockingConnectionPool. Each new
    connection asks the Sentinels for the master's address, and a connection to a
    master that has since been demoted is dropped on its READONLY error or when it
    is released, so after a failover the pool refills with connections to the new master.

    Sentinel demotes the old master only some seconds after it has promoted a
    replica (about 10 s in the failover test), and until then the old master still
    accepts writes that the new one never sees. So the pool also asks the Sentinels
    for the master at most once per MASTER_CHECK_SECONDS when it lends a
    connection. When the master has moved, redis-py disconnects the idle
    connections and drops the busy ones as they come back.
    """

    MASTER_CHECK_SECONDS = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_master_check = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._next_master_check:
            self._next_master_check = now + self.MASTER_CHECK_SECONDS
            try:
                self.get_master_address()
            except redis.ConnectionError:
                pass  # no master known: connecting raises MasterNotFoundError for the caller
        return super().get_connection(*args, **kwargs)

    def check_master_soon(self) -> None:
        """Make the next get_connection ask the Sentinels for the master, however recent the last check."""
        self._next_master_check = 0.0


@functools.cache
def _lent_connections() -> Any:
    # The labelled child is looked up once: every Redis command lends a connection.
    return POOL_IN_USE.labels(pool="redis")


# The attribute that marks a connection lent by get_connection and not yet released.
_LENT = "_gatehouse_lent"


class _PoolGauges:
    """Counts lent connections in the pool gauges; mixed in before a pool class.

    redis-py 8.2's get_connection also calls release for a connection whose connect
    failed, before it raises, so only connections that get_connection returned count.
    """

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = super().get_connection(*args, **kwargs)  # type: ignore[misc]
        setattr(connection, _LENT, True)
        _lent_connections().inc()
        return connection

    def release(self, connection: Any) -> None:
        if getattr(connection, _LENT, False):
            setattr(connection, _LENT, False)
            _lent_connections().dec()
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


class _DropOnReadOnly:
    """Connection mixin: a READONLY reply drops the connection and raises redis.ConnectionError.

    In standalone mode the URL may name a managed Redis whose host name moves to the new
    primary on a failover. A connection that still reaches the old one, now a replica,
    gets READONLY for every write. Dropping it makes the pool connect, and resolve the
    name, again. The error handler and the rate limits treat the failure as any other
    lost connection. redis-py's Sentinel connections do the same.
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ReadOnlyError:
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError("the Redis server replied READONLY: it is a replica now, and the "
                                        "connection was dropped") from None


@functools.cache
def _dropping_on_read_only(connection_class: type) -> type:
    return type(f"DropOnReadOnly{connection_class.__name__}", (_DropOnReadOnly, connection_class), {})


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
        "socket_read_size": SOCKET_READ_SIZE,
        **options,
    }
    if settings.redis_mode == "sentinel":
        pool_class = TrackedSentinelBlockingConnectionPool if tracked else SentinelBlockingConnectionPool
        password = settings.redis_password
        return pool_class(
            settings.redis_sentinel_service,
            create_sentinel(settings),
            password=password.get_secret_value() if password else None,
            db=settings.redis_db,
            **connection_options,
        )

    assert settings.redis_url is not None  # config.py requires it in standalone mode
    pool_class = TrackedBlockingConnectionPool if tracked else redis.BlockingConnectionPool
    pool = pool_class.from_url(settings.redis_url.get_secret_value(), **connection_options)
    # Set after from_url, which picks the class from the URL's scheme (TCP, TLS or a Unix socket).
    pool.connection_class = _dropping_on_read_only(pool.connection_class)
    return pool


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


def is_stale_master(client: redis.Redis, address: tuple[str, int] | None) -> bool:
    """Tell whether the server at `address` is, or is about to be, no longer the master.

    Every Sentinel is asked, because only the one leading a failover flags it as in
    progress, and it does so before the others learn the new master's address.
    Asking also moves the client's pool to a new master. Always False in
    standalone mode, and when no Sentinel replies.
    """
    pool = client.connection_pool
    if not isinstance(pool, SentinelBlockingConnectionPool) or address is None:
        return False

    for sentinel in pool.sentinel_manager.sentinels:
        try:
            state = sentinel.sentinel_master(pool.service_name)
        except redis.RedisError:
            continue
        flags = state["flags"] if isinstance(state["flags"], set) else set(str(state["flags"]).split(","))
        if "failover_in_progress" in flags or (state["ip"], int(state["port"])) != address:
            pool.check_master_soon()
            return True
    return False


def close_client(client: redis.Redis) -> None:
    """Disconnect every pooled connection; log instead of raising."""
    try:
        client.connection_pool.disconnect()
        if isinstance(client.connection_pool, SentinelConnectionPool):
            client.connection_pool.sentinel_manager.close()
    except Exception as exc:  # teardown must not raise
        log.warning("redis_pool_close_failed", error=repr(exc))
