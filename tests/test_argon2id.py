"""argon2id hashes by libsodium and argon2-cffi: one string form, read by both."""

from __future__ import annotations

import argon2
import pytest

from service.argon2id import _SODIUM_FORM, Argon2id, InvalidHashError
from service.config import ARGON2_DEFAULT_MEMORY_KIB, ARGON2_DEFAULT_TIME_COST

PASSWORD = "correct horse battery staple"
# Small parameters keep these tests fast; the string form is the same for every size.
MEMORY_KIB, TIME_COST = 1024, 2


@pytest.fixture(scope="module")
def hasher() -> Argon2id:
    return Argon2id(MEMORY_KIB, TIME_COST, 1)


def reference(parallelism: int = 1, **options) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(memory_cost=MEMORY_KIB, time_cost=TIME_COST, parallelism=parallelism,
                                 type=argon2.Type.ID, **options)


def test_one_lane_hashed_by_libsodium(hasher):
    password_hash = hasher.hash(PASSWORD)

    assert hasher.hashes_with_libsodium is True
    assert password_hash.startswith(f"$argon2id$v=19$m={MEMORY_KIB},t={TIME_COST},p=1$")
    assert reference().verify(password_hash, PASSWORD) is True
    assert hasher.verify(password_hash, PASSWORD) is True
    assert hasher.verify(password_hash, PASSWORD + " ") is False
    assert hasher.needs_rehash(password_hash) is False


@pytest.mark.parametrize("options", [
    {},  # argon2-cffi's default form, the one libsodium also writes
    {"parallelism": 2},
    {"salt_len": 32},
    {"hash_len": 16},
], ids=["same-form", "two-lanes", "long-salt", "short-digest"])
def test_hashes_of_argon2_cffi_verify(hasher, options):
    password_hash = reference(**options).hash(PASSWORD)

    assert hasher.verify(password_hash, PASSWORD) is True
    assert hasher.verify(password_hash, "wrong password") is False


def test_non_ascii_password_both_libraries(hasher):
    password = "pässwörd ﬁ 密码"

    assert reference().verify(hasher.hash(password), password) is True
    assert hasher.verify(reference().hash(password), password) is True


def test_several_lanes_hashed_by_argon2_cffi():
    hasher = Argon2id(MEMORY_KIB, TIME_COST, 2)
    password_hash = hasher.hash(PASSWORD)

    assert hasher.hashes_with_libsodium is False
    assert ",p=2$" in password_hash
    assert hasher.verify(password_hash, PASSWORD) is True


def test_other_parameters_need_rehash(hasher):
    defaults = Argon2id(ARGON2_DEFAULT_MEMORY_KIB, ARGON2_DEFAULT_TIME_COST, 1)

    assert defaults.needs_rehash(hasher.hash(PASSWORD)) is True
    assert hasher.needs_rehash(reference(parallelism=2).hash(PASSWORD)) is True


@pytest.mark.parametrize("stored", [
    "not-a-hash",
    "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
    "$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA",  # digest cut off
    "$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$!!!",
    "$argon2id$v=19$m=abc,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$c2FsdHNhbHRzYWx0c2FsdA",
    "",
    # libsodium's form with less memory than argon2 allows.
    "$argon2id$v=19$m=1,t=5,p=1$" + "A" * 22 + "$" + "A" * 43,
])
def test_unreadable_hash_raises(hasher, stored):
    with pytest.raises(InvalidHashError):
        hasher.verify(stored, PASSWORD)


def test_damaged_sodium_digest_fails_verification(hasher):
    password_hash = hasher.hash(PASSWORD)
    damaged = password_hash[:-43] + "A" * 43

    assert hasher.verify(damaged, PASSWORD) is False


# Base64 characters whose low bits are not zero, so no encoder writes them last.
@pytest.mark.parametrize(("part", "last"), [("salt", "B"), ("salt", "P"), ("digest", "B"), ("digest", "D")])
def test_non_canonical_base64_is_unreadable(hasher, part, last):
    prefix, salt, digest = hasher.hash(PASSWORD).rsplit("$", 2)
    if part == "salt":
        salt = salt[:-1] + last
    else:
        digest = digest[:-1] + last

    with pytest.raises(InvalidHashError):
        hasher.verify(f"{prefix}${salt}${digest}", PASSWORD)


def test_new_hashes_go_to_libsodium(hasher):
    # Hashes from both libraries, with random salts and digests, keep going to libsodium.
    hashes = [hasher.hash(PASSWORD) for _ in range(20)] + [reference().hash(PASSWORD) for _ in range(20)]

    assert [password_hash for password_hash in hashes if not _SODIUM_FORM.fullmatch(password_hash)] == []
