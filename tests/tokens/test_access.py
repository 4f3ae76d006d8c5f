"""Access-token verification rejects every forged, altered or misdirected token with 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from service.errors import InvalidToken
from service.tokens.access import issue_access_token, verify_access_token
from service.tokens.keys import KeyRing, generate_key


@pytest.fixture
def ring(tmp_path) -> KeyRing:
    generate_key(tmp_path, "EdDSA")
    return KeyRing.load(tmp_path, "EdDSA", publish_seconds=0)


# Ids of the form the service issues: uuid4().hex.
USER_ID = "a" * 32
SESSION_ID = "b" * 32


def claims(settings, **changes) -> dict:
    now = int(time.time())
    base = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": USER_ID, "sid": SESSION_ID, "jti": "c" * 32,
            "iat": now, "exp": now + 300}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(ring: KeyRing, payload: dict, **header) -> str:
    key = ring.signing_key
    headers = {"kid": key.kid, "typ": "at+jwt", **header}
    return jwt.encode(payload, key.private_key, algorithm="EdDSA", headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(ring: KeyRing, header: dict, payload: dict) -> str:
    """Sign with the real key, bypassing PyJWT's checks on the header we want to send."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(ring.signing_key.private_key.sign(signing_input.encode()))}"


def test_valid_token_accepted(ring, settings):
    token = issue_access_token(ring, settings, USER_ID, SESSION_ID)
    result = verify_access_token(ring, settings, token)
    assert result.user_id == USER_ID
    assert result.session_id == SESSION_ID


def test_alg_none_rejected(ring, settings):
    header = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": ring.signing_key.kid}).encode())
    payload = b64(json.dumps(claims(settings)).encode())
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, f"{header}.{payload}.")


def test_hs256_with_public_key_as_secret_rejected(ring, settings):
    public_pem = ring.signing_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": ring.signing_key.kid}).encode())
    payload = b64(json.dumps(claims(settings)).encode())
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, f"{header}.{payload}.{signature}")


@pytest.mark.parametrize("changes", [
    {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000},
    {"iss": "someone-else"},
    {"aud": "another-service"},
    {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 4000},
    {"nbf": int(time.time()) + 3600},
    {"exp": None},
    {"iat": None},
    {"sid": None},
    {"sub": 12345},
], ids=["expired", "wrong_iss", "wrong_aud", "iat_future", "nbf_future", "no_exp", "no_iat", "no_sid", "sub_not_str"])
def test_bad_claims_rejected(ring, settings, changes):
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, sign(ring, claims(settings, **changes)))


def test_tampered_payload_rejected(ring, settings):
    header, _, signature = issue_access_token(ring, settings, USER_ID, SESSION_ID).split(".")
    forged = b64(json.dumps(claims(settings, sub="admin")).encode())
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, f"{header}.{forged}.{signature}")


def test_truncated_signature_rejected(ring, settings):
    token = issue_access_token(ring, settings, USER_ID, SESSION_ID)
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, token[:-6])


@pytest.mark.parametrize("kid", ["unknown", "../../etc/passwd", "' OR 1=1 --", 7, None])
def test_unknown_or_hostile_kid_rejected(ring, settings, kid):
    token = sign_raw(ring, {"alg": "EdDSA", "typ": "at+jwt", "kid": kid}, claims(settings))
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, token)


def test_sign_raw_produces_accepted_token(ring, settings):
    # Guards the helper above: with the real kid its tokens pass, so the rejections are about the kid.
    token = sign_raw(ring, {"alg": "EdDSA", "typ": "at+jwt", "kid": ring.signing_key.kid}, claims(settings))
    assert verify_access_token(ring, settings, token).user_id == USER_ID


def test_key_from_token_header_ignored(ring, settings, tmp_path):
    # A token signed by the attacker's own key, which it offers through jwk, jku and x5u.
    attacker = KeyRing.load(generate_key(tmp_path / "attacker", "EdDSA").parent, "EdDSA", publish_seconds=0)
    header = {"kid": ring.signing_key.kid, "typ": "at+jwt", "jwk": attacker.signing_key.public_jwk(),
              "jku": "http://127.0.0.1:9/jwks.json", "x5u": "http://127.0.0.1:9/cert.pem"}
    token = jwt.encode(claims(settings), attacker.signing_key.private_key, algorithm="EdDSA", headers=header)
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, token)


def test_wrong_typ_rejected(ring, settings):
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, sign(ring, claims(settings), typ="JWT"))


def test_oversized_token_rejected(ring, settings):
    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, sign(ring, claims(settings, pad="x" * 5000)))


def test_older_key_still_verifies(ring, settings, tmp_path):
    old_token = issue_access_token(ring, settings, USER_ID, SESSION_ID)
    generate_key(tmp_path, "EdDSA")
    rotated = KeyRing.load(tmp_path, "EdDSA", publish_seconds=0)
    assert rotated.signing_key.kid != ring.signing_key.kid
    assert verify_access_token(rotated, settings, old_token).user_id == USER_ID
    assert len(rotated.jwks()["keys"]) == 2


@pytest.mark.parametrize("extra_seconds", [0, 10**10], ids=["just_over", "far_future"])
def test_lifetime_beyond_issued_rejected(ring, settings, extra_seconds):
    now = int(time.time())
    lifetime = settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + 1 + extra_seconds
    token = sign(ring, claims(settings, iat=now, exp=now + lifetime))

    with pytest.raises(InvalidToken, match="lifetime"):
        verify_access_token(ring, settings, token)


def test_full_issued_lifetime_accepted(ring, settings):
    now = int(time.time())
    token = sign(ring, claims(settings, iat=now, exp=now + settings.access_token_ttl_seconds))

    assert verify_access_token(ring, settings, token).expires_at == now + settings.access_token_ttl_seconds


@pytest.mark.parametrize("suffix", [",", ", ", ",!!", ",==", ",Basic Zm9vOmJhcg==", ",Bearer {token}"],
                         ids=["comma", "comma_space", "comma_junk", "comma_padding", "comma_basic", "second_token"])
def test_comma_joined_tokens_rejected(ring, settings, suffix):
    # gunicorn joins two Authorization headers into one value with a comma.
    token = issue_access_token(ring, settings, USER_ID, SESSION_ID)

    with pytest.raises(InvalidToken, match="one Authorization header"):
        verify_access_token(ring, settings, token + suffix.format(token=token))


@pytest.mark.parametrize("junk", ["!", "=", "+", "/", "~", " ", "\t", "%2E"])
def test_characters_outside_base64url_rejected(ring, settings, junk):
    header, payload, signature = issue_access_token(ring, settings, USER_ID, SESSION_ID).split(".")

    for token in (f"{header}{junk}.{payload}.{signature}", f"{header}.{payload}.{signature}{junk}"):
        with pytest.raises(InvalidToken, match="malformed"):
            verify_access_token(ring, settings, token)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "a..c", ".b.c"])
def test_not_three_segments_rejected(ring, settings, token):
    with pytest.raises(InvalidToken, match="malformed"):
        verify_access_token(ring, settings, token)


def future_time(seconds: int = 300) -> int:
    return int(time.time()) + seconds


@pytest.mark.parametrize("changes", [
    {"exp": str(future_time())},
    {"iat": str(int(time.time()))},
    {"nbf": str(int(time.time()))},
    {"exp": True},
    {"iat": False},
    {"nbf": False},
    {"exp": [future_time()]},
    {"iat": {"seconds": int(time.time())}},
    {"exp": 10**400},
    {"sub": [USER_ID]},
    {"sid": 7},
    {"jti": None},
    {"jti": ""},
    {"sid": True},
    {"roles": "admin"},
    {"roles": ["admin", 1]},
    {"roles": {"admin": True}},
    {"iss": ["gatehouse"]},
    {"aud": 5},
    {"sub": None},
    {"iss": None},
    {"aud": None},
    {"sub": "\ud800"},
    {"sub": "\U0001F600" * 8},
    {"sub": "A" * 32},
    {"sid": "b" * 31},
    {"jti": "g" * 32},
    {"sub": "a" * 32 + "\n"},
], ids=["exp_string", "iat_string", "nbf_string", "exp_true", "iat_false", "nbf_false", "exp_list", "iat_object",
        "exp_huge", "sub_list", "sid_number", "no_jti", "jti_empty", "sid_bool", "roles_string", "roles_mixed",
        "roles_object", "iss_list", "aud_number", "no_sub", "no_iss", "no_aud", "sub_surrogate", "sub_emoji",
        "sub_upper_case", "sid_short", "jti_not_hex", "sub_newline"])
def test_claim_of_wrong_type_rejected(ring, settings, changes):
    # Signed without PyJWT, which refuses to encode some of these claims.
    token = sign_raw(ring, {"alg": "EdDSA", "typ": "at+jwt", "kid": ring.signing_key.kid}, claims(settings, **changes))

    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, token)


def test_infinite_exp_rejected(ring, settings):
    # Python's JSON parser reads 1e999 as infinity, which json.dumps cannot write as a number.
    valid = claims(settings)
    payload = json.dumps(valid).replace(f'"exp": {valid["exp"]}', '"exp": 1e999')
    assert "1e999" in payload
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": ring.signing_key.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload.encode())}"
    token = f"{signing_input}.{b64(ring.signing_key.private_key.sign(signing_input.encode()))}"

    with pytest.raises(InvalidToken):
        verify_access_token(ring, settings, token)


def test_fractional_time_claims_accepted(ring, settings):
    # RFC 7519 section 2: a NumericDate may have a fraction.
    now = time.time()
    token = sign(ring, claims(settings, iat=now, nbf=now, exp=now + 300))

    assert verify_access_token(ring, settings, token).expires_at == int(now + 300)
