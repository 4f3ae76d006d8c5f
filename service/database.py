"""MySQL connection pool: DBUtils PooledDB over pymysql, with a bounded wait for a free connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator
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

log = structlog.get_logger(__name__)

# DBUtils treats these as "connection lost" and reopens the connection.
_CONNECTION_FAILURES = (pymysql.err.OperationalError, pymysql.err.InterfaceError)
# pymysql codes for a statement that never reached the server: 2003 (cannot connect)
# and 2006 (the write to the socket failed). 2013 (connection lost while reading the
# answer) is not among them, because the server may already have run the statement.
_NOT_SENT_CODES = frozenset({2003, 2006})


def _retry_is_safe(error: Exception) -> bool:
    """Tell DBUtils whether to re-run a failed statement on a new connection.

    DBUtils re-runs a statement outside a transaction after any connection failure;
    for an INSERT that timed out while the server ran it, that writes twice. Only a
    statement that certainly was not sent is re-run.
    """
    if isinstance(error, pymysql.err.InterfaceError):
        return True

    return bool(error.args) and error.args[0] in _NOT_SENT_CODES


def connect_args(settings: Settings) -> dict[str, Any]:
    """Return the pymysql connect arguments for the configured server."""
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
        POOL_MAX.labels(pool="mysql").set(self.size)
        self._pool = PooledDB(
            creator=pymysql,
            mincached=0,
            maxcached=self.size,
            maxconnections=self.size,
            blocking=False,
            # ping=1 checks each connection when it is taken from the pool, so one the
            # server closed (wait_timeout, restart) is reopened instead of failing the request.
            ping=1,
            # False: roll back only transactions opened with begin(); autocommit covers the rest.
            reset=False,
            failures=_CONNECTION_FAILURES,
            isfatal=_retry_is_safe,
            **connect_args(settings),
        )

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

