"""argon2id password hashing, run on a small thread pool so it does not stall the gevent loop."""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from service import password_blocklist
from service.argon2id import Argon2id, InvalidHashError
from service.config import Settings
from service.errors import PasswordBlocklisted

T = TypeVar("T")

log = structlog.get_logger(__name__)


def normalize_password(value: str) -> str:
    """Return the password in Unicode NFKC form, so the same characters typed on another
    keyboard or system hash alike (NIST SP 800-63B, section 5.1.1.2)."""
    return unicodedata.normalize("NFKC", value)


# Password hash schemes of the modular crypt format and of common libraries, which the
# log names. Anything else is logged as "unknown": the column might hold a password.
_KNOWN_SCHEMES = frozenset({
    "argon2id", "argon2i", "argon2d", "2a", "2b", "2x", "2y", "1", "5", "6", "7", "y", "gy", "apr1", "md5",
    "sha1", "scrypt", "pbkdf2", "pbkdf2-sha1", "pbkdf2-sha256", "pbkdf2-sha512", "bcrypt-sha256", "P", "H",
})


def _scheme(password_hash: str) -> str:
    """Return the scheme of a modular crypt string if it is a known one, else "unknown"."""
    parts = password_hash.split("$")
    if len(parts) > 2 and parts[0] == "" and parts[1] in _KNOWN_SCHEMES:
        return parts[1]
    return "unknown"


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return False

    return monkey.is_module_patched("threading")


class Passwords:
    """Hash and verify passwords with the configured argon2id parameters.

    Under gevent each hash runs on one of at most argon2_threads threads of this
    worker (service.hash_pool), and the request's greenlet waits for it. The bound
    matters for memory and speed alike: each hash holds its argon2 memory (7 MiB with
    the default parameters) while it runs, and more threads than cores only make each
    hash slower. Without gevent (tests, the CLI) hashing runs inline.
    """

    def __init__(self, settings: Settings) -> None:
        self._hasher = Argon2id(settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism)
        self._settings = settings
        # Created on first use, in the process that hashes: a pool's threads do not survive fork.
        self._pool: Any = None
        # Verified against when the email is unknown, so both paths cost one argon2 run.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        # The bundled list loads at the first new password: most workers serve logins and
        # tokens, and a worker that gets no registration or password change saves the
        # memory. The operator's list is the one the settings check read at start (the
        # same file, unchanged, is not read again), so no request reads the file.
        self._bundled: password_blocklist.Blocklist | None = None
        self._operator_list = (password_blocklist.read_file(settings.password_blocklist_file)
                               if settings.password_blocklist_file is not None else None)

    def check_new(self, password: str, *, email: str | None, field: str) -> None:
        """Raise PasswordBlocklisted, naming `field`, when a new password is on the blocklist.

        `email` is the account's; see service.password_blocklist for what is compared.
        The check runs before any hashing, so a refused password costs no argon2 work.
        """
        if self._bundled is None:
            self._bundled = password_blocklist.bundled()
        if self._bundled.blocks(password) or (self._operator_list is not None and self._operator_list.blocks(password)):
            raise PasswordBlocklisted("This password is a commonly used or blocked one, or one with a few digits or "
                                      "symbols added, which attackers try first. Choose another one, such as a few "
                                      "unrelated words.", field=field)
        if password_blocklist.is_trivial(password):
            raise PasswordBlocklisted("This password keeps fewer than four characters once spaces and invisible "
                                      "characters are left out, or repeats one to three characters, which attackers "
                                      "try first. Choose another one, such as a few unrelated words.", field=field)
        if password_blocklist.matches_context(password, email):
            raise PasswordBlocklisted("This password is the email address, its part before the @-sign or the "
                                      "service's name, which attackers try first. Choose another one.", field=field)

    def _off_loop(self, function: Callable[..., T], *args: object) -> T:
        """Run a CPU-bound call on this worker's argon2 threads under gevent, inline otherwise."""
        if not _gevent_patched():
            return function(*args)

        if self._pool is None:
            from service.hash_pool import create_hash_pool

            self._pool = create_hash_pool(self._settings)
        return self._pool.run(function, *args)

    def hash(self, password: str) -> str:
        return self._off_loop(self._hasher.hash, password)

    def verify(self, password_hash: str | None, password: str, *, user_id: str | None = None) -> bool:
        """Check a password; with no hash, spend the same time on a dummy and return False.

        A stored hash that argon2 cannot read (another scheme, or a damaged row) also
        costs the dummy's time and returns False, and is logged with user_id at error
        level, so the operator learns why that account cannot log in.
        """
        stored = self._dummy_hash if password_hash is None else password_hash
        try:
            return self._off_loop(self._hasher.verify, stored, password) and password_hash is not None
        except InvalidHashError:
            log.error("password_hash_unreadable", user_id=user_id, scheme=_scheme(stored))
            self.verify(None, password)
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Tell whether a hash was made with other parameters than the configured ones."""
        return self._hasher.needs_rehash(password_hash)
