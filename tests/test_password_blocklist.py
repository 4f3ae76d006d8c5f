"""The blocklist of new passwords: the bundled list, an operator's file and the account's own words."""

from __future__ import annotations

import gzip
import os
from importlib import resources

import pytest

from service import password_blocklist
from service.password_blocklist import Blocklist, matches_context, read_file
from service.config import load_settings
from tests.test_config import environment, invalid_configuration_message  # noqa: F401


def test_bundled_list_holds_every_line_of_the_file():
    with (resources.files("service") / "data" / "common-passwords.txt.gz").open("rb") as raw:
        lines = gzip.decompress(raw.read()).decode().splitlines()

    blocklist = password_blocklist.bundled()

    assert len(lines) == 19_640
    assert len(blocklist) == len(set(lines))
    assert all(line in blocklist for line in lines[::97])


@pytest.mark.parametrize("password", ["password", "Password1", "  PASSWORD1  ", "ｐａｓｓｗｏｒｄ", "P@ssw0rd",
                                      "qwertyuiop", "iloveyou", "12345678"])
def test_common_passwords_and_their_spellings_are_listed(password):
    # Casefolded, NFKC-normalized (fullwidth letters) and stripped, as the service compares them.
    assert password in password_blocklist.bundled()


@pytest.mark.parametrize("password", ["correct horse battery staple", "password!x7Kq", "v3ry-Unl1kely-Str1ng",
                                      "monkey-business-7", "x7Kq!mZ2#pL9", "93847561029384756 monkey",
                                      "!@#$%^&*()_+monkey", "summer summer summer"])
def test_uncommon_passwords_pass(password):
    assert not password_blocklist.bundled().blocks(password)


@pytest.mark.parametrize("password", ["dragon2024!", "!!Dragon", "dragon\u00a0\u00a0\u00a0", "pass\u200bword",
                                      "\ufeffpassword1", "dragon\u0661\u0662\u0663", "dragon\u20ac\u20ac",
                                      "abc12345!", "password\ufe0f", "pass\u034fword", "\u3164password\u3164",
                                      "password\U000e0100", "dragon123456"])
def test_listed_words_with_affixes_are_blocked(password):
    assert password_blocklist.bundled().blocks(password)


@pytest.mark.parametrize("password", [" " * 8, "\u00a0" * 8, "\u200b" * 8, "\u3164" * 8, "\u2800" * 8, "\t \n" * 3,
                                      "!!!!!!!!", "........", "ÄÄÄÄÄÄÄÄ", "!@!@!@!@", "abcabcabc", "ab ab ab ab",
                                      "xYz" * 4, "\u200b!\u200b!\u200b!\u200b!", "ab      ", "a b c   ",
                                      "x" + "\u200b" * 7, "xy" + "\ufe0f" * 6])
def test_blank_and_repeated_passwords_are_trivial(password):
    assert password_blocklist.is_trivial(password)


@pytest.mark.parametrize("password", ["correct horse battery staple", "abcdabcd", "!@#$!@#$", "x7Kq!mZ2#pL9",
                                      "summer summer summer", "aaaaaaab", "#$%&*(+)=?!@", "ab ab ab abc",
                                      "a b c d "])
def test_varied_passwords_are_not_trivial(password):
    assert not password_blocklist.is_trivial(password)


@pytest.mark.parametrize(("password", "email", "matches"), [
    ("alice.smith", "alice.smith@example.com", True),
    ("Alice.Smith2024!", "alice.smith@example.com", True),
    ("2024_alice.smith", "alice.smith@example.com", True),
    ("alice.smith@example.com", "alice.smith@example.com", True),
    ("gatehouse", None, True),
    ("Gatehouse#2026", "bob@example.com", True),
    ("alice.smith is my name", "alice.smith@example.com", False),
    ("correct horse battery staple", "horse@example.com", False),
    # A local part under four characters is no clue, and "bob12345" is an ordinary guess at most.
    ("bob12345", "bob@example.com", False),
    ("dave2024!!", "dave+news@example.com", True),
    ("zqxvm482!", "zqxvm482@example.com", True),
    ("Zqxvn4822024", "zqxvn482@example.com", True),
    ("!482zqxvp", "482zqxvp@example.com", True),
    ("alice.smith7902024!", "alice.smith790@example.com", True),
    ("davenport rules", "dave@example.com", False),
    ("alice.smith1234567", "alice.smith@example.com", False),
    ("carol@bücher.de", "carol@xn--bcher-kva.de", True),
    ("alice\u0661\u0662\u0663\u0664", "alice@example.com", True),
    ("alice\u20ac\u20ac\u20ac\u20ac", "alice@example.com", True),
    ("gatehouse\x00", None, True),
    ("gate\u200bhouse", None, True),
])
def test_context_words_with_affixes(password, email, matches):
    assert matches_context(password, email) is matches


def test_operator_file(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_bytes("Acme Corporation\r\n\n  acme-rocket  \nＵＮＩＣＯＤＥ ｗｏｒｄｓ\n".encode())

    blocklist = read_file(path)

    assert len(blocklist) == 3
    assert "acme corporation" in blocklist
    assert "ACME-ROCKET" in blocklist
    assert "unicode words" in blocklist
    assert "acme" not in blocklist


def test_operator_file_entries_block_their_derivatives(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_text("acmecorp\n")

    blocklist = read_file(path)

    assert blocklist.blocks("Acmecorp2024!")
    assert blocklist.blocks("2024acmecorp")
    assert not blocklist.blocks("acmecorp rocket sled")


def test_operator_file_with_byte_order_mark(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_bytes("first line\nsecond line\n".encode("utf-8-sig"))

    blocklist = read_file(path)

    assert "first line" in blocklist
    assert "second line" in blocklist


def test_operator_file_long_lines_skipped(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_bytes(b"before\n" + b"x" * 5_000_000 + b"\nafter\n" + b"y" * (password_blocklist.MAX_ENTRY_BYTES + 1))

    blocklist = read_file(path)

    assert len(blocklist) == 2
    assert "before" in blocklist
    assert "after" in blocklist


def test_operator_file_must_be_regular(tmp_path):
    fifo = tmp_path / "blocked.fifo"
    os.mkfifo(fifo)

    with pytest.raises(ValueError, match="not a regular file"):
        read_file(fifo)


def test_operator_file_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")

    with pytest.raises(ValueError, match="line 3 of .* is not UTF-8"):
        read_file(path)


def test_operator_file_too_long(tmp_path, monkeypatch):
    monkeypatch.setattr(password_blocklist, "MAX_FILE_ENTRIES", 3)
    path = tmp_path / "blocked.txt"
    path.write_text("a1\nb2\nc3\nd4\n")

    with pytest.raises(ValueError, match="more than 3 lines"):
        read_file(path)


def test_operator_file_read_again_after_a_change(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_text("first entry\n")
    assert "first entry" in read_file(path)

    path.write_text("second entry, longer\n")

    assert "second entry, longer" in read_file(path)
    assert "first entry" not in read_file(path)


def test_empty_blocklist_holds_nothing():
    assert "" not in Blocklist([])
    assert "password" not in Blocklist(["   ", ""])


@pytest.mark.parametrize(("setup", "expected"), [
    (lambda path: None, "cannot read"),
    (lambda path: path.mkdir(), "not a regular file"),
    (lambda path: path.write_bytes(b"\xc3\x28\n"), "line 1 of"),
], ids=["missing", "directory", "not_utf8"])
def test_setting_names_the_variable(environment, tmp_path, setup, expected):  # noqa: F811
    path = tmp_path / "blocked.txt"
    setup(path)
    environment.setenv("GATEHOUSE_PASSWORD_BLOCKLIST_FILE", str(path))

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_PASSWORD_BLOCKLIST_FILE is invalid")
    assert expected in message


def test_empty_setting_means_unset(environment):  # noqa: F811
    environment.setenv("GATEHOUSE_PASSWORD_BLOCKLIST_FILE", "")

    assert load_settings().password_blocklist_file is None
