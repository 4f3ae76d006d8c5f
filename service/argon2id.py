"""argon2id password hashes in PHC string form, computed by libsodium where it can.

libsodium (through PyNaCl) picks the widest vector instructions the CPU has when it
starts, and maps each hash's memory afresh and unmaps it afterwards. argon2-cffi's
bundled libargon2 is built for SSE2 at most. On the benchmark machine (AMD EPYC with
AVX-512) libsodium verified a hash of the default parameters in about half the CPU time
(docs/benchmarks.md). Both write and read the same string form, so a hash made by one
verifies with the other, and the parameters, not the library, set what a guess costs
an attacker.

libsodium computes only one lane. argon2-cffi hashes with parallelism above 1, verifies
hashes of other forms (argon2i, argon2d, version 16, other salt or digest lengths) and
reads the parameters of stored hashes.
"""

from __future__ import annotations

import re

import argon2
import nacl.bindings
import nacl.exceptions
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["Argon2id", "InvalidHashError"]

# The form libsodium writes: version 19, one lane, a 16-byte salt and a 32-byte digest,
# in unpadded base64. argon2-cffi writes the same by default. Hashes of this form go to
# libsodium; all others to argon2-cffi. The last character of the salt and of the digest
# must leave the unused low bits zero, as an encoder writes them. libsodium rejects
# other values like a wrong password, while libargon2 reports them as unreadable.
_SODIUM_FORM = re.compile(
    r"\$argon2id\$v=19\$m=(?P<m>[1-9][0-9]{0,9}),t=(?P<t>[1-9][0-9]{0,9}),p=1"
    r"\$[A-Za-z0-9+/]{21}[AQgw]\$[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]"
)
# libsodium's bounds for argon2id, in KiB of memory and passes. libsodium rejects a hash
# outside them like a wrong password, while libargon2 reports it as unreadable.
_SODIUM_MEMORY_KIB = range(nacl.bindings.crypto_pwhash_argon2id_MEMLIMIT_MIN // 1024,
                           nacl.bindings.crypto_pwhash_argon2id_MEMLIMIT_MAX // 1024 + 1)
_SODIUM_TIME_COST = range(nacl.bindings.crypto_pwhash_argon2id_OPSLIMIT_MIN,
                          nacl.bindings.crypto_pwhash_argon2id_OPSLIMIT_MAX + 1)


class Argon2id:
    """Hash and verify passwords with fixed argon2id parameters."""

    def __init__(self, memory_kib: int, time_cost: int, parallelism: int) -> None:
        self._reference = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=argon2.Type.ID,
        )
        self._time_cost = time_cost
        self._memory_bytes = memory_kib * 1024
        # libsodium computes only one lane.
        self.hashes_with_libsodium = parallelism == 1

    def hash(self, password: str) -> str:
        """Return a new hash of password, with a random salt."""
        if self.hashes_with_libsodium:
            return nacl.bindings.crypto_pwhash_str_alg(
                password.encode(), self._time_cost, self._memory_bytes, nacl.bindings.crypto_pwhash_ALG_ARGON2ID13,
            ).decode("ascii")
        return self._reference.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        """Tell whether password matches password_hash; raise InvalidHashError when the hash cannot be read.

        A hash of an unknown scheme is unreadable, and so is an argon2 hash that libargon2
        fails to decode or compute.
        """
        form = _SODIUM_FORM.fullmatch(password_hash)
        if form and int(form["m"]) in _SODIUM_MEMORY_KIB and int(form["t"]) in _SODIUM_TIME_COST:
            try:
                return nacl.bindings.crypto_pwhash_str_verify(password_hash.encode("ascii"), password.encode())
            except nacl.exceptions.InvalidkeyError:
                # NOTE: a wrong password and a damaged digest raise the same error. A digest
                # changed into other valid base64 cannot be distinguished from a wrong password,
                # because every 32 bytes are a possible digest. Such a row fails every login
                # without a log line.
                return False

        try:
            return self._reference.verify(password_hash, password)
        except VerifyMismatchError:
            return False
        except VerificationError as exc:
            raise InvalidHashError(str(exc)) from exc

    def needs_rehash(self, password_hash: str) -> bool:
        """Tell whether a hash was made with other parameters than these."""
        return self._reference.check_needs_rehash(password_hash)
