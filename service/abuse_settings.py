"""The abuse-protection settings: IP bans, rate limits, login throttling and request body limits.

Settings (service.config) inherits these fields, so they are read and validated with
every other GATEHOUSE_* variable. docs/abuse-protection.md explains each control.
"""

from __future__ import annotations

import ipaddress

from limits import parse_many
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings


class AbuseProtectionSettings(BaseSettings):
    """The fields and checks of the abuse controls, read through service.config.Settings."""

    # IP bans
    ban_enabled: bool = Field(True, description="true or false: ban addresses automatically after abuse")
    ban_window_seconds: int = Field(
        300, ge=10, le=86400, description="seconds over which failed logins and rate-limit hits are counted, 10-86400"
    )
    ban_failed_logins: int = Field(
        20, ge=3, le=10_000, description="failed logins from one address within the window that ban it, 3-10000"
    )
    ban_distinct_accounts: int = Field(
        10, ge=2, le=10_000,
        description="distinct accounts one address fails against within the window that ban it, 2-10000",
    )
    ban_rate_limit_hits: int = Field(
        50, ge=5, le=100_000, description="429 responses to one address within the window that ban it, 5-100000"
    )
    ban_base_seconds: int = Field(900, ge=10, le=604_800, description="length of a first ban in seconds, 10-604800")
    ban_multiplier: float = Field(4.0, ge=1, le=100, description="factor by which each repeat ban grows, 1-100")
    ban_max_seconds: int = Field(
        604_800, ge=60, le=31_536_000, description="maximum length of an automatic ban in seconds, 60-31536000"
    )
    ban_offence_decay_seconds: int = Field(
        2_592_000, ge=3600, le=31_536_000,
        description="seconds without a ban after which an address's offence history is forgotten, 3600-31536000",
    )
    ban_allowlist: str = Field(
        "127.0.0.0/8,::1/128",
        description="comma-separated networks (CIDR) that are never banned, such as probes and ingress",
    )

    trusted_proxy_networks: str = Field(
        "",
        description="comma-separated networks (CIDR) of the proxies counted in GATEHOUSE_TRUSTED_PROXY_COUNT; "
                    "X-Forwarded-For from other peers is ignored. Empty: trusted from every peer",
    )

    @field_validator("trusted_proxy_networks")
    @classmethod
    def _check_names_a_network(cls, value: str) -> str:
        # Empty trusts every peer, so a value that names no network, such as ",", would
        # fail open: it is rejected rather than read as empty.
        if value.strip() and not any(part.strip() for part in value.split(",")):
            raise ValueError(f"{value!r} names no network: give networks such as 10.0.0.0/8, or leave it empty")
        return value

    @field_validator("ban_allowlist", "trusted_proxy_networks")
    @classmethod
    def _check_allowlist(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{part.strip()!r} is not a network such as 10.0.0.0/8") from None
        return value

    # Rate limits, login throttling and request body limits.
    # Rate limits use the notation of the `limits` library: "20/minute;200/hour"
    # means both at once.
    rate_limit_default: str = Field(
        "600/minute", description="requests per client address to each route without its own limit, e.g. 600/minute"
    )
    rate_limit_login: str = Field(
        "20/minute;200/hour", description="login attempts per client address, e.g. 20/minute;200/hour"
    )
    rate_limit_login_account: str = Field(
        "10/minute;60/hour", description="login attempts per account from addresses it never logged in from"
    )
    rate_limit_refresh: str = Field("60/minute", description="refresh requests per client address, e.g. 60/minute")
    rate_limit_register: str = Field(
        "10/minute;50/hour", description="registrations per client address, e.g. 10/minute;50/hour"
    )
    rate_limit_retry_seconds: float = Field(
        2.0, gt=0, le=300, description="seconds between Redis retries while rate limits run from memory, up to 300"
    )
    login_delay_after_failures: int = Field(
        5, ge=1, le=100, description="failed logins per account before each further attempt is delayed, 1-100"
    )
    login_delay_base_seconds: int = Field(
        1, ge=1, le=60, description="first login delay in seconds, doubled after each further failure, 1-60"
    )
    login_delay_max_seconds: int = Field(
        300, ge=1, le=3600, description="maximum login delay in seconds, 1-3600"
    )
    login_failure_window_seconds: int = Field(
        3600, ge=60, le=86400, description="seconds a failed login counts towards the delay, 60-86400"
    )
    login_known_client_ttl_seconds: int = Field(
        30 * 86400, ge=0, le=365 * 86400,
        description="seconds an address stays known to an account after a successful login, 0-31536000",
    )
    max_auth_body_bytes: int = Field(
        8192, ge=1024, le=1_048_576, description="largest request body in bytes on /v1/auth/ routes, 1024-1048576"
    )

    @field_validator("rate_limit_default", "rate_limit_login", "rate_limit_login_account", "rate_limit_refresh",
                     "rate_limit_register")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        try:
            items = parse_many(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit") from None
        if any(item.amount < 1 for item in items):
            raise ValueError(f"{value!r} allows no request at all") from None

        return value

    @field_validator("login_delay_max_seconds")
    @classmethod
    def _check_delay_range(cls, value: int, info: ValidationInfo) -> int:
        base = info.data.get("login_delay_base_seconds")
        if base is not None and value < base:
            raise ValueError(f"{value} is below GATEHOUSE_LOGIN_DELAY_BASE_SECONDS ({base})")

        return value
