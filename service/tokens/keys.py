"""The signing key ring: PEM private keys in one directory, the newest by file name signs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

KEY_SUFFIX = ".pem"


class MissingSigningKey(Exception):
    """The key directory holds no usable private key."""


class InvalidSigningKey(Exception):
    """A key file cannot be read or does not fit the configured algorithm."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any
    public_key: Any
    path: Path

    def public_jwk(self) -> dict[str, Any]:
        jwk = get_default_algorithms()[self.algorithm].to_jwk(self.public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def _check_key_type(private_key: Any, algorithm: str, path: Path) -> None:
    if algorithm == "EdDSA" and isinstance(private_key, ed25519.Ed25519PrivateKey):
        return
    if algorithm == "ES256" and isinstance(private_key, ec.EllipticCurvePrivateKey) \
            and isinstance(private_key.curve, ec.SECP256R1):
        return
    if algorithm == "RS256" and isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size >= 2048:
        return

    raise InvalidSigningKey(
        f"{path} is not a key for {algorithm}: use an Ed25519 key for EdDSA, a P-256 key for ES256, "
        "an RSA key of 2048 bits or more for RS256 (gatehouse keys generate makes one)"
    )


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    """Compute the RFC 7638 JWK thumbprint, used as the kid."""
    required = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
    members = {name: public_jwk[name] for name in required[public_jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def load_key(path: Path, algorithm: str) -> SigningKey:
    """Read one PEM private key and derive its kid."""
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidSigningKey(f"{path} cannot be read as an unencrypted PEM private key: {exc}") from None

    _check_key_type(private_key, algorithm, path)
    public_key = private_key.public_key()
    jwk = get_default_algorithms()[algorithm].to_jwk(public_key, as_dict=True)
    return SigningKey(_thumbprint(jwk), algorithm, private_key, public_key, path)


class KeyRing:
    """Every key in the directory verifies; the last one in file-name order signs."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise MissingSigningKey("no signing key")
        self.signing_key = keys[-1]
        self._by_kid = {key.kid: key for key in keys}

    @classmethod
    def load(cls, directory: Path, algorithm: str) -> KeyRing:
        paths = sorted(directory.glob(f"*{KEY_SUFFIX}"))
        if not paths:
            raise MissingSigningKey(
                f"no signing key (*{KEY_SUFFIX}) in {directory}: run `gatehouse keys generate` "
                "or point GATEHOUSE_KEYS_DIR at the key directory"
            )
        return cls([load_key(path, algorithm) for path in paths])

    def verification_key(self, kid: object) -> SigningKey | None:
        """Look a kid up in memory only; a kid is never used as a path or a query."""
        return self._by_kid.get(kid) if isinstance(kid, str) else None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self._by_kid.values()]}


def generate_key(directory: Path, algorithm: str) -> Path:
    """Write a new private key whose file name sorts after every existing one."""
    if algorithm == "EdDSA":
        private_key: Any = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)

    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}-{algorithm.lower()}{KEY_SUFFIX}"
    # O_EXCL: never overwrite a key; 0600: the private key is readable by its owner only.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return path
