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
Both find the keys of the known addresses through the account's index
(service.login_guard_index), which every write of such a key updates in the same round trip.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import redis
from flask import Flask, current_app
from limits import parse_many
from limits.strategies import MovingWindowRateLimiter

from service.config import Settings
from service.errors import RateLimited
from service.limit_storage import FailoverStorage, PipelineStep
from service.limits import client_network, limit_storage, seconds_until
from service.login_guard_index import REDIS_KEY_PREFIX, clear_account, queue_index_update

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
        self._storage.acquire_entry(*self._failures_window_args(attempt), follow_up=_address_index_update(attempt))

    def record_success(self, attempt: LoginAttempt) -> None:
        """Forget the failures behind this attempt and make its address known to the account, in one round trip."""
        if not self._known_client_ttl:
            self._storage.clear_and_mark([self._failures_key(attempt), self._gate_key(attempt)])
            return

        # The marker gets a fresh expiry, so the address stays known for the whole TTL after its latest login.
        self._storage.clear_and_mark([self._failures_key(attempt), self._gate_key(attempt)],
                                     self._known_key(attempt.account, attempt.client), self._known_client_ttl,
                                     follow_up=_index_update(attempt.account, attempt.client))

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
        if self._storage.acquire_entry(gate, 1, delay, follow_up=_address_index_update(attempt)):
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


def _index_update(account: str, client: str) -> PipelineStep:
    return functools.partial(queue_index_update, account=account, client=client)


def _address_index_update(attempt: LoginAttempt) -> PipelineStep | None:
    """Return the index update that a write of one of the attempt's keys needs: none for the shared keys."""
    return _index_update(attempt.account, attempt.client) if attempt.known_client else None


def _shared_failure_keys(account: str) -> list[str]:
    """Return the Redis keys of the failure window and delay gate that all addresses unknown to the account share."""
    return [f"{REDIS_KEY_PREFIX}login/failures/{account}", f"{REDIS_KEY_PREFIX}login/gate/{account}"]


# clear_failures and erase_account reach the keys in Redis only. The in-memory counters
# that workers use while Redis is down are dropped when Redis is back.
# NOTE: an account from before local parts had to be ASCII can share its lookup key
# with another account (ａlice@ and alice@), and then both lose these keys.


def clear_failures(client: redis.Redis, email: str) -> int:
    """Delete an account's recorded failures and login delays on every address, and return how many keys went.

    For a password reset: the failures were guesses of a password that is gone, and its
    owner should not wait out a delay with the new one. The known addresses and the
    account rate limit stay. `email` is the account's lookup key (service.emails.fold_email).
    Raise redis.RedisError when Redis fails.
    """
    account = account_key(email)
    return clear_account(client, account, _shared_failure_keys(account), erase=False)


def erase_account(client: redis.Redis, email: str, account_limits: str) -> int:
    """Delete every key of the login guard that names an account, and return how many keys went.

    For an account deletion: the known-address markers link the account to the client
    networks that logged in to it, and a new account with the same email must not
    inherit them. `email` is the account's lookup key (service.emails.fold_email), and
    `account_limits` is GATEHOUSE_RATE_LIMIT_LOGIN_ACCOUNT, whose items name the account
    rate limit's windows. Raise redis.RedisError when Redis fails.
    NOTE: the windows of an account rate limit that the setting no longer lists stay
    until they expire, at most one period of that limit later.
    """
    account = account_key(email)
    limit_windows = [REDIS_KEY_PREFIX + item.key_for(_ACCOUNT_LIMIT_NAMESPACE, account)
                     for item in parse_many(account_limits)]
    return clear_account(client, account, _shared_failure_keys(account) + limit_windows, erase=True)


_EXTENSION_KEY = "gatehouse.login_guard"


def init_app(app: Flask, settings: Settings) -> LoginGuard:
    """Create the app's login guard on the rate-limit storage, which must exist already."""
    guard = LoginGuard(limit_storage(app), settings)
    app.extensions[_EXTENSION_KEY] = guard
    return guard


def login_guard() -> LoginGuard:
    """Return the login guard of the current app."""
    return current_app.extensions[_EXTENSION_KEY]
