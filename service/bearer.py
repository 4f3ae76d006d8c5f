"""Bearer-token authentication (RFC 6750) and role checks for routes.

A warm request is decided from the worker's memory (service.access_state): cached
claims, the in-memory revoked set, and the cached user with current roles. Cold
paths fall back to signature verification, Redis and MySQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from flask import g, request

from service import users
from service.context import Services, services
from service.errors import DatabaseUnavailable, InvalidToken, MissingRole, MissingToken, SessionRevoked
from service.tokens.access import MULTIPLE_AUTHORIZATION_DETAIL, AccessClaims, verify_access_token
from service.single_flight import LoadTimedOut
from service.users import User


@dataclass(frozen=True)
class Principal:
    claims: AccessClaims
    user: User


# HTTP's optional whitespace (RFC 9110): str.strip() would also drop Unicode spaces such as U+00A0.
HEADER_WHITESPACE = " \t"


def bearer_token_of(header: str) -> str | None:
    """Return the token of an Authorization header value of the form 'Bearer <token>', or None."""
    scheme, _, token = header.partition(" ")
    token = token.strip(HEADER_WHITESPACE)
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    if not header:
        raise MissingToken()
    token = bearer_token_of(header)
    if token is None:
        if "," in header:
            raise InvalidToken(MULTIPLE_AUTHORIZATION_DETAIL)
        raise InvalidToken("Authorization header must be 'Bearer <token>'.")

    return token


def _claims(svc: Services, token: str) -> AccessClaims:
    claims = svc.access.cached_claims(token)
    if claims is None:
        claims = verify_access_token(svc.keys, svc.settings, token)
        svc.access.remember_claims(token, claims)
    return claims


def _is_revoked(svc: Services, session_id: str) -> bool:
    if svc.access.synced:
        return svc.access.is_revoked(session_id)

    # Dependency failure policy: until the listener has loaded the revoked set, ask
    # Redis; when Redis is unreachable that raises, and the request gets 503.
    return svc.sessions.is_revoked(session_id)


def load_user(svc: Services, user_id: str) -> User | None:
    """Return the user with current roles, from this worker's cache when it has a fresh copy.

    On a miss, concurrent requests for the same user share one query. A request that
    starts after a change to users (a new epoch) does not join a query begun before it.
    """
    user = svc.access.cached_user(user_id)
    if user is not None:
        return user

    epoch = svc.access.user_epoch()

    def query() -> User | None:
        found = users.find_user(svc.database, user_id)
        if found is not None:
            svc.access.remember_user(found, epoch)
        return found

    try:
        return svc.user_loads.run((user_id, epoch), query)
    except LoadTimedOut:
        raise DatabaseUnavailable() from None


def authenticate_request() -> Principal:
    """Check the access token, its session and its account; keep the result in g.principal."""
    svc = services()
    claims = _claims(svc, _bearer_token())
    if _is_revoked(svc, claims.session_id):
        raise SessionRevoked()

    user = load_user(svc, claims.user_id)
    if user is None or user.status != users.STATUS_ACTIVE:
        raise InvalidToken("The account of this token no longer exists or is disabled.")

    structlog.contextvars.bind_contextvars(user_id=user.id)
    g.principal = Principal(claims, user)
    return g.principal


def require_roles(principal: Principal, roles: tuple[str, ...]) -> None:
    """Raise MissingRole unless the user currently holds every role (not the roles at token issue)."""
    missing = [role for role in roles if role not in principal.user.roles]
    if missing:
        raise MissingRole(f"This operation requires the role {', '.join(missing)}.")


def current_principal() -> Principal:
    """Return the user and token claims that authenticated this request."""
    return g.principal
