"""Login, refresh and logout: the flows behind the auth routes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis
import structlog

from service import metrics, users
from service.bearer import load_user
from service.context import Services
from service.emails import fold_email
from service.errors import (
    AccountDisabled,
    InvalidCredentials,
    InvalidCurrentPassword,
    InvalidRefreshToken,
    NotFound,
    PasswordUnchanged,
)
from service.passwords import normalize_password
from service.schemas import TokenPair
from service.sessions import RefreshOutcome
from service.tokens.access import issue_access_token

if TYPE_CHECKING:
    # Only for annotations: service.limits imports this module, and login_guard imports service.limits.
    from service.blacklist import AutomaticBan
    from service.login_guard import LoginGuard

log = structlog.get_logger(__name__)


def _token_pair(svc: Services, user_id: str, session_id: str, refresh_token: str) -> TokenPair:
    access_token = issue_access_token(svc.keys, svc.settings, user_id, session_id)
    return TokenPair(access_token=access_token, expires_in=svc.settings.access_token_ttl_seconds,
                     refresh_token=refresh_token)


def record_failed_login(svc: Services, ip: str, email: str) -> None:
    """Count a failed login toward an automatic ban; best effort, so the caller still gets its 401."""
    if not svc.settings.ban_enabled:
        return

    try:
        ban = svc.blacklist.record_failed_login(ip, email)
    except redis.RedisError as exc:
        log.warning("abuse_record_failed", error=str(exc)[:200])
        return
    _apply_ban(svc, ban)


def record_rate_limit_hit(svc: Services, ip: str) -> None:
    """Count a 429 toward an automatic ban; best effort, so the caller still gets its 429."""
    if not svc.settings.ban_enabled:
        return

    try:
        ban = svc.blacklist.record_rate_limit_hit(ip)
    except redis.RedisError as exc:
        log.warning("abuse_record_failed", error=str(exc)[:200])
        return
    _apply_ban(svc, ban)


def _apply_ban(svc: Services, ban: AutomaticBan | None) -> None:
    if ban is not None:
        metrics.BANS.labels(cause=ban.cause).inc()
        svc.bans.apply_event({"kind": "ip_banned", "ip": ban.ip, "until": time.time() + ban.seconds})


@contextmanager
def guarded_password_check(svc: Services, guard: LoginGuard, account_email: str, ip: str) -> Iterator[None]:
    """Run a check of an account's password under the login guard and record its outcome.

    Every route that checks a user's password goes through here, so guessing costs the
    same time and counts toward the same ban through any of them. The guard admits the
    attempt before the block runs, so a refused attempt raises RateLimited and costs no
    argon2 work. InvalidCredentials or InvalidCurrentPassword from the block counts as a
    failure for the guard and toward an automatic ban of `ip`. Any other exception, such
    as AccountDisabled, records nothing, and a block that returns records a success.
    `account_email` is the account's lookup key (service.emails.fold_email).
    """
    attempt = guard.admit(account_email, ip)
    try:
        yield
    except (InvalidCredentials, InvalidCurrentPassword):
        guard.record_failure(attempt)
        record_failed_login(svc, ip, account_email)
        raise

    guard.record_success(attempt)


def login(svc: Services, email: str, password: str, *, user_agent: str, ip: str, guard: LoginGuard) -> TokenPair:
    """Check credentials and start a session, unless the guard refuses the attempt first."""
    # The guard and the ban counters key an account by its lookup key, so the fullwidth
    # spellings of an email, which reach the same account, share its limits.
    try:
        with guarded_password_check(svc, guard, fold_email(email), ip):
            user, password_hash = users.authenticate(svc.database, svc.passwords, email, password)
    except InvalidCredentials:
        metrics.LOGINS.labels(result="invalid_credentials").inc()
        log.warning("login_failed", reason="invalid_credentials", client_ip=ip)
        raise
    except AccountDisabled:
        metrics.LOGINS.labels(result="disabled").inc()
        log.warning("login_failed", reason="disabled", client_ip=ip)
        raise

    session_id, refresh_token = svc.sessions.create(user.id, user_agent=user_agent, ip=ip)
    # A password reset or change, a deletion or a disable may have run since the check
    # above. Each stores its change before it ends the account's sessions, so the account
    # read now either shows the change, or the change will end this session too.
    if not users.credentials_unchanged(svc.database, svc.passwords, user.id, password_hash, password):
        svc.sessions.revoke(session_id)
        metrics.LOGINS.labels(result="invalid_credentials").inc()
        log.warning("login_failed", reason="credentials_changed", client_ip=ip)
        raise InvalidCredentials()

    metrics.LOGINS.labels(result="success").inc()
    structlog.contextvars.bind_contextvars(user_id=user.id)
    log.info("login_succeeded", session_id=session_id)
    return _token_pair(svc, user.id, session_id, refresh_token)


def refresh(svc: Services, refresh_token: str, *, ip: str) -> TokenPair:
    """Rotate a refresh token and issue a new pair for the same session."""
    try:
        owner = svc.sessions.find_token_owner(refresh_token)
        # The account is checked before the token is spent. Checked after the rotation,
        # a MySQL outage would turn each retry into a grace refresh and, after
        # MAX_GRACE_REFRESHES of them, into reuse that revokes the session. A token
        # without an owner is unknown, and the rotation reports it as invalid.
        if owner is not None:
            _require_active_account(svc, *owner, ip=ip)
        rotation = svc.sessions.rotate(refresh_token)
    except redis.RedisError:
        # Counted here, then the Redis failure policy turns the error into a 503.
        metrics.ROTATION_ERRORS.inc()
        raise
    metrics.REFRESHES.labels(outcome=rotation.outcome.value).inc()

    if rotation.outcome is RefreshOutcome.REUSE_DETECTED:
        # A spent token came back outside the grace rules, or a second chain of tokens
        # tried to continue the session: assume a token was stolen.
        log.error("refresh_token_reused", session_id=rotation.session_id, user_id=rotation.user_id,
                  reason=rotation.reuse_reason, client_ip=ip)
        raise InvalidRefreshToken("Refresh token was already used or replaced; the session has been revoked. Log in again.")

    if rotation.outcome is RefreshOutcome.EXPIRED:
        log.info("refresh_rejected", reason="expired", client_ip=ip)
        raise InvalidRefreshToken("The session of this refresh token has expired; log in again.")

    if rotation.outcome is RefreshOutcome.INVALID:
        log.info("refresh_rejected", reason="invalid", client_ip=ip)
        raise InvalidRefreshToken()

    # Rotated and grace outcomes always carry all three.
    assert rotation.user_id is not None
    assert rotation.session_id is not None
    assert rotation.refresh_token is not None
    structlog.contextvars.bind_contextvars(user_id=rotation.user_id)
    if rotation.outcome is RefreshOutcome.GRACE:
        log.info("refresh_within_grace", session_id=rotation.session_id)
    return _token_pair(svc, rotation.user_id, rotation.session_id, rotation.refresh_token)


def _require_active_account(svc: Services, session_id: str, user_id: str, *, ip: str) -> None:
    """Raise InvalidRefreshToken, ending the session, unless the user exists and is active."""
    user = load_user(svc, user_id)
    if user is None or user.status != users.STATUS_ACTIVE:
        # The account was disabled or deleted without ending its sessions (for example
        # directly in the database): end this one now instead of issuing tokens.
        svc.sessions.revoke(session_id)
        metrics.REFRESHES.labels(outcome="account_inactive").inc()
        log.warning("refresh_rejected", reason="account_inactive", user_id=user_id, client_ip=ip)
        raise InvalidRefreshToken()


def logout(svc: Services, session_id: str) -> None:
    """End one session: its refresh tokens and access tokens stop working."""
    # Also when Redis lost the session: the caller's access token names it.
    svc.sessions.revoke(session_id, even_if_missing=True)
    metrics.LOGOUTS.inc()
    log.info("logged_out", session_id=session_id)


def logout_all(svc: Services, user_id: str) -> int:
    """End every session of the user, this one included."""
    ended = svc.sessions.revoke_user(user_id)
    log.info("logged_out_everywhere", sessions_ended=ended)
    return ended


def end_session(svc: Services, user_id: str, session_id: str) -> None:
    """End one of the caller's own sessions; raise NotFound for any other id."""
    if not svc.sessions.revoke(session_id, user_id=user_id):
        raise NotFound("No such session.", field="session_id")
    log.info("session_ended", session_id=session_id)


def change_password(svc: Services, user: users.User, session_id: str, current: str, new: str, *, ip: str,
                    guard: LoginGuard) -> int:
    """Replace the password after checking the current one, and end every other session.

    The current password is checked under the login guard of the user's email, so a
    holder of an access token gets no more guesses here than at login. A refused attempt
    raises RateLimited. A wrong current password raises InvalidCurrentPassword, and a new
    password equal to the current one then raises PasswordUnchanged. Either leaves the
    password and the sessions as they were. A new password on the blocklist raises
    PasswordBlocklisted before the current one is checked: it reveals nothing about the
    current password.
    """
    svc.passwords.check_new(new, email=user.email, field="new_password")
    with guarded_password_check(svc, guard, fold_email(user.email), ip):
        checked_hash = users.current_password_hash(svc.database, svc.passwords, user.id, current)
        if checked_hash is None:
            log.warning("password_change_rejected", reason="invalid_current_password")
            raise InvalidCurrentPassword("The current password is wrong.", field="current_password")

    # Compared in the NFKC form that is hashed, so two spellings of the same characters
    # are the same password. This check comes second, so that a caller who has a token
    # but not the password cannot test guesses of the password against the 422.
    if normalize_password(new) == normalize_password(current):
        log.warning("password_change_rejected", reason="password_unchanged")
        raise PasswordUnchanged("The new password is the current password. Choose a different one.",
                                field="new_password")

    # The other sessions end in the transaction that stores the new hash, so a Redis
    # failure leaves the old password in place for a retry (service.admin explains the order).
    ended = 0

    def end_other_sessions(_cursor: object) -> None:
        nonlocal ended
        ended = svc.sessions.revoke_user(user.id, keep=session_id)

    # An administrator's reset, a disable or a deletion may have run since the check, and
    # must not be undone by the holder of the old password.
    if not users.replace_password(svc.database, svc.passwords, user.id, checked_hash, current, new,
                                  then=end_other_sessions):
        log.warning("password_change_rejected", reason="credentials_changed")
        raise InvalidCurrentPassword("The current password is wrong.", field="current_password")

    log.info("password_changed", other_sessions_ended=ended)
    return ended
