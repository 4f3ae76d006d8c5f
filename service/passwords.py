"""argon2id password hashing, run on the gevent hub's thread pool so it does not stall the worker."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from service.config import Settings

T = TypeVar("T")


def _off_loop(function: Callable[..., T], *args: object) -> T:
    """Run a CPU-bound call on gevent's thread pool when gevent has patched threading."""
    try:
        from gevent import get_hub, monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return function(*args)

    if not monkey.is_module_patched("threading"):
        return function(*args)

    return get_hub().threadpool.apply(function, args)


class Passwords:
    """Hash and verify passwords with the configured argon2id parameters."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=argon2.Type.ID,
        )
        # Verified against when the email is unknown, so both paths cost one argon2 run.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return _off_loop(self._hasher.hash, password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password; with no hash, spend the same time on a dummy and return False."""
        try:
            return _off_loop(self._hasher.verify, password_hash or self._dummy_hash, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Tell whether a hash was made with other parameters than the configured ones."""
        return self._hasher.check_needs_rehash(password_hash)
