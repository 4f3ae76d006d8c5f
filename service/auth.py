"""Login, refresh and logout: the flows behind the auth routes."""

from __future__ import annotations

import structlog

from service import metrics, users
from service.context import Services
from service.errors import AccountDisabled, InvalidCredentials, InvalidRefreshToken
from service.login_guard import LoginGuard
from service.schemas import TokenPair
from service.sessions import RefreshOutcome
from service.tokens.access import issue_access_token

log = structlog.get_logger(__name__)


def _token_pair(svc: Services, user_id: str, session_id: str, refresh_token: str) -> TokenPair:
    access_token = issue_access_token(svc.keys, svc.settings, user_id, session_id)
    return TokenPair(access_token=access_token, expires_in=svc.settings.access_token_ttl_seconds,
                     refresh_token=refresh_token)


def login(svc: Services, email: str, password: str, *, user_agent: str, ip: str, guard: LoginGuard) -> TokenPair:
    """Check credentials and start a session, unless the guard refuses the attempt first."""
    # Before the password check, so a refused attempt costs no argon2 work.
    attempt = guard.admit(email, ip)
    try:
        user = users.authenticate(svc.database, svc.passwords, email, password)
    except InvalidCredentials:
        guard.record_failure(attempt)
        metrics.LOGINS.labels(result="invalid_credentials").inc()
        log.warning("login_failed", reason="invalid_credentials", client_ip=ip)
        raise
    except AccountDisabled:
        metrics.LOGINS.labels(result="disabled").inc()
        log.warning("login_failed", reason="disabled", client_ip=ip)
        raise

    guard.record_success(attempt)
    session_id, refresh_token = svc.sessions.create(user.id, user_agent=user_agent, ip=ip)
    metrics.LOGINS.labels(result="success").inc()
    structlog.contextvars.bind_contextvars(user_id=user.id)
    log.info("login_succeeded", session_id=session_id)
    return _token_pair(svc, user.id, session_id, refresh_token)


def refresh(svc: Services, refresh_token: str, *, ip: str) -> TokenPair:
    """Rotate a refresh token and issue a new pair for the same session."""
    rotation = svc.sessions.rotate(refresh_token)
    metrics.REFRESHES.labels(outcome=rotation.outcome.value).inc()

    if rotation.outcome is RefreshOutcome.REUSE_DETECTED:
        # A rotated token came back after the grace interval: assume it was stolen.
        log.error("refresh_token_reused", session_id=rotation.session_id, user_id=rotation.user_id, client_ip=ip)
        raise InvalidRefreshToken("Refresh token was already used; the session has been revoked.")

    if rotation.outcome is RefreshOutcome.INVALID:
        log.info("refresh_rejected", client_ip=ip)
        raise InvalidRefreshToken()

    assert rotation.user_id and rotation.session_id and rotation.refresh_token
    structlog.contextvars.bind_contextvars(user_id=rotation.user_id)
    if rotation.outcome is RefreshOutcome.GRACE:
        log.info("refresh_within_grace", session_id=rotation.session_id)
    return _token_pair(svc, rotation.user_id, rotation.session_id, rotation.refresh_token)


def logout(svc: Services, session_id: str) -> None:
    """End one session: its refresh tokens and access tokens stop working."""
    svc.sessions.revoke(session_id)
    metrics.LOGOUTS.inc()
    log.info("logged_out", session_id=session_id)
