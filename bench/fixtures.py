"""Accounts, tokens and clean state for the measured servers.

Accounts are registered and logged in through each server's own HTTP API. The
refresh runs spend one refresh token per request, tens of thousands per run.
Logging in that often would cost one argon2 hash each, so these sessions are
made with service.sessions.SessionStore.create, the same call that a login
makes after checking the password.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymysql
import requests

from service.config import Settings
from service.database import connect_args
from service.redis_store import create_client
from service.sessions import SessionStore

# Concurrent HTTP requests while registering and logging in accounts.
SETUP_CONCURRENCY = 8
SETUP_TIMEOUT_SECONDS = 30
# The sessions the benchmark creates outlive any run.
SESSION_TTL_SECONDS = 86_400
# GATEHOUSE_MAX_SESSIONS_PER_USER of the measured server and of the sessions made here.
# The refresh runs leave some thousands of live sessions per account, and a login beyond
# the maximum would end the oldest ones, whose tokens later requests of the run present.
MAX_SESSIONS_PER_USER = 10_000


class SetupFailed(Exception):
    """A server rejected a registration or login while the benchmark was preparing accounts."""


def new_password() -> str:
    """A random password for the benchmark's accounts, made anew for every run."""
    return secrets.token_urlsafe(18)


def account_emails(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{index:04d}@example.com" for index in range(count)]


def reset_gatehouse_state(settings: Settings) -> None:
    """Delete every account, role grant and audit entry, and empty the bench Redis database."""
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            for table in ("user_roles", "users", "audit_log"):
                cursor.execute(f"DELETE FROM {table}")
    finally:
        connection.close()
    create_client(settings).flushdb()


def _in_parallel(function: Callable, items: Iterable) -> list:
    with ThreadPoolExecutor(SETUP_CONCURRENCY) as pool:
        return list(pool.map(function, items))


def _check(response: requests.Response, action: str) -> dict:
    if response.status_code not in (200, 201):
        raise SetupFailed(f"{action} failed with {response.status_code}: {response.text[:300]}")
    return response.json()


def register_gatehouse_accounts(base_url: str, emails: list[str], password: str) -> list[str]:
    """Register the accounts through POST /v1/auth/register; return their user ids."""
    def register(email: str) -> str:
        response = requests.post(f"{base_url}/v1/auth/register", json={"email": email, "password": password},
                                 timeout=SETUP_TIMEOUT_SECONDS)
        return _check(response, f"registering {email}")["id"]

    return _in_parallel(register, emails)


def log_in_gatehouse(base_url: str, emails: list[str], password: str) -> list[str]:
    """Log every account in through POST /v1/auth/login; return the access tokens."""
    def log_in(email: str) -> str:
        response = requests.post(f"{base_url}/v1/auth/login", json={"email": email, "password": password},
                                 timeout=SETUP_TIMEOUT_SECONDS)
        return _check(response, f"logging in {email}")["access_token"]

    return _in_parallel(log_in, emails)


def register_peer_accounts(base_url: str, emails: list[str], password: str) -> None:
    """Register the accounts through fastapi-users' POST /auth/register."""
    def register(email: str) -> None:
        response = requests.post(f"{base_url}/auth/register", json={"email": email, "password": password},
                                 timeout=SETUP_TIMEOUT_SECONDS)
        _check(response, f"registering {email} with the peer")

    _in_parallel(register, emails)


def log_in_peer(base_url: str, emails: list[str], password: str) -> list[str]:
    """Log every account in through fastapi-users' POST /auth/jwt/login (a form); return the tokens."""
    def log_in(email: str) -> str:
        response = requests.post(f"{base_url}/auth/jwt/login", data={"username": email, "password": password},
                                 timeout=SETUP_TIMEOUT_SECONDS)
        return _check(response, f"logging {email} in to the peer")["access_token"]

    return _in_parallel(log_in, emails)


def create_refresh_tokens(settings: Settings, user_ids: list[str], count: int) -> list[str]:
    """Start COUNT sessions spread over the users; return the first refresh token of each."""
    store = SessionStore(create_client(settings), session_ttl=SESSION_TTL_SECONDS,
                         grace_seconds=settings.refresh_grace_seconds,
                         revoked_ttl=settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + 60,
                         max_sessions_per_user=MAX_SESSIONS_PER_USER)

    def create(index: int) -> str:
        _session_id, refresh_token = store.create(user_ids[index % len(user_ids)], user_agent="wrk", ip="127.0.0.1")
        return refresh_token

    return _in_parallel(create, range(count))


def tokens_needed(rate: float, seconds: float, margin: float = 1.3) -> int:
    """Refresh tokens for a run at up to RATE requests per second, with a safety margin."""
    return math.ceil(rate * seconds * margin) + 1000


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path
