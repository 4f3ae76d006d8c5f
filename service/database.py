"""MySQL connection pool: DBUtils PooledDB over pymysql, with a bounded wait for a free connection."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
import pymysql.cursors
import structlog
from dbutils.pooled_db import PooledDB, TooManyConnections
from flask import Flask

from service.config import Settings
from service.errors import DatabaseUnavailable
from service.metrics import POOL_IN_USE, POOL_MAX
from service.mysql_tls import failure_log, tls_connect_args, tls_failure

log = structlog.get_logger(__name__)

# DBUtils treats these as "connection lost" and reopens the connection.
_CONNECTION_FAILURES = (pymysql.err.OperationalError, pymysql.err.InterfaceError)
# pymysql codes for a statement that never reached the server: 2003 (cannot connect)
# and 2006 (the write to the socket failed). 2013 (connection lost while reading the
# answer) is not among them, because the server may already have run the statement.
_NOT_SENT_CODES = frozenset({2003, 2006})
# A connection that went back to the pool less than this many seconds ago is checked
# without a round trip when it is taken again. After a longer idle time it gets a COM_PING.
# DBUtils lends the connection that has been idle longest (its idle list is first in,
# first out), so a worker with n idle connections pings only while it takes fewer than
# n / PING_AFTER_IDLE_SECONDS connections a second.
# Firewalls and NAT gateways that drop idle connections without closing them do so after
# minutes (an AWS NAT gateway after 350 s), far beyond this.
PING_AFTER_IDLE_SECONDS = 5.0


# A step of a change that runs inside its transaction, on its cursor, and raises to undo the change.
TransactionStep = Callable[[Any], None]


def _retry_is_safe(error: Exception) -> bool:
    """Tell DBUtils whether to re-run a failed statement on a new connection.

    DBUtils re-runs a statement outside a transaction after any connection failure;
    for an INSERT that timed out while the server ran it, that writes twice. Only a
    statement that certainly was not sent is re-run.
    """
    if isinstance(error, pymysql.err.InterfaceError):
        return True

    return bool(error.args) and error.args[0] in _NOT_SENT_CODES


def _socket_state(connection: pymysql.connections.Connection) -> bool | None:
    """Tell without a round trip whether the connection is still open on the server; None when it cannot tell.

    Between two statements the server sends nothing, so a readable socket means the
    server closed the connection (wait_timeout, KILL, a restart) or sent an error before
    closing it (MySQL 8.0.24 and later send ER_CLIENT_INTERACTION_TIMEOUT on wait_timeout).
    Either way the connection is unusable.
    """
    # pymysql 1.2 has no public accessor for its socket.
    sock = getattr(connection, "_sock", None)
    if sock is None:
        return None

    timeout = sock.gettimeout()
    # Non-blocking, also for gevent's socket, which would otherwise wait for data.
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except ValueError:
        # A TLS socket takes no recv flags.
        return None
    except OSError:
        return False
    finally:
        # pymysql remembers the timeout it set last and sets it again only when it differs.
        sock.settimeout(timeout)
    # End of stream, or unsolicited bytes.
    return False


class _Connection(pymysql.connections.Connection):
    """A pymysql connection whose opportunistic TLS uses one context per process.

    Without TLS options PyMySQL tries TLS when the server offers it and checks no
    certificate. For that it builds a context for every connection with the system's CA
    certificates loaded, about 1 MiB of memory each that nothing reads, so a worker's
    pool of 10 connections carried 10 MiB of certificates.
    """

    _opportunistic_context: ssl.SSLContext | None = None

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if sslp:
            return super()._create_ssl_ctx(sslp)

        cls = type(self)
        if cls._opportunistic_context is None:
            # As PyMySQL's own for this mode: no certificate check, so no CA certificates.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            cls._opportunistic_context = context
        return cls._opportunistic_context


def connect(**kwargs: Any) -> pymysql.connections.Connection:
    """Open a pymysql connection; takes pymysql.connect's arguments.

    A failed TLS handshake is logged as mysql_tls_failed with its cause and the setting
    to change, then raised as pymysql raises it.
    """
    try:
        return _Connection(**kwargs)
    except pymysql.err.OperationalError as exc:
        failure = tls_failure(exc)
        if failure is not None:
            failure_log.record(failure, host=kwargs.get("host"), port=kwargs.get("port"))
        raise


# DBUtils finds the DB-API module, its exceptions and its thread safety level here.
connect.dbapi = pymysql  # type: ignore[attr-defined]


def connect_args(settings: Settings) -> dict[str, Any]:
    """Return the pymysql connect arguments for the configured server, TLS included."""
    return {
        "host": settings.mysql_host,
        "port": settings.mysql_port,
        "user": settings.mysql_user,
        "password": settings.mysql_password.get_secret_value(),
        "database": settings.mysql_database,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": settings.mysql_connect_timeout,
        "read_timeout": settings.mysql_read_timeout,
        "write_timeout": settings.mysql_write_timeout,
        "cursorclass": pymysql.cursors.DictCursor,
        **tls_connect_args(settings),
    }


class Database:
    """A per-process pool; create it after fork, one per worker."""

    def __init__(self, settings: Settings) -> None:
        self.size = settings.mysql_pool_size
        self.wait_seconds = settings.mysql_pool_wait_seconds
        # PooledDB's own blocking mode waits forever, so it runs non-blocking and this
        # semaphore bounds the wait. Under gevent the semaphore is gevent's.
        self._slots = threading.BoundedSemaphore(self.size)
        self._in_use = 0
        # When each pymysql connection last went back to the pool.
        self._returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        POOL_MAX.labels(pool="mysql").set(self.size)
        self._pool = PooledDB(
            creator=connect,
            mincached=0,
            maxcached=self.size,
            maxconnections=self.size,
            blocking=False,
            # DBUtils calls this check each time it takes a connection from the pool, and
            # reopens a connection that fails it (one the server closed on wait_timeout or a
            # restart) instead of failing the request.
            ping=self._is_usable,
            # False: roll back only transactions opened with begin(); autocommit covers the rest.
            reset=False,
            failures=_CONNECTION_FAILURES,
            isfatal=_retry_is_safe,
            **connect_args(settings),
        )

    def _is_usable(self, connection: pymysql.connections.Connection) -> bool:
        """Check a connection taken from the pool; DBUtils reopens it when this returns False or raises.

        DBUtils runs the check while it holds the pool's lock, so a round trip here would
        hold up every other checkout of the worker. A recently returned connection is
        checked on its socket alone.
        """
        if not connection.open:
            return False

        returned_at = self._returned_at.get(connection)
        if returned_at is not None and time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
            # NOTE: the socket shows only a connection that the server closed. One dropped
            # without a close (a network fault) is not reopened here: its statement fails
            # after GATEHOUSE_MYSQL_READ_TIMEOUT, and the request gets 503.
            state = _socket_state(connection)
            if state is not None:
                return state

        connection.ping(reconnect=False)
        return True

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Lend a pooled connection; raise DatabaseUnavailable when none frees up in time."""
        if not self._slots.acquire(timeout=self.wait_seconds):
            log.warning("db_pool_exhausted", size=self.size, wait_seconds=self.wait_seconds)
            raise DatabaseUnavailable("No database connection became free in time.")

        self._in_use += 1
        POOL_IN_USE.labels(pool="mysql").inc()
        try:
            try:
                connection = self._pool.connection()
            except TooManyConnections as exc:
                raise DatabaseUnavailable("No database connection became free in time.") from exc
            try:
                yield connection
            finally:
                self._returned_at[connection.dbapi_connection] = time.monotonic()
                connection.close()
        finally:
            self._in_use -= 1
            POOL_IN_USE.labels(pool="mysql").dec()
            self._slots.release()

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """Lend a DictCursor on a pooled autocommit connection."""
        with self.connection() as connection:
            with connection.cursor() as cursor:
                yield cursor

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Lend a cursor inside one transaction, committed on success and rolled back on error."""
        with self.connection() as connection:
            connection.begin()
            try:
                with connection.cursor() as cursor:
                    yield cursor
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def close(self) -> None:
        """Close every pooled connection; log instead of raising."""
        try:
            self._pool.close()
        except Exception as exc:  # teardown must not raise
            log.warning("db_pool_close_failed", error=repr(exc))

