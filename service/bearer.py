"""Bearer-token authentication for routes (RFC 6750)."""

from __future__ import annotations

import structlog
from flask import g, request

from service.context import services
from service.errors import InvalidToken, MissingToken, SessionRevoked
from service.tokens.access import AccessClaims, verify_access_token


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise MissingToken()
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("Authorization header must be 'Bearer <token>'.")

    return token.strip()


def authenticate_request() -> AccessClaims:
    """Verify the request's access token and check its session was not ended."""
    svc = services()
    claims = verify_access_token(svc.keys, svc.settings, _bearer_token())
    # TODO: this costs one Redis round trip per request; an in-memory revoked set kept
    # in step through pub/sub would keep warm requests off Redis.
    if svc.sessions.is_revoked(claims.session_id):
        raise SessionRevoked()

    structlog.contextvars.bind_contextvars(user_id=claims.user_id)
    return claims


def current_claims() -> AccessClaims:
    """Return the claims of the access token that authenticated this request."""
    return g.claims
