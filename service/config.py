"""Settings read from GATEHOUSE_* environment variables and validated at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.abuse_settings import AbuseProtectionSettings
from service.mysql_tls_settings import MySQLTLSSettings
from service.redis_settings import PARSE_REDIS_URL, RedisSettings
from service.environment import ENV_PREFIX, UpperCaseEnvSource
from service.setting_checks import check_can_create_file, check_can_open, log_lock_file


# OWASP's minimum configurations for argon2id with 1 lane (Password Storage Cheat Sheet), as
# (memory in KiB, passes). They "provide an equal level of defense" and trade memory for CPU.
OWASP_ARGON2ID_MINIMUMS = ((7168, 5), (9216, 4), (12288, 3), (19456, 2), (47104, 1))
# The default is the 7 MiB configuration, because a worker keeps its hashing memory while
# logins come. On the benchmark machine, two 7 MiB hashes also fit in the cores' shared L3
# cache beside the workers, and two of 19 MiB did not (docs/capacity.md).
ARGON2_DEFAULT_MEMORY_KIB, ARGON2_DEFAULT_TIME_COST = OWASP_ARGON2ID_MINIMUMS[0]
ARGON2_MIN_MEMORY_KIB = OWASP_ARGON2ID_MINIMUMS[0][0]


def argon2_min_time_cost(memory_kib: int) -> int | None:
    """Return the fewest passes OWASP allows with this much memory, or None below its smallest."""
    passes = [time_cost for memory, time_cost in OWASP_ARGON2ID_MINIMUMS if memory_kib >= memory]
    return min(passes, default=None)


# Text settings where an empty value means unset or none. Every other str, Path and
# SecretStr setting rejects an empty value: GATEHOUSE_KEYS_DIR= would otherwise name the
# current directory, and GATEHOUSE_MYSQL_PASSWORD= a login without a password.
# An empty GATEHOUSE_BAN_ALLOWLIST exempts no address from bans, and an empty
# GATEHOUSE_TRUSTED_PROXY_NETWORKS trusts the proxies' header from any peer.
EMPTY_MEANS_UNSET = {
    "redis_url", "redis_sentinels", "redis_sentinel_service", "redis_sentinel_password", "redis_password",
    "log_file", "backup_dir", "ban_allowlist", "password_blocklist_file", "mysql_tls_ca", "mysql_tls_cert", "mysql_tls_key",
    "trusted_proxy_networks",
}
TEXT_TYPES = (str, Path, SecretStr)
# The spellings of number settings. pydantic alone also reads 1_000, +5, 5.0 as an integer
# and 1e3 as a decimal, which are more often typing mistakes than intent.
INTEGER_SPELLING = re.compile(r"-?[0-9]+")
DECIMAL_SPELLING = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def is_text_setting(annotation: Any) -> bool:
    """Tell whether a field annotation is str, Path or SecretStr, alone or in a union such as Path | None."""
    return annotation in TEXT_TYPES or any(member in TEXT_TYPES for member in get_args(annotation))


class InvalidConfiguration(Exception):
    """A setting is missing or invalid; the message names the variable and the fix."""


class Settings(RedisSettings, AbuseProtectionSettings, MySQLTLSSettings):
    """Every setting of the service; the field name is the variable name without the prefix.

    The Redis settings come from RedisSettings, the abuse-protection settings from
    AbuseProtectionSettings, and the settings of TLS to MySQL from MySQLTLSSettings.
    """

    # allow_inf_nan=False: "nan" passes every ge/le bound, so a float setting would take it.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, UpperCaseEnvSource(settings_cls), dotenv_settings, file_secret_settings

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
        0, ge=0, le=10, validate_default=True,
        description="number of reverse proxies in front whose X-Forwarded-For is trusted, 0-10",
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
        ARGON2_DEFAULT_MEMORY_KIB, ge=ARGON2_MIN_MEMORY_KIB, le=1_048_576,
        description="argon2id memory in KiB, 7168-1048576",
    )
    argon2_time_cost: int = Field(
        ARGON2_DEFAULT_TIME_COST, ge=1, le=20,
        description="argon2id passes, 1-20, at least OWASP's minimum for GATEHOUSE_ARGON2_MEMORY_KIB: "
                    "5 from 7168 KiB, 4 from 9216, 3 from 12288, 2 from 19456, 1 from 47104",
    )
    argon2_parallelism: int = Field(1, ge=1, le=16, description="argon2id lanes, 1-16")
    argon2_threads: int = Field(
        1, ge=1, le=64, description="threads per worker that compute argon2id hashes at the same time, 1-64"
    )
    password_blocklist_file: Path | None = Field(
        None,
        description="path of a UTF-8 text file of passwords that new passwords must not be, one per line, at most "
                    "1000000 lines, besides the bundled list of common passwords; unset for the bundled list alone",
    )
    argon2_release_idle_seconds: float = Field(
        5.0, ge=0, le=3600,
        description="seconds without a hash after which a worker gives the argon2id memory that libargon2 kept "
                    "back to the operating system, 0-3600; 0 never does",
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

    @field_validator("*", mode="before")
    @classmethod
    def _check_number_spelling(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = {annotation := cls.model_fields[info.field_name].annotation, *get_args(annotation)}
        if not isinstance(value, str) or not kinds & {int, float}:
            return value
        if not value.strip():
            # As for text settings (_reject_empty), rather than pydantic's message about parsing.
            raise PydanticCustomError("empty", "is empty" if value == "" else "contains only whitespace")

        if float in kinds:
            if DECIMAL_SPELLING.fullmatch(value.strip()) is None:
                raise PydanticCustomError("number_spelling", "write it with the digits 0-9 and at most one "
                                          "decimal point between two of them (0.5), without +, _ or an exponent")
        elif INTEGER_SPELLING.fullmatch(value.strip()) is None:
            raise PydanticCustomError("number_spelling", "write it with the digits 0-9 only, without +, _ or a "
                                      "decimal point")
        return value

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

    @field_validator("trusted_proxy_count")
    @classmethod
    def _check_proxy_networks_used(cls, value: int, info: ValidationInfo) -> int:
        # GATEHOUSE_TRUSTED_PROXY_NETWORKS comes from a base class, so it is validated first.
        if value == 0 and (info.data.get("trusted_proxy_networks") or "").strip():
            raise ValueError("0 while GATEHOUSE_TRUSTED_PROXY_NETWORKS is set, which then has no effect: set the "
                             "number of proxies, or leave the networks empty")
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

    @field_validator("argon2_time_cost")
    @classmethod
    def _check_argon2_time_cost(cls, value: int, info: ValidationInfo) -> int:
        memory_kib = info.data.get("argon2_memory_kib")
        if memory_kib is None:
            return value  # GATEHOUSE_ARGON2_MEMORY_KIB itself is invalid and reported first

        least = argon2_min_time_cost(memory_kib)
        if least is not None and value < least:
            raise ValueError(
                f"{value} passes with GATEHOUSE_ARGON2_MEMORY_KIB={memory_kib} is weaker than OWASP's minimum "
                f"for argon2id, {least} passes with that memory"
            )
        return value

    @field_validator("password_blocklist_file", mode="before")
    @classmethod
    def _empty_password_blocklist_file(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("password_blocklist_file")
    @classmethod
    def _check_password_blocklist_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None

        # Read in full, so that an unreadable line stops the start rather than the first registration.
        from service.password_blocklist import read_file

        read_file(value)
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
    token = PARSE_REDIS_URL.set(parse_redis_url)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise InvalidConfiguration(_describe(exc)) from None
    finally:
        PARSE_REDIS_URL.reset(token)


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
    if error["type"] == "unpaired":
        return f"{variable} is set, but {message} is not: set both or neither"

    return f"{variable} is invalid ({message}): set it to {expected}"
