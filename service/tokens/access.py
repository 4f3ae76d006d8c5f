"""Access tokens: short-lived JWTs signed by the key ring (RFC 9068 profile)."""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass

import jwt

from service.config import Settings
from service.errors import InvalidToken
from service.tokens.keys import KeyRing

TOKEN_TYPE = "at+jwt"
# Larger tokens are rejected before any parsing; ours are well under 1 KiB.
MAX_TOKEN_LENGTH = 4096
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "sid", "jti"]
# JSON types of the claims this service reads, checked after the signature. PyJWT converts
# exp, iat and nbf with int(), so it accepts "1796456000" and true, which would then
# break the arithmetic below.
NUMERIC_DATE_CLAIMS = ("exp", "iat", "nbf")
STRING_CLAIMS = ("sub", "sid", "jti")
# The user, session and token ids this service issues: uuid4().hex, 32 lower-case hex
# digits. A signed token with any other id would reach MySQL with it. There a lone
# surrogate failed to encode (500) and an emoji failed the column's collation (503). An
# upper-case spelling matched the user, since the column ignores case.
ID_CLAIM = re.compile(r"[0-9a-f]{32}")
# gunicorn 27 (http/wsgi.py) joins repeated header fields with commas, so a request with
# two Authorization headers arrives as one value containing both. No access token contains a comma.
MULTIPLE_AUTHORIZATION_DETAIL = "Access token is malformed: send one Authorization header with one bearer token."
# JWS compact serialization (RFC 7515 section 7.1): header, payload and signature in base64url.
# Checked before PyJWT parses the token, so no other character can reach its base64 decoding.
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str
    token_id: str
    expires_at: int


def issue_access_token(ring: KeyRing, settings: Settings, user_id: str, session_id: str,
                       now: float | None = None) -> str:
    """Sign an access token for one session."""
    issued_at = int(now if now is not None else time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": user_id,
        "sid": session_id,
        "jti": uuid.uuid4().hex,
        "iat": issued_at,
        "exp": issued_at + settings.access_token_ttl_seconds,
    }
    key = ring.signing_key
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm,
                      headers={"kid": key.kid, "typ": TOKEN_TYPE})


def verify_access_token(ring: KeyRing, settings: Settings, token: str) -> AccessClaims:
    """Check signature, algorithm, type and claims; raise InvalidToken on any failure.

    The algorithm is pinned to the configured one and the key comes from the ring by
    kid, so header members such as jku, x5u or jwk are never used.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("Access token too long.")
    if "," in token:
        raise InvalidToken(MULTIPLE_AUTHORIZATION_DETAIL)
    if not COMPACT_JWS.fullmatch(token):
        raise InvalidToken("Access token is malformed.")

    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidToken("Access token is malformed.") from None

    if header.get("alg") != settings.jwt_algorithm:
        raise InvalidToken("Access token algorithm not accepted.")
    if str(header.get("typ", "")).lower() not in (TOKEN_TYPE, "application/" + TOKEN_TYPE):
        raise InvalidToken("Token is not an access token.")
    key = ring.verification_key(header.get("kid"))
    if key is None:
        raise InvalidToken("Access token signed by an unknown key.")

    try:
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_seconds,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("Access token expired: refresh it, or log in again.") from None
    except jwt.InvalidTokenError:
        raise InvalidToken("Access token invalid.") from None

    _check_claim_types(claims)
    # A token valid for longer than this service issues was not made by it. Without this
    # check a forged far-future token would outlive the revoked-session entry that blocks it.
    if claims["exp"] - claims["iat"] > settings.access_token_ttl_seconds + settings.jwt_leeway_seconds:
        raise InvalidToken("Access token lifetime exceeds what this service issues.")

    return AccessClaims(claims["sub"], claims["sid"], claims["jti"], int(claims["exp"]))


def _is_numeric_date(value: object) -> bool:
    """Return whether a claim value is a JSON number that is a NumericDate (RFC 7519 section 2)."""
    # bool is a subclass of int, and Python's JSON parser turns 1e999 into infinity.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _check_claim_types(claims: dict[str, object]) -> None:
    """Raise InvalidToken unless every claim this service reads has its JSON type.

    The time claims must be numbers and the ids strings of the form it issues. This service neither
    issues nor reads a `roles` claim, because access decisions use each user's current
    roles, but a `roles` claim that is not a list of strings is rejected as malformed.
    """
    for name in NUMERIC_DATE_CLAIMS:
        if name in claims and not _is_numeric_date(claims[name]):
            raise InvalidToken(f"Access token invalid: the {name} claim must be a number.")

    for name in STRING_CLAIMS:
        value = claims[name]
        if not isinstance(value, str) or not ID_CLAIM.fullmatch(value):
            raise InvalidToken(f"Access token invalid: the {name} claim must be 32 lower-case hex digits.")

    roles = claims.get("roles")
    if roles is not None and not (isinstance(roles, list) and all(isinstance(role, str) for role in roles)):
        raise InvalidToken("Access token invalid: the roles claim must be a list of strings.")
