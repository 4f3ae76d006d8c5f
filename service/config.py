"""Settings read from GATEHOUSE_* environment variables and validated at start."""

from __future__ import annotations

import ipaddress
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import SettingsConfigDict

from service.abuse_settings import AbuseProtectionSettings
from service.setting_checks import check_can_create_file, check_can_open, check_redis_url, log_lock_file

ENV_PREFIX = "GATEHOUSE_"

# OWASP's minimum for argon2id (Password Storage Cheat Sheet): 19 MiB, 2 passes, 1 lane.
ARGON2_MIN_MEMORY_KIB = 19456
ARGON2_MIN_TIME_COST = 2


# Settings each Redis mode requires, and those it accepts but does not require.
# Setting one of the other mode is an error, so a half-changed deployment fails at start.
REDIS_MODE_SETTINGS = {
    "standalone": {"redis_url"},
    "sentinel": {"redis_sentinels", "redis_sentinel_service"},
}
REDIS_OPTIONAL_SETTINGS = {
    "standalone": set(),
    "sentinel": {"redis_sentinel_password", "redis_password", "redis_db"},
}


# Text settings where an empty value means unset or none. Every other str, Path and
# SecretStr setting rejects an empty value: GATEHOUSE_KEYS_DIR= would otherwise name the
# current directory, and GATEHOUSE_MYSQL_PASSWORD= a login without a password.
# An empty GATEHOUSE_BAN_ALLOWLIST exempts no address from bans.
EMPTY_MEANS_UNSET = {
    "redis_url", "redis_sentinels", "redis_sentinel_service", "redis_sentinel_password", "redis_password",
    "log_file", "backup_dir", "ban_allowlist",
}
TEXT_TYPES = (str, Path, SecretStr)


def is_text_setting(annotation: Any) -> bool:
    """Tell whether a field annotation is str, Path or SecretStr, alone or in a union such as Path | None."""
    return annotation in TEXT_TYPES or any(member in TEXT_TYPES for member in get_args(annotation))


# Characters of a host name or IPv4 address. An IPv6 address goes in brackets instead.
HOST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,253}")
# The characters that sentinel.conf allows in a master name.
SENTINEL_SERVICE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_host_ports(value: str) -> list[tuple[str, int]]:
    """Parse "host:port,[::1]:port" into (host, port) pairs; raise ValueError naming the bad entry."""
    addresses = []
    for entry in (part.strip() for part in value.split(",")):
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r} is not host:port, such as sentinel-0:26379")

        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            valid_host = _is_ipv6_address(host)
        else:
            valid_host = HOST_NAME.fullmatch(host) is not None
        if not valid_host:
            raise ValueError(f"{entry!r} has an invalid host: give a host name, an IPv4 address or an IPv6 "
                             "address in brackets, such as [::1]:26379")
        addresses.append((host, int(port)))
    return addresses


def _is_ipv6_address(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# Whether Settings parses GATEHOUSE_REDIS_URL with redis-py, which imports redis.
# load_settings sets it for the one call.
_PARSE_REDIS_URL: ContextVar[bool] = ContextVar("parse_redis_url", default=True)


class InvalidConfiguration(Exception):
    """A setting is missing or invalid; the message names the variable and the fix."""


class Settings(AbuseProtectionSettings):
    """Every setting of the service; the field name is the variable name without the prefix.

    The abuse-protection settings come from AbuseProtectionSettings.
    """

    # allow_inf_nan=False: "nan" passes every ge/le bound, so a float setting would take it.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False)

    # Server (read by gunicorn.conf.py)
    bind: str = Field("127.0.0.1:8000", description="host:port that gunicorn listens on")
    workers: int = Field(2, ge=1, le=64, description="number of gunicorn worker processes, 1-64")
    worker_connections: int = Field(
        1000, ge=10, le=100_000, description="concurrent connections per gevent worker, 10-100000"
    )
    timeout: int = Field(30, ge=5, le=600, description="seconds before a silent worker is killed, 5-600")
    graceful_timeout: int = Field(
        30, ge=1, le=600, description="seconds in-flight requests get to finish on shutdown, 1-600"
    )
    keepalive: int = Field(5, ge=0, le=300, description="seconds an idle keep-alive connection stays open, 0-300")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="one of debug, info, warning, error"
    )
    trusted_proxy_count: int = Field(
        0, ge=0, le=10, description="number of reverse proxies in front whose X-Forwarded-For is trusted, 0-10"
    )
    max_body_bytes: int = Field(
        16_384, ge=1024, le=10_485_760, description="largest accepted request body in bytes, 1024-10485760"
    )
    body_read_timeout_seconds: float = Field(
        10.0, ge=1, le=300,
        description="seconds a request body may take to arrive in full before the request gets 408, 1-300",
    )

    # MySQL / MariaDB
    mysql_host: str = Field("127.0.0.1", min_length=1, description="MySQL host name or address")
    mysql_port: int = Field(3306, ge=1, le=65535, description="MySQL TCP port, 1-65535")
    mysql_user: str = Field("gatehouse", min_length=1, description="MySQL user name")
    mysql_password: SecretStr = Field(description="MySQL password of GATEHOUSE_MYSQL_USER")
    mysql_database: str = Field("gatehouse", pattern=r"^[A-Za-z0-9_]{1,64}$", description="MySQL database name")
    mysql_pool_size: int = Field(10, ge=1, le=200, description="MySQL connections per worker, 1-200")
    mysql_pool_wait_seconds: float = Field(
        2.0, gt=0, le=60, description="seconds a request waits for a free MySQL connection, up to 60"
    )
    mysql_connect_timeout: float = Field(3.0, gt=0, le=60, description="MySQL connect timeout in seconds")
    mysql_read_timeout: float = Field(5.0, gt=0, le=300, description="MySQL read timeout in seconds")
    mysql_write_timeout: float = Field(5.0, gt=0, le=300, description="MySQL write timeout in seconds")

    # Redis: one server at a URL, or the master that a group of Sentinels elects.
    # The validators below reject the settings of the mode that is not chosen.
    redis_mode: Literal["standalone", "sentinel"] = Field(
        "standalone",
        description="standalone (one server at GATEHOUSE_REDIS_URL) or sentinel (the master that "
                    "GATEHOUSE_REDIS_SENTINELS elect)",
    )
    redis_url: SecretStr | None = Field(
        None, validate_default=True,
        description="Redis URL such as redis://:PASSWORD@127.0.0.1:6379/0 (standalone mode)",
    )
    redis_sentinels: str = Field(
        "", validate_default=True,
        description="comma-separated host:port list of Sentinels, such as sentinel-0:26379,sentinel-1:26379 "
                    "(sentinel mode)",
    )
    redis_sentinel_service: str = Field(
        "", validate_default=True,
        description="name of the master that the Sentinels monitor, such as mymaster (sentinel mode)",
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, validate_default=True,
        description="password of the Sentinels themselves; unset when they need none (sentinel mode)",
    )
    redis_password: SecretStr | None = Field(
        None, validate_default=True,
        description="password of the Redis master and replicas; unset when they need none (sentinel mode)",
    )
    redis_db: int = Field(0, ge=0, validate_default=True, description="Redis database number, 0 or more (sentinel mode)")
    redis_wait_replicas: int = Field(
        0, ge=0, le=10,
        description="replicas that must acknowledge each session write before it succeeds, 0-10; 0 turns WAIT off",
    )
    redis_wait_timeout_seconds: float = Field(
        0.5, ge=0.001, le=10,
        description="seconds a session write waits for the replica acknowledgements, 0.001-10",
    )
    redis_pool_size: int = Field(20, ge=1, le=1000, description="Redis connections per worker, 1-1000")
    redis_pool_wait_seconds: float = Field(
        2.0, gt=0, le=60, description="seconds a request waits for a free Redis connection, up to 60"
    )
    redis_connect_timeout: float = Field(2.0, gt=0, le=60, description="Redis connect timeout in seconds")
    redis_socket_timeout: float = Field(2.0, gt=0, le=60, description="Redis read/write timeout in seconds")

    # Tokens
    keys_dir: Path = Field(
        description="directory of PEM private keys; all verify, and the newest whose publish period has passed signs"
    )
    jwt_algorithm: Literal["EdDSA", "ES256", "RS256"] = Field(
        "EdDSA", description="access-token signing algorithm: EdDSA, ES256 or RS256"
    )
    jwt_issuer: str = Field("gatehouse", min_length=1, description="the iss claim of access tokens")
    jwt_audience: str = Field("gatehouse", min_length=1, description="the aud claim of access tokens")
    jwt_leeway_seconds: int = Field(10, ge=0, le=120, description="clock skew allowed on exp and iat, 0-120")
    access_token_ttl_seconds: int = Field(
        900, ge=60, le=3600, description="access-token lifetime in seconds, 60-3600"
    )
    session_ttl_seconds: int = Field(
        30 * 86400, ge=3600, le=365 * 86400, description="absolute session lifetime in seconds, 3600-31536000"
    )
    refresh_grace_seconds: float = Field(
        10.0, ge=0, le=60, description="seconds a rotated refresh token may still be presented, 0-60"
    )
    # A login beyond this ends the account's oldest sessions in the script that creates the new
    # one (service.session_scripts.CREATE_LUA). The maximum bounds the work of that eviction.
    max_sessions_per_user: int = Field(
        100, ge=1, le=10_000,
        description="live sessions one account may have, 1-10000; a login beyond it ends the oldest ones",
    )
    jwks_max_age_seconds: int = Field(
        300, ge=0, le=86_400,
        description="seconds verifiers may cache the JWKS document (its Cache-Control max-age), 0-86400",
    )
    key_publish_seconds: int = Field(
        300, ge=0, le=86_400,
        description="seconds a new signing key is published in the JWKS before it signs, counted from the time "
                    "in its file name, 0-86400; 0 signs at once, any other value must be at least "
                    "GATEHOUSE_JWKS_MAX_AGE_SECONDS",
    )

    # Passwords (argon2id)
    argon2_memory_kib: int = Field(
        ARGON2_MIN_MEMORY_KIB, ge=ARGON2_MIN_MEMORY_KIB, le=1_048_576, description="argon2id memory in KiB, 19456-1048576"
    )
    argon2_time_cost: int = Field(
        ARGON2_MIN_TIME_COST, ge=ARGON2_MIN_TIME_COST, le=20, description="argon2id passes, 2-20"
    )
    argon2_parallelism: int = Field(1, ge=1, le=16, description="argon2id lanes, 1-16")
    argon2_threads: int = Field(
        1, ge=1, le=64, description="threads per worker that compute argon2id hashes at the same time, 1-64"
    )
    argon2_release_idle_seconds: float = Field(
        5.0, ge=0, le=3600,
        description="seconds without a hash after which a worker gives its argon2id memory back to the "
                    "operating system, 0-3600; 0 never does",
    )

    # Per-worker caches of the authenticated hot path
    claims_cache_max_entries: int = Field(
        10_000, ge=100, le=1_000_000, description="verified access tokens cached per worker, 100-1000000"
    )
    user_cache_max_entries: int = Field(
        10_000, ge=100, le=1_000_000, description="users with roles cached per worker, 100-1000000"
    )
    user_cache_seconds: float = Field(
        60.0, ge=0.5, le=3600, description="seconds a cached user and roles are reused without a change event, 0.5-3600"
    )

    # Probes and start-up
    ready_cache_seconds: float = Field(1.0, ge=0, le=30, description="seconds a /ready result is reused, 0-30")
    startup_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="seconds the start-up checks keep retrying MySQL and Redis"
    )

    # Process lifecycle, log file and maintenance jobs
    shutdown_drain_seconds: float = Field(
        0.0, ge=0, le=300,
        description="seconds workers keep serving after SIGTERM or SIGINT while /ready returns 503, 0-300",
    )
    log_file: Path | None = Field(
        None,
        description="path of a JSON log file written besides stdout, rotated and gzip-archived, in a directory "
                    "this user can write to; unset for none",
    )
    log_file_max_bytes: int = Field(
        104_857_600, ge=1024, le=10_737_418_240,
        description="size in bytes at which the log file is rotated, 1024-10737418240",
    )
    log_file_rotate_when: Literal["S", "M", "H", "D", "midnight"] = Field(
        "midnight", description="time-based rotation unit of the log file: S, M, H, D or midnight"
    )
    log_file_rotate_interval: int = Field(
        1, ge=1, le=1000, description="number of rotate-when units between time-based rotations, 1-1000"
    )
    log_file_backups: int = Field(
        14, ge=1, le=10_000, description="gzip archives of the log file kept after rotation, 1-10000"
    )
    job_lock_seconds: int = Field(
        3600, ge=10, le=86_400, description="seconds a maintenance job's Redis lock lives if its holder dies, 10-86400"
    )
    purge_batch_size: int = Field(
        500, ge=10, le=10_000, description="keys examined per Redis round trip by `gatehouse tokens purge`, 10-10000"
    )
    backup_dir: Path | None = Field(
        None, description="directory that contains one subdirectory per backup; required by the backup commands"
    )
    backup_keep: int = Field(7, ge=1, le=1000, description="newest backups kept by `gatehouse backup create`, 1-1000")

    @field_validator("*", mode="before")
    @classmethod
    def _reject_empty(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if not isinstance(value, str) or not is_text_setting(annotation) or info.field_name in EMPTY_MEANS_UNSET:
            return value

        if value == "":
            raise PydanticCustomError("empty", "is empty")
        # A password may consist of spaces, but no name, path or address can.
        if not value.strip() and SecretStr not in (annotation, *get_args(annotation)):
            raise PydanticCustomError("empty", "contains only whitespace")
        return value

    @field_validator("redis_url", "redis_sentinel_password", "redis_password", mode="before")
    @classmethod
    def _empty_as_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url", "redis_sentinels", "redis_sentinel_service", "redis_sentinel_password",
                     "redis_password", "redis_db")
    @classmethod
    def _check_redis_mode(cls, value: Any, info: ValidationInfo) -> Any:
        mode = info.data.get("redis_mode")
        if mode is None:
            return value  # GATEHOUSE_REDIS_MODE itself is invalid and reported first

        required = REDIS_MODE_SETTINGS[mode]
        if info.field_name in required and value in (None, ""):
            raise PydanticCustomError("missing", "Field required")
        default = cls.model_fields[info.field_name].default
        if info.field_name not in required and info.field_name not in REDIS_OPTIONAL_SETTINGS[mode] \
                and value != default:
            raise PydanticCustomError("not_applicable", f"GATEHOUSE_REDIS_MODE is {mode}")
        if info.field_name == "redis_sentinels" and value:
            parse_host_ports(value)
        if info.field_name == "redis_sentinel_service" and value and not SENTINEL_SERVICE_NAME.fullmatch(value):
            raise ValueError(f"{value!r} contains characters other than A-Z, a-z, 0-9, '.', '-' and '_'")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and _PARSE_REDIS_URL.get():
            check_redis_url(value.get_secret_value())
        return value

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """Return the Sentinels of GATEHOUSE_REDIS_SENTINELS as (host, port) pairs."""
        return parse_host_ports(self.redis_sentinels)

    @field_validator("backup_dir", mode="before")
    @classmethod
    def _empty_backup_dir(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("log_file", mode="before")
    @classmethod
    def _check_log_file(cls, value: Any) -> Any:
        if value in ("", None):
            return None

        path = Path(value)
        if not path.parent.is_dir():
            raise ValueError(f"directory {path.parent} does not exist")
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not a file")

        # The handler creates the log, its lock file and the archives in this directory,
        # opens the log to append and the lock file to read and write.
        check_can_create_file(path.parent)
        check_can_open(path, os.O_WRONLY | os.O_APPEND)
        check_can_open(log_lock_file(path), os.O_RDWR)
        return path

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, for example 127.0.0.1:8000")

        return value

    @field_validator("key_publish_seconds")
    @classmethod
    def _check_key_publish_seconds(cls, value: int, info: ValidationInfo) -> int:
        max_age = info.data.get("jwks_max_age_seconds")
        if max_age is None:
            return value  # GATEHOUSE_JWKS_MAX_AGE_SECONDS itself is invalid and reported first

        # A shorter period lets a new key sign while a verifier's cached JWKS still lacks it.
        if 0 < value < max_age:
            raise ValueError(
                f"{value} is below GATEHOUSE_JWKS_MAX_AGE_SECONDS, which is {max_age}, so verifiers holding a "
                "cached JWKS would reject the tokens of a new key"
            )
        return value

    @field_validator("keys_dir")
    @classmethod
    def _check_keys_dir(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")

        return value.resolve()

    def summary(self) -> dict[str, Any]:
        """Return the settings for the start-up log, with secrets redacted."""
        summary: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "**redacted**"
            elif isinstance(value, Path):
                value = str(value)
            summary[name] = value
        return summary

def load_settings(overrides: dict[str, Any] | None = None, *, parse_redis_url: bool = True) -> Settings:
    """Read settings from the environment, then overrides; raise InvalidConfiguration on the first problem.

    parse_redis_url=False skips parsing GATEHOUSE_REDIS_URL with redis-py, for the
    gunicorn master, which must not import redis before it forks.
    """
    token = _PARSE_REDIS_URL.set(parse_redis_url)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise InvalidConfiguration(_describe(exc)) from None
    finally:
        _PARSE_REDIS_URL.reset(token)


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    variable = ENV_PREFIX + field.upper()
    info = Settings.model_fields.get(field)
    expected = info.description if info and info.description else "a valid value"
    if error["type"] == "missing":
        return f"{variable} is not set: set it to {expected}"
    if error["type"] == "empty":
        return f"{variable} {error['msg']}: set it to {expected}"

    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "not_applicable":
        return f"{variable} is set, but {message}, which does not use it: unset {variable}"

    return f"{variable} is invalid ({message}): set it to {expected}"
