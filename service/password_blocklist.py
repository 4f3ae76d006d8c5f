"""The blocklist that every new password is checked against (NIST SP 800-63B).

A new password is refused when, Unicode-normalized (NFKC), casefolded and without
surrounding white space, it is

- one of the 19,640 commonly used passwords of Django's list, bundled as
  service/data/common-passwords.txt.gz (licence beside it);
- a line of the file that GATEHOUSE_PASSWORD_BLOCKLIST_FILE names, where an operator
  lists the names of the organisation and its products, or passwords known to be leaked;
- the account's email address, its part before the @-sign or the service's name, also
  with digits and punctuation before or after them ("alice.smith2024!").

Each worker keeps an 8-byte BLAKE2b digest of every listed password in one sorted array:
8 bytes per entry (157 KB for the bundled list), where a set of the strings would take
about 1.6 MiB. Two different passwords share a digest with a chance of about one in
2**64 / entries, so no allowed password is refused in practice.
"""

from __future__ import annotations

import gzip
import hashlib
import string
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

# The maximum number of lines in GATEHOUSE_PASSWORD_BLOCKLIST_FILE: 8 MB of digests in
# each worker, and 1.4 s to read at start on the benchmark machine.
MAX_FILE_ENTRIES = 1_000_000
# Context words shorter than this are not compared, because a short local part such as
# "al" is no clue to the password.
_MIN_CONTEXT_WORD = 4
SERVICE_NAME = "gatehouse"
# Stripped from both ends of a password before it is compared with the context words.
_AFFIX_CHARACTERS = string.digits + string.punctuation + string.whitespace


def _comparable(password: str) -> str:
    return unicodedata.normalize("NFKC", password).strip().casefold()


def _digest(comparable: str) -> int:
    return int.from_bytes(hashlib.blake2b(comparable.encode("utf-8", "surrogatepass"), digest_size=8).digest())


class Blocklist:
    """The digests of listed passwords, sorted, for membership tests by binary search."""

    def __init__(self, passwords: Iterable[str]) -> None:
        self._digests = array("Q", sorted({_digest(_comparable(p)) for p in passwords if p.strip()}))

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, password: object) -> bool:
        if not isinstance(password, str):
            return False
        key = _digest(_comparable(password))
        index = bisect_left(self._digests, key)
        return index < len(self._digests) and self._digests[index] == key


@cache
def bundled() -> Blocklist:
    """Return the blocklist of the commonly used passwords that ship with Gatehouse, read once per process."""
    with (resources.files("service") / "data" / "common-passwords.txt.gz").open("rb") as raw, \
            gzip.open(raw, "rt", encoding="utf-8") as lines:
        return Blocklist(line.rstrip("\n") for line in lines)


def read_file(path: Path) -> Blocklist:
    """Read an operator's blocklist: UTF-8 text, one password per line, blank lines ignored.

    Raise ValueError, with the line number where there is one, when the file cannot be
    read, is not UTF-8 or contains more than MAX_FILE_ENTRIES lines. The settings check
    reads the file, and Passwords reads it again in the same process: the last file read
    is kept while its size and modification time stay the same.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return _read_file(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1)
def _read_file(path: Path, _size: int, _mtime_ns: int) -> Blocklist:
    entries: list[str] = []
    try:
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if number > MAX_FILE_ENTRIES:
                    raise ValueError(f"{path} has more than {MAX_FILE_ENTRIES:,} lines")
                try:
                    entries.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError:
                    raise ValueError(f"line {number} of {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return Blocklist(entries)


def context_words(email: str | None) -> list[str]:
    """Return the words that a password of this account must not be: the email, its local part and the service's name."""
    words = [SERVICE_NAME]
    if email:
        words += [email, email.rpartition("@")[0]]
    return [_comparable(word) for word in words if len(word) >= _MIN_CONTEXT_WORD]


def matches_context(password: str, email: str | None) -> bool:
    """Tell whether the password is a context word, alone or with digits and punctuation around it."""
    comparable = _comparable(password)
    core = comparable.strip(_AFFIX_CHARACTERS)
    return any(word in (comparable, core) for word in context_words(email))
