"""The blocklist that every new password is checked against (NIST SP 800-63B).

A password is compared in its NFKC form without format characters, casefolded and
without surrounding white space. It is refused when that form, or the word it is built
on (what remains without digits, punctuation, symbols and spaces at its ends), is

- one of the 19,640 commonly used passwords of Django's list, bundled as
  service/data/common-passwords.txt.gz (licence beside it);
- a line of the file that GATEHOUSE_PASSWORD_BLOCKLIST_FILE names, where an operator
  lists the names of the organisation and its products, or passwords known to be leaked;
- one of the account's context words (context_words): its email and parts of it, or the
  service's name.

It is also refused when that form keeps fewer than four characters without white space,
or is one to three characters repeated (is_trivial), as "!!!!!!!!", "ab      " or eight
zero-width spaces are.

Each worker keeps an 8-byte BLAKE2b digest of every listed password in one sorted array:
8 bytes per entry (157 KB for the bundled list), where a set of the strings would take
about 1.6 MiB. Two different passwords share a digest with a chance of about one in
2**64 / entries, so no allowed password is refused in practice.
"""

from __future__ import annotations

import gzip
import hashlib
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import BinaryIO

# The maximum number of lines in GATEHOUSE_PASSWORD_BLOCKLIST_FILE: 8 MB of digests in
# each worker, and 1.4 s to read at start on the benchmark machine.
MAX_FILE_ENTRIES = 1_000_000
# Context words shorter than this are not compared, because a short local part such as
# "al" is no clue to the password.
_MIN_CONTEXT_WORD = 4
SERVICE_NAME = "gatehouse"
# Unicode categories stripped from both ends of a password to find the word it is built
# on: numbers, punctuation, symbols, separators and control or format characters, so
# "alice.smith2024!", "alice١٢٣٤" and "alice€€€€" all come down to "alice.smith" or "alice".
_AFFIX_CATEGORIES = ("N", "P", "S", "Z", "C")
# The same without numbers, for listed words that end or begin in digits ("abc12345!").
_SYMBOL_CATEGORIES = ("P", "S", "Z", "C")
# At most this many affix characters in all: a year and a symbol or two make a listed word
# no stronger, but 17 random digits before "monkey" do.
MAX_AFFIX = 6
# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt, Unicode 15)
# outside category Cf: variation selectors, the combining grapheme joiner and the Hangul
# fillers render as nothing, so "password\ufe0f" reads as "password".
_IGNORABLE_RANGES = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x3164, 0x3164),
                     (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0xE0000, 0xE0FFF))
# The maximum length of a unit whose repetition makes a trivial password, and the
# fewest characters that a password must keep without white space and invisible ones
# (is_trivial).
_MAX_REPEATED_UNIT = 3
_MIN_COMPACT = 4
# Passwords are at most this long, so a longer line of an operator's file can never match.
MAX_ENTRY_BYTES = 4 * 256


def _invisible(character: str) -> bool:
    if unicodedata.category(character) == "Cf":
        return True
    code = ord(character)
    return any(first <= code <= last for first, last in _IGNORABLE_RANGES)


def _comparable(password: str) -> str:
    """Return the form that is compared: NFKC, without invisible characters, trimmed and casefolded.

    Format characters (zero-width space, soft hyphen, byte order mark) and the other
    default-ignorable characters render as nothing, so "pass\u200bword" reads as
    "password" and is compared as such.
    """
    normalized = unicodedata.normalize("NFKC", password)
    return "".join(character for character in normalized if not _invisible(character)).strip().casefold()


def _is_affix(character: str, categories: tuple[str, ...] = _AFFIX_CATEGORIES) -> bool:
    return unicodedata.category(character)[0] in categories


def _cores(comparable: str) -> list[str]:
    """Return the words a password may be built on: without affixes, and without the affixes that are not digits.

    Only words of at least _MIN_CONTEXT_WORD characters count, with at most MAX_AFFIX
    characters removed.
    """
    cores = []
    for categories in (_AFFIX_CATEGORIES, _SYMBOL_CATEGORIES):
        start, end = 0, len(comparable)
        while start < end and _is_affix(comparable[start], categories):
            start += 1
        while end > start and _is_affix(comparable[end - 1], categories):
            end -= 1
        removed = len(comparable) - (end - start)
        if 0 < removed <= MAX_AFFIX and end - start >= _MIN_CONTEXT_WORD:
            cores.append(comparable[start:end])
    return cores


def is_trivial(password: str) -> bool:
    """Tell whether a password comes down to a few characters, once compared as listed ones are.

    One case is fewer than _MIN_COMPACT characters left without white space and
    invisible characters, as in eight spaces, "ab      " or "x" and seven zero-width
    spaces. The other is a unit of one to _MAX_REPEATED_UNIT characters repeated at
    least twice over the whole password, as in "!!!!!!!!", "!@!@!@!@" or "ab ab ab ab".
    Such passwords are among the first guesses, and the length rule counts what was sent.
    """
    compact = "".join(_comparable(password).split())
    if len(compact) < _MIN_COMPACT:
        return True
    return any(compact == (compact[:size] * len(compact))[:len(compact)]
               for size in range(1, min(_MAX_REPEATED_UNIT, len(compact) // 2) + 1))


def _digest(comparable: str) -> int:
    return int.from_bytes(hashlib.blake2b(comparable.encode("utf-8", "surrogatepass"), digest_size=8).digest())


class Blocklist:
    """The digests of listed passwords, sorted, for membership tests by binary search."""

    def __init__(self, passwords: Iterable[str]) -> None:
        self._digests = array("Q", sorted({_digest(_comparable(p)) for p in passwords if p.strip()}))

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, password: object) -> bool:
        return isinstance(password, str) and self._holds(_comparable(password))

    def blocks(self, password: str) -> bool:
        """Tell whether a password is listed, alone or with a few affixes around a listed word ("dragon2024!")."""
        comparable = _comparable(password)
        return any(self._holds(candidate) for candidate in (comparable, *_cores(comparable)))

    def _holds(self, comparable: str) -> bool:
        key = _digest(comparable)
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
    # A FIFO or device would block the start, or never end.
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")

    entries: list[str] = []
    try:
        with path.open("rb") as lines:
            for number, raw in enumerate(_lines(lines), start=1):
                if number > MAX_FILE_ENTRIES:
                    raise ValueError(f"{path} has more than {MAX_FILE_ENTRIES:,} lines")
                if raw is None:
                    continue
                try:
                    # utf-8-sig on the first line drops a byte order mark, as editors on Windows write one.
                    entries.append(raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n"))
                except UnicodeDecodeError:
                    raise ValueError(f"line {number} of {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return Blocklist(entries)


def _lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """Yield each line of a binary stream, or None for a line longer than MAX_ENTRY_BYTES, read in bounded steps."""
    while raw := stream.readline(MAX_ENTRY_BYTES + 2):
        if len(raw.removesuffix(b"\n")) <= MAX_ENTRY_BYTES:
            yield raw
            continue
        # Too long to be a password: skip to the end of the line without keeping it.
        while not raw.endswith(b"\n") and (raw := stream.readline(MAX_ENTRY_BYTES)):
            pass
        yield None


def context_words(email: str | None) -> list[str]:
    """Return the words that a password of this account must not be built on.

    They are the service's name, the email, its local part, the local part before a
    "+" (subaddress), and the email with its domain in Unicode (bücher.de rather than
    the stored xn--bcher-kva.de).
    """
    words = [SERVICE_NAME]
    if email:
        local, _, domain = email.rpartition("@")
        words += [email, local, local.partition("+")[0]]
        try:
            words.append(f"{local}@{domain.encode('ascii').decode('idna')}")
        except UnicodeError:
            pass
    return [_comparable(word) for word in words if len(word) >= _MIN_CONTEXT_WORD]


def matches_context(password: str, email: str | None) -> bool:
    """Tell whether the password is a context word, alone or with at most MAX_AFFIX affix characters around it.

    Unlike a listed word, a context word is looked for in the password, so a local part
    that ends in digits ("john1985") is found in "john19852024!" as well.
    """
    comparable = _comparable(password)
    for word in context_words(email):
        index = comparable.find(word)
        while index >= 0:
            affixes = comparable[:index] + comparable[index + len(word):]
            if len(affixes) <= MAX_AFFIX and all(_is_affix(character) for character in affixes):
                return True
            index = comparable.find(word, index + 1)
    return False
