"""The Redis settings: one server at a URL, or the master that a group of Sentinels elects.

Settings (service.config) inherits these fields, so they are read and validated with
every other GATEHOUSE_* variable. The validators reject the settings of the mode that
is not chosen, so a half-changed deployment fails at start.
"""

from __future__ import annotations

import ipaddress
import re
from contextvars import ContextVar
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings

from service.setting_checks import check_redis_url

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
# service.config.load_settings sets it for the one call.
PARSE_REDIS_URL: ContextVar[bool] = ContextVar("parse_redis_url", default=True)


class RedisSettings(BaseSettings):
    """The fields and checks of the Redis connection, read through service.config.Settings."""

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
        if value is not None and PARSE_REDIS_URL.get():
            check_redis_url(value.get_secret_value())
        return value

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """Return the Sentinels of GATEHOUSE_REDIS_SENTINELS as (host, port) pairs."""
        return parse_host_ports(self.redis_sentinels)
