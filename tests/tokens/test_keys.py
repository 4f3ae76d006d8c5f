"""The key ring: loading, key-type checks and the JWKS document."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.tokens.keys import InvalidSigningKey, KeyRing, MissingSigningKey, generate_key


def test_empty_directory_raises_missing_key(tmp_path):
    with pytest.raises(MissingSigningKey, match="gatehouse keys generate"):
        KeyRing.load(tmp_path, "EdDSA")


def test_key_of_wrong_type_rejected(tmp_path):
    generate_key(tmp_path, "EdDSA")
    with pytest.raises(InvalidSigningKey, match="ES256"):
        KeyRing.load(tmp_path, "ES256")


def test_short_rsa_key_rejected(tmp_path):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "weak.pem").write_bytes(weak.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(InvalidSigningKey):
        KeyRing.load(tmp_path, "RS256")


def test_garbage_file_rejected(tmp_path):
    (tmp_path / "broken.pem").write_text("not a key")
    with pytest.raises(InvalidSigningKey, match="broken.pem"):
        KeyRing.load(tmp_path, "EdDSA")


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
def test_jwks_publishes_public_parts_only(tmp_path, algorithm):
    path = generate_key(tmp_path, algorithm)
    ring = KeyRing.load(tmp_path, algorithm)
    [jwk] = ring.jwks()["keys"]
    assert jwk["kid"] == ring.signing_key.kid
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    assert "d" not in jwk
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_newest_file_signs(tmp_path):
    generate_key(tmp_path, "EdDSA")
    newest = generate_key(tmp_path, "EdDSA")
    assert KeyRing.load(tmp_path, "EdDSA").signing_key.path == newest
