"""Per-account password-guessing protection for logins and password changes.

Two controls apply to an account, keyed by a digest of its email's lookup key
(service.emails.fold_email), so fullwidth spellings of an email count as that email.
They apply to unregistered emails the same way, so a 429 reveals nothing about
whether an account exists.

- The account rate limit (GATEHOUSE_RATE_LIMIT_LOGIN_ACCOUNT) counts every attempt
  and caps bursts, including parallel attempts that all arrive before a failure
  has been recorded.
- The login delay: after GATEHOUSE_LOGIN_DELAY_AFTER_FAILURES failures within
  GATEHOUSE_LOGIN_FAILURE_WINDOW_SECONDS, an attempt is only admitted once the
  delay has passed since the previous admitted one. The delay starts at
  GATEHOUSE_LOGIN_DELAY_BASE_SECONDS and doubles with each further failure, up to
  GATEHOUSE_LOGIN_DELAY_MAX_SECONDS. Attempts that come too early get 429 and no
  password check, so a guess costs time however many addresses send them.

Neither control is permanent: both expire on their own once the attempts stop.
While they go on, the owner is held back too on every address the account does not
know, because all those addresses share one counter and one delay. With the
defaults, ten attempts a minute use up the account rate limit, 14 failures set the
delay to 300 s, and an attacker who keeps sending takes most of the attempts
admitted after each delay. A client address that logged in to the account
successfully (or changed its password) within
GATEHOUSE_LOGIN_KNOWN_CLIENT_TTL_SECONDS is known to it. The account rate limit
skips known addresses, and their failures count and delay separately from
everyone else's. So an attacker who floods an account from other addresses slows
down only the other addresses, not its owner on a known one.

An administrator's password reset clears the account's failures and delays
(clear_failures), and deleting an account erases every key that names it (erase_account).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import redis
from flask import Flask, current_app
from limits import parse_many
from limits.strategies import MovingWindowRateLimiter

from service.config import Settings
from service.errors import RateLimited
from service.limit_storage import RATE_LIMIT_KEY_PREFIX, FailoverStorage
from service.limits import client_network, limit_storage, seconds_until

# Namespace of the account rate limit in the limits library's key format.
_ACCOUNT_LIMIT_NAMESPACE = "login-account"


def account_key(email: str) -> str:
    """Return the key of an account: a digest of its normalized email, so no address appears in Redis keys."""
    return hashlib.sha256(email.encode()).hexdigest()[:32]


def delay_seconds(failures: int, settings: Settings) -> int:
    """Return the wait between admitted attempts after this many recent failures; 0 below the threshold."""
    if failures < settings.login_delay_after_failures:
        return 0

    # 2**12 s exceeds the largest GATEHOUSE_LOGIN_DELAY_MAX_SECONDS (3600), so the cap bounds the arithmetic only.
    doublings = min(failures - settings.login_delay_after_failures, 12)
    return min(settings.login_delay_base_seconds * 2 ** doublings, settings.login_delay_max_seconds)


@dataclass(frozen=True)
class LoginAttempt:
    """An admitted attempt; pass it back to record_failure or record_success."""

    account: str
    client: str
    known_client: bool

    @property
    def delay_key(self) -> str:
        # A known address counts failures and waits out delays apart from every other address.
        return f"{self.account}/{self.client}" if self.known_client else self.account


class LoginGuard:
    """Admit or reject password checks per account, and record their outcome.

    Logins and password changes both go through service.auth.guarded_password_check, so
    they share one account's limits and delay.
    """

    def __init__(self, storage: FailoverStorage, settings: Settings) -> None:
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._settings = settings
        self._account_limits = parse_many(settings.rate_limit_login_account)
        self._failure_window = settings.login_failure_window_seconds
        self._known_client_ttl = settings.login_known_client_ttl_seconds
        # Failures past this count no longer lengthen the delay, so none beyond it is stored.
        base, maximum = settings.login_delay_base_seconds, settings.login_delay_max_seconds
        doublings = math.ceil(math.log2(maximum / base)) if maximum > base else 0
        self._failure_cap = settings.login_delay_after_failures + doublings + 1

    def admit(self, email: str, client_address: str) -> LoginAttempt:
        """Admit an attempt for an email's lookup key, or raise RateLimited with the seconds to wait."""
        account = account_key(email)
        client = client_network(client_address)
        attempt, failures = self._attempt(account, client)

        if not attempt.known_client:
            self._check_account_limit(account)
        self._check_delay(attempt, failures)
        return attempt

    def record_failure(self, attempt: LoginAttempt) -> None:
        """Count a wrong password (or unknown email) towards the delay."""
        self._storage.acquire_entry(*self._failures_window_args(attempt))

    def record_success(self, attempt: LoginAttempt) -> None:
        """Forget the failures behind this attempt and make its address known to the account, in one round trip."""
        # The marker gets a fresh expiry, so the address stays known for the whole TTL after its latest login.
        known = self._known_key(attempt.account, attempt.client) if self._known_client_ttl else None
        self._storage.clear_and_mark([self._failures_key(attempt), self._gate_key(attempt)], known,
                                     self._known_client_ttl)

    def _attempt(self, account: str, client: str) -> tuple[LoginAttempt, int]:
        """Build the attempt and count the recent failures that its delay depends on.

        Whether the address is known decides which failure window applies, so the known
        marker and both windows are read together, in one round trip.
        """
        unknown = LoginAttempt(account, client, known_client=False)
        if not self._known_client_ttl:
            _, [(_, failures)] = self._storage.read_many([], [self._failures_window_args(unknown)])
            return unknown, failures

        known = LoginAttempt(account, client, known_client=True)
        windows = [self._failures_window_args(unknown), self._failures_window_args(known)]
        [marker], [(_, unknown_failures), (_, known_failures)] = self._storage.read_many(
            [self._known_key(account, client)], windows)
        if marker > 0:
            return known, known_failures
        return unknown, unknown_failures

    def _check_account_limit(self, account: str) -> None:
        for item in self._account_limits:
            if self._limiter.hit(item, _ACCOUNT_LIMIT_NAMESPACE, account):
                continue

            reset_time, _ = self._limiter.get_window_stats(item, _ACCOUNT_LIMIT_NAMESPACE, account)
            retry_after = seconds_until(reset_time)
            raise RateLimited(f"Too many password attempts for this account; retry after {retry_after} s.",
                              retry_after=retry_after, limit="account")

    def _check_delay(self, attempt: LoginAttempt, failures: int) -> None:
        delay = delay_seconds(failures, self._settings)
        if not delay:
            return

        # A moving window of one entry admits one attempt per `delay` seconds, atomically,
        # so parallel attempts cannot all pass between two failures.
        gate = self._gate_key(attempt)
        if self._storage.acquire_entry(gate, 1, delay):
            return

        admitted_at, _ = self._storage.get_moving_window(gate, 1, delay)
        retry_after = seconds_until(admitted_at + delay)
        raise RateLimited(f"Too many wrong passwords for this account; retry after {retry_after} s.",
                          retry_after=retry_after, limit="login_delay")

    @staticmethod
    def _failures_key(attempt: LoginAttempt) -> str:
        return f"login/failures/{attempt.delay_key}"

    def _failures_window_args(self, attempt: LoginAttempt) -> tuple[str, int, int]:
        """Return the key, limit and expiry of the moving window that counts the attempt's failures."""
        return self._failures_key(attempt), self._failure_cap, self._failure_window

    @staticmethod
    def _gate_key(attempt: LoginAttempt) -> str:
        return f"login/gate/{attempt.delay_key}"

    @staticmethod
    def _known_key(account: str, client: str) -> str:
        return f"login/known/{account}/{client}"


# The Redis key of a limits key, as the library's RedisStorage.prefixed_key joins them.
_REDIS_KEY_PREFIX = RATE_LIMIT_KEY_PREFIX + ":"
# Keys that one SCAN step reads, so a whole pass takes about (number of keys / this) round trips.
_SCAN_COUNT = 1000
# The key kinds of an account's failure state: the failure windows and delay gates, shared and per known address.
_FAILURE_KINDS = ("login/failures/", "login/gate/")
# Every key kind that names an account: also the known-address markers and the account rate limit's windows.
_ACCOUNT_KINDS = (*_FAILURE_KINDS, "login/known/", f"LIMITER/{_ACCOUNT_LIMIT_NAMESPACE}/")


def clear_failures(client: redis.Redis, email: str) -> int:
    """Delete an account's recorded failures and login delays on every address, and return how many keys went.

    For a password reset: the failures were guesses of a password that is gone, and its
    owner should not wait out a delay with the new one. The known addresses and the
    account rate limit stay. `email` is the account's lookup key (service.emails.fold_email).
    """
    return _delete_account_keys(client, email, _FAILURE_KINDS)


def erase_account(client: redis.Redis, email: str) -> int:
    """Delete every key of the login guard that names an account, and return how many keys went.

    For an account deletion: the known-address markers link the account to the client
    networks that logged in to it, and a new account with the same email must not
    inherit them. `email` is the account's lookup key (service.emails.fold_email).
    """
    return _delete_account_keys(client, email, _ACCOUNT_KINDS)


def _delete_account_keys(client: redis.Redis, email: str, kinds: tuple[str, ...]) -> int:
    """Delete the account's keys of the given kinds in Redis, found by one SCAN of the whole keyspace.

    Raise redis.RedisError when Redis fails. The in-memory counters that workers use
    while Redis is down are not reached, and they are dropped when Redis is back.
    NOTE: an account from before local parts had to be ASCII can share its lookup key
    with another account (ａlice@ and alice@), and then both lose these keys.
    """
    account = account_key(email)
    # A stem alone is the key that every address the account does not know shares. Under
    # stem/ are the keys of each known address (see LoginAttempt.delay_key) and the
    # account rate limit's windows.
    stems = {_REDIS_KEY_PREFIX + kind + account for kind in kinds}
    stem_prefixes = tuple(stem + "/" for stem in stems)
    keys = [key for key in client.scan_iter(match=f"{_REDIS_KEY_PREFIX}*/{account}*", count=_SCAN_COUNT)
            if key in stems or key.startswith(stem_prefixes)]
    if keys:
        client.delete(*keys)
    return len(keys)


_EXTENSION_KEY = "gatehouse.login_guard"


def init_app(app: Flask, settings: Settings) -> LoginGuard:
    """Create the app's login guard on the rate-limit storage, which must exist already."""
    guard = LoginGuard(limit_storage(app), settings)
    app.extensions[_EXTENSION_KEY] = guard
    return guard


def login_guard() -> LoginGuard:
    """Return the login guard of the current app."""
    return current_app.extensions[_EXTENSION_KEY]
