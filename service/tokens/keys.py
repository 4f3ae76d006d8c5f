"""The signing key ring: PEM private keys in one directory, published in the JWKS before they sign.

Every key verifies and is in the JWKS from the moment a process loads it. A key signs only
once its publish period (GATEHOUSE_KEY_PUBLISH_SECONDS) has passed since the UTC time at
the start of its file name, so that verifiers which cached the JWKS before the key
appeared have fetched it again by then.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

log = structlog.get_logger(__name__)

KEY_SUFFIX = ".pem"
# `gatehouse keys generate` starts each file name with the UTC time it wrote the key, such
# as 20250131T120000123456Z-eddsa.pem. That time starts the publish period because it
# travels with the file. An mtime does not, since the kubelet writes the files of a Secret
# volume anew in each pod, so there the mtime is when the pod started or the Secret changed.
KEY_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"
KEY_TIME_PREFIX = re.compile(r"(\d{8}T\d{6})(\d{6})?Z")


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
    # Unix time at the start of the file name, or None when the name starts with no time.
    published_at: float | None = None

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


def key_time(path: Path) -> float | None:
    """Parse the UTC time at the start of a key's file name into Unix seconds, or return None without one."""
    match = KEY_TIME_PREFIX.match(path.name)
    if match is None:
        return None

    seconds, micros = match.groups()
    try:
        moment = datetime.strptime(f"{seconds}{micros or '000000'}Z", KEY_TIME_FORMAT)
    except ValueError:
        raise InvalidSigningKey(
            f"{path} starts with {match.group()}, which is not a valid UTC time: rename the file so that "
            "it starts with the time the key was made, such as 20250131T120000Z-eddsa.pem"
        ) from None
    return moment.replace(tzinfo=UTC).timestamp()


def load_key(path: Path, algorithm: str) -> SigningKey:
    """Read one PEM private key, derive its kid and read the time in its file name."""
    published_at = key_time(path)
    # A FIFO or device would block the read, and with it a worker's start or a reload check.
    if not path.is_file():
        raise InvalidSigningKey(f"{path} is not a regular file")
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidSigningKey(f"{path} cannot be read as an unencrypted PEM private key: {exc}") from None

    _check_key_type(private_key, algorithm, path)
    public_key = private_key.public_key()
    jwk = get_default_algorithms()[algorithm].to_jwk(public_key, as_dict=True)
    return SigningKey(_thumbprint(jwk), algorithm, private_key, public_key, path, published_at)


class KeyRing:
    """Every key verifies and is published; which key signs depends on the time.

    A key may sign from publish_seconds after the time in its file name. A key whose name
    starts with no time may sign at once. Of the keys that may sign, the last in file-name
    order signs. When none may sign yet, as on a first start with one new key, the key
    whose publish period ends first signs, so the signing key never moves back to an older one.
    With publish_seconds 0 the last key in file-name order always signs.

    NOTE: the period counts from the time in the file name, not from when every server
    serves the key. Each server publishes a key only once its workers load it, at start or
    on SIGHUP. The time from making a key until the last server has loaded it shortens the
    time verifiers have to refetch the JWKS, and so does a clock difference between the
    machine that made it and the servers. docs/operations.md describes how to allow for both.
    """

    def __init__(self, keys: list[SigningKey], publish_seconds: float) -> None:
        if not keys:
            raise MissingSigningKey("no signing key")
        self.publish_seconds = publish_seconds
        self._by_kid = {key.kid: key for key in keys}
        # (Unix time from which the key may sign, key), in file-name order.
        self._schedule = [(self._signs_from(key), key) for key in keys]
        self._last_signing_key = self.signing_key_at(time.time())

    def _signs_from(self, key: SigningKey) -> float:
        if self.publish_seconds == 0 or key.published_at is None:
            return -math.inf
        return key.published_at + self.publish_seconds

    @classmethod
    def load(cls, directory: Path, algorithm: str, *, publish_seconds: float,
             skip_invalid: bool = False) -> KeyRing:
        """Read every *.pem key of the directory in file-name order and log which one signs.

        An invalid key file raises InvalidSigningKey. With skip_invalid, it is logged and
        left out instead, as long as another key loads: a worker that SIGHUP starts keeps
        serving with the valid keys rather than stopping the server. The start-up checks
        load strictly, so a bad file still stops the first start.
        """
        paths = sorted(directory.glob(f"*{KEY_SUFFIX}"))
        if not paths:
            raise MissingSigningKey(
                f"no signing key (*{KEY_SUFFIX}) in {directory}: run `gatehouse keys generate` "
                "or point GATEHOUSE_KEYS_DIR at the key directory"
            )

        keys = []
        for path in paths:
            try:
                keys.append(load_key(path, algorithm))
            except InvalidSigningKey as exc:
                # When no file loads, the last one's error stops the start.
                if not skip_invalid or (path == paths[-1] and not keys):
                    raise
                log.error("signing_key_skipped", path=str(path), error=str(exc))
        ring = cls(keys, publish_seconds)
        ring._log_loaded(directory)
        return ring

    def _log_loaded(self, directory: Path) -> None:
        now = time.time()
        if self.publish_seconds > 0:
            for _signs_from, key in self._schedule:
                if key.published_at is None:
                    log.warning("signing_key_undated", path=str(key.path), kid=key.kid,
                                hint="its file name starts with no UTC time, so it may sign at once; "
                                     "rename it to start with the time it was made")
        signing_key = self.signing_key_at(now)
        # Pending keys wait to sign, so the signing key is never one of them. When it signs
        # before its own publish period has ended, signing_early is true instead.
        pending = {key.kid: _iso_time(signs_from) for signs_from, key in self._schedule
                   if signs_from > now and key is not signing_key}
        log.info("signing_keys_loaded", directory=str(directory), kids=list(self._by_kid),
                 signing_kid=signing_key.kid, signing_early=self._signs_from(signing_key) > now, pending=pending)

    def signing_key_at(self, now: float) -> SigningKey:
        """Return the key that signs at Unix time `now`."""
        for signs_from, key in reversed(self._schedule):
            if signs_from <= now:
                return key
        return min(self._schedule, key=lambda entry: entry[0])[1]

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs now. It changes without a reload when a newer key's publish period ends."""
        key = self.signing_key_at(time.time())
        if key is not self._last_signing_key:
            log.info("signing_key_switched", kid=key.kid, previous_kid=self._last_signing_key.kid)
            self._last_signing_key = key
        return key

    def verification_key(self, kid: object) -> SigningKey | None:
        """Look a kid up in memory only; a kid is never used as a path or a query."""
        return self._by_kid.get(kid) if isinstance(kid, str) else None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self._by_kid.values()]}


def _iso_time(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat().replace("+00:00", "Z")


def generate_key(directory: Path, algorithm: str) -> Path:
    """Write a new private key whose file name starts with the current UTC time.

    The name sorts after every key made earlier, and its time starts the key's publish period.
    """
    if algorithm == "EdDSA":
        private_key: Any = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)

    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stamp = datetime.now(UTC).strftime(KEY_TIME_FORMAT)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}-{algorithm.lower()}{KEY_SUFFIX}"
    # O_EXCL: never overwrite a key; 0600: the private key is readable by its owner only.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return path
