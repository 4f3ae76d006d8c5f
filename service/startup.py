"""Start-up checks run by the gunicorn master before it forks workers, and by `gatehouse check`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pymysql
import redis
import structlog

from service.config import Settings
from service.database import connect_args
from service.migrate import MIGRATION_TABLE, pending_versions
from service.redis_store import create_client, close_client
from service.tokens.keys import InvalidSigningKey, KeyRing, MissingSigningKey

log = structlog.get_logger(__name__)
T = TypeVar("T")


class StartupCheckFailed(Exception):
    """A dependency or the key ring is not usable; the message says which and why."""


def _retry(name: str, attempt: Callable[[], T], deadline: float) -> T:
    """Call attempt until it succeeds or the deadline passes, backing off up to 2 s."""
    delay = 0.2
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError, redis.RedisError, OSError) as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StartupCheckFailed(f"{name} unreachable after {tries} attempts: {exc}") from None

            log.warning("startup_check_retrying", dependency=name, attempt=tries, error=str(exc))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)


def _check_mysql(settings: Settings) -> None:
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            try:
                cursor.execute(f"SELECT migration_id FROM {MIGRATION_TABLE}")
            except pymysql.err.ProgrammingError:
                raise StartupCheckFailed("database schema missing: run `gatehouse migrate`") from None
            applied = {row["migration_id"] for row in cursor.fetchall()}
    finally:
        connection.close()

    missing = pending_versions(applied)
    if missing:
        raise StartupCheckFailed(
            f"database schema out of date, pending migrations {', '.join(sorted(missing))}: run `gatehouse migrate`"
        )


def _check_redis(settings: Settings) -> None:
    client = create_client(settings)
    try:
        client.ping()
    finally:
        close_client(client)


def run_startup_checks(settings: Settings) -> None:
    """Check the key ring, MySQL with its schema and Redis; raise StartupCheckFailed on the first failure."""
    try:
        ring = KeyRing.load(settings.keys_dir, settings.jwt_algorithm, publish_seconds=settings.key_publish_seconds)
    except (MissingSigningKey, InvalidSigningKey) as exc:
        raise StartupCheckFailed(f"signing key: {exc}") from None

    deadline = time.monotonic() + settings.startup_timeout_seconds
    _retry("mysql", lambda: _check_mysql(settings), deadline)
    _retry("redis", lambda: _check_redis(settings), deadline)
    log.info("startup_checks_passed", signing_kid=ring.signing_key.kid)
