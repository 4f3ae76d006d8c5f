"""Start-up checks run by the gunicorn master before it forks workers, and by `gatehouse check`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pymysql
import redis
import structlog
from pymysql.constants import CR, ER
from redis.sentinel import SentinelConnectionPool

from service import password_blocklist
from service.config import Settings
from service.database import connect, connect_args
from service.migrate import MIGRATION_TABLE, pending_versions
from service.mysql_tls import tls_failure
from service.redis_store import create_client, close_client
from service.tokens.keys import InvalidSigningKey, KeyRing, MissingSigningKey

log = structlog.get_logger(__name__)
T = TypeVar("T")


# MySQL and MariaDB errors that no retry fixes, with what to change. The server rejects the
# login or the database, or the account lacks a privilege, until someone changes the
# settings or the server's accounts.
_LOGIN_HINT = "check GATEHOUSE_MYSQL_USER and GATEHOUSE_MYSQL_PASSWORD"
_GRANT_HINT = "grant GATEHOUSE_MYSQL_USER its privileges on GATEHOUSE_MYSQL_DATABASE"
# MariaDB and MySQL report a database that does not exist as 1044 to an account that may not see it.
_DATABASE_HINT = "check GATEHOUSE_MYSQL_DATABASE, or grant GATEHOUSE_MYSQL_USER its privileges on that database"
ER_ACCESS_DENIED_NO_PASSWORD_ERROR = 1698  # MariaDB and MySQL, missing from pymysql.constants.ER
MYSQL_PERMANENT_ERRORS = {
    ER.ACCESS_DENIED_ERROR: _LOGIN_HINT,
    ER_ACCESS_DENIED_NO_PASSWORD_ERROR: _LOGIN_HINT,
    ER.NOT_SUPPORTED_AUTH_MODE: _LOGIN_HINT,
    CR.CR_AUTH_PLUGIN_CANNOT_LOAD: _LOGIN_HINT,
    ER.MUST_CHANGE_PASSWORD: "the password of GATEHOUSE_MYSQL_USER has expired: set a new one",
    ER.MUST_CHANGE_PASSWORD_LOGIN: "the password of GATEHOUSE_MYSQL_USER has expired: set a new one",
    ER.HOST_NOT_PRIVILEGED: "GATEHOUSE_MYSQL_USER may not connect from this host: check the account's host part",
    ER.BAD_DB_ERROR: "check GATEHOUSE_MYSQL_DATABASE, or create the database and run `gatehouse migrate`",
    ER.DBACCESS_DENIED_ERROR: _DATABASE_HINT,
    ER.TABLEACCESS_DENIED_ERROR: _GRANT_HINT,
    ER.COLUMNACCESS_DENIED_ERROR: _GRANT_HINT,
}
# The maximum length of a dependency error that the check quotes before its settings hint.
MAX_ERROR_CHARACTERS = 300
# The server's reply to SELECT with a database number beyond its `databases` setting.
REDIS_DB_OUT_OF_RANGE = "DB index is out of range"


class StartupCheckFailed(Exception):
    """A dependency or the key ring is not usable; the message says which and why."""


class _PermanentFailure(Exception):
    """A start-up check failed in a way that retrying cannot fix; the message contains the fix."""


def _shortened(error: str) -> str:
    """Cut an error message to MAX_ERROR_CHARACTERS. redis-py's Sentinel errors describe the whole pool."""
    return error if len(error) <= MAX_ERROR_CHARACTERS else error[:MAX_ERROR_CHARACTERS] + "..."


def _retry(name: str, attempt: Callable[[], T], deadline: float, hint: str) -> T:
    """Call attempt until it succeeds or the deadline passes, backing off up to 2 s.

    A _PermanentFailure ends the retries at once. `hint` names the settings to check when
    the server stays unreachable.
    """
    delay = 0.2
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except _PermanentFailure as exc:
            raise StartupCheckFailed(f"{name} check failed: {exc}") from None
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError, redis.RedisError, OSError) as exc:
            remaining = deadline - time.monotonic()
            error = _shortened(str(exc))
            if remaining <= 0:
                raise StartupCheckFailed(f"{name} unreachable after {tries} attempts: {error}: {hint}") from None

            log.warning("startup_check_retrying", dependency=name, attempt=tries, error=error)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)


def _check_mysql(settings: Settings) -> None:
    try:
        _check_mysql_schema(settings)
    except pymysql.err.OperationalError as exc:
        failure = tls_failure(exc)
        if failure is not None:
            raise _PermanentFailure(f"TLS to MySQL failed ({failure.reason}): {failure.hint}") from None

        hint = MYSQL_PERMANENT_ERRORS.get(exc.args[0]) if exc.args else None
        if hint is None:
            raise
        text = exc.args[1] if len(exc.args) > 1 else ""
        raise _PermanentFailure(f"MySQL error {exc.args[0]} ({text}): {hint}") from None


def _check_mysql_schema(settings: Settings) -> None:
    connection = connect(**connect_args(settings))
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
        if isinstance(client.connection_pool, SentinelConnectionPool):
            _check_sentinels(client.connection_pool)
        client.ping()
        _report_eviction_policy(client)
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError,
            redis.exceptions.AuthenticationWrongNumberOfArgsError) as exc:
        if settings.redis_mode == "sentinel":
            hint = "check GATEHOUSE_REDIS_PASSWORD"
        else:
            hint = "check the user name and password in GATEHOUSE_REDIS_URL"
        raise _PermanentFailure(f"Redis rejected the login ({exc}): {hint}") from None
    except redis.exceptions.NoPermissionError as exc:
        raise _PermanentFailure(f"Redis denied a command ({exc}): grant the Redis user the commands the service "
                                "runs") from None
    except redis.ResponseError as exc:
        if not str(exc).startswith(REDIS_DB_OUT_OF_RANGE):
            raise
        variable = "GATEHOUSE_REDIS_DB" if settings.redis_mode == "sentinel" else "the path of GATEHOUSE_REDIS_URL"
        raise _PermanentFailure(f"Redis has no such database ({exc}): check the database number in {variable}, "
                                "or the server's databases setting") from None
    finally:
        close_client(client)


def _report_eviction_policy(client: redis.Redis) -> None:
    """Log a warning when Redis may evict keys under memory pressure, which loses data without an error.

    Under a volatile-* policy, common on managed services, Redis evicts sessions and
    refresh tokens, which expire. Under allkeys-* it can also evict the revoked set, the
    bans and the rate-limit counters. Only noeviction makes a full Redis refuse writes,
    which the service reports as 503. The policy comes from INFO memory, because managed
    services often deny CONFIG; a denied INFO is logged and skipped, since a warning is
    not worth failing the start.
    """
    try:
        memory = client.info("memory")
    except redis.ResponseError as exc:
        log.info("redis_eviction_policy_unknown", error=str(exc)[:300])
        return
    policy = memory.get("maxmemory_policy")
    # Without a memory limit (maxmemory 0) Redis never evicts, whatever the policy.
    if policy is not None and policy != "noeviction" and memory.get("maxmemory"):
        log.warning("redis_eviction_policy", policy=policy,
                    hint="set maxmemory-policy to noeviction: under this policy Redis may evict sessions, "
                         "revocations, bans or rate-limit counters when it is full")


def _check_sentinels(pool: SentinelConnectionPool) -> None:
    """Fail at once when no Sentinel replies and at least one rejects GATEHOUSE_REDIS_SENTINEL_PASSWORD.

    redis-py turns every Sentinel's error into one MasterNotFoundError, which reads the
    same for a wrong password as for Sentinels that are still starting.
    """
    rejected = None
    for sentinel in pool.sentinel_manager.sentinels:
        try:
            sentinel.ping()
            return
        except redis.AuthenticationError as exc:
            rejected = exc
        except redis.RedisError:
            pass
    if rejected is not None:
        raise _PermanentFailure(f"a Sentinel rejected the login ({rejected}): check GATEHOUSE_REDIS_SENTINEL_PASSWORD")


def run_startup_checks(settings: Settings) -> None:
    """Check the key ring, MySQL with its schema and Redis; raise StartupCheckFailed on the first failure."""
    try:
        ring = KeyRing.load(settings.keys_dir, settings.jwt_algorithm, publish_seconds=settings.key_publish_seconds)
    except (MissingSigningKey, InvalidSigningKey) as exc:
        raise StartupCheckFailed(f"signing key: {exc}") from None
    # Workers load the bundled password list at their first new password; reading it
    # here once finds a damaged installation before any worker starts.
    try:
        password_blocklist.bundled()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise StartupCheckFailed(f"bundled password blocklist: {exc}") from None

    deadline = time.monotonic() + settings.startup_timeout_seconds
    _retry("mysql", lambda: _check_mysql(settings), deadline,
           "check GATEHOUSE_MYSQL_HOST and GATEHOUSE_MYSQL_PORT, and that the server runs")
    redis_settings = "GATEHOUSE_REDIS_SENTINELS" if settings.redis_mode == "sentinel" else "GATEHOUSE_REDIS_URL"
    redis_hint = f"check {redis_settings}, and that the server runs"
    if settings.redis_mode != "sentinel" and settings.redis_url.get_secret_value().lower().startswith("rediss://"):
        # A server without TLS leaves the TLS handshake unanswered, which reads as a timeout.
        redis_hint += " and accepts TLS, which rediss:// asks for"
    _retry("redis", lambda: _check_redis(settings), deadline, redis_hint)
    log.info("startup_checks_passed", signing_kid=ring.signing_key.kid)
