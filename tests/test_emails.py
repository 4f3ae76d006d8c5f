"""Email normalization and lookup keys, without the app."""

from __future__ import annotations

import pytest

from service.emails import fold_email, normalize_email, normalize_new_email, search_spellings


@pytest.mark.parametrize(("email", "key"), [
    ("alice@example.com", "alice@example.com"),
    ("\uff41lice@example.com", "alice@example.com"),
    ("\uff41\uff4c\uff49\uff43\uff45@example.com", "alice@example.com"),
    # Stored emails are lower-cased already, but NFKC can yield capitals: black-letter H.
    ("\u210cenry@example.com", "henry@example.com"),
    ("\u0430lice@example.com", "\u0430lice@example.com"),
    ("alicé@xn--exmple-cua.com", "alicé@xn--exmple-cua.com"),
], ids=["ascii", "fullwidth_letter", "fullwidth_word", "black_letter", "cyrillic", "accented"])
def test_fold_email(email, key):
    assert fold_email(email) == key


def test_new_email_stored_form():
    assert normalize_new_email(" Bob.O'Neil+News@Ex\u00e4mple.COM ") == "bob.o'neil+news@xn--exmple-cua.com"


def test_new_email_message_names_code_points():
    with pytest.raises(ValueError, match="U\\+0430 CYRILLIC SMALL LETTER A") as raised:
        normalize_new_email("\u0430lice@example.com")

    assert "must contain only ASCII characters" in str(raised.value)


def test_new_email_message_names_three_code_points():
    # Repeated characters are named once: five distinct ones here.
    with pytest.raises(ValueError) as raised:
        normalize_new_email("\u0430\u0430\u0431\u0432\u0433\u0434@example.com")

    message = str(raised.value)
    assert "U+0430" in message
    assert "U+0432" in message
    assert "U+0433" not in message
    assert message.endswith(" and 2 more.")


def test_existing_email_accepts_non_ascii_local_part():
    assert normalize_email(" ALICÉ@example.com ") == "alicé@example.com"
    assert normalize_email("\uff41lice@example.com") == "\uff41lice@example.com"


@pytest.mark.parametrize("email", ["Alice@Example.com", "bob.o'neil+news@ex\u00e4mple.com", "carol@\uff45xample.com"])
def test_fold_keeps_new_email(email):
    # A new account's stored form is its own lookup key, so a login finds it by either.
    stored = normalize_new_email(email)

    assert fold_email(stored) == stored


@pytest.mark.parametrize(("text", "spellings"), [
    ("Alice@Example", ["alice@example"]),
    ("\uff21lice", ["alice", "\uff41lice"]),
    ("\u0410lice", ["\u0430lice"]),
    ("alice\u0301", ["alic\u00e9"]),
], ids=["mixed_case", "fullwidth", "cyrillic", "decomposed"])
def test_search_spellings(text, spellings):
    assert search_spellings(text) == spellings


# RFC 5321 section 4.5.3.1.1: at most 64 octets before the @-sign.
MAX_LOCAL_PART = "a" * 64


def test_new_email_local_part_at_limit_accepted():
    assert normalize_new_email(f"{MAX_LOCAL_PART}@example.com") == f"{MAX_LOCAL_PART}@example.com"


def test_new_email_local_part_over_limit_rejected():
    with pytest.raises(ValueError, match="too long before the @-sign"):
        normalize_new_email(f"{MAX_LOCAL_PART}b@example.com")


def test_existing_email_accepts_long_local_part():
    # An account registered before the limit keeps its login, so the login rules accept it.
    assert normalize_email(f"{MAX_LOCAL_PART}b@example.com") == f"{MAX_LOCAL_PART}b@example.com"


@pytest.mark.parametrize("normalize", [normalize_email, normalize_new_email], ids=["existing", "new"])
def test_email_over_254_octets_rejected(normalize):
    # 64 + 1 + 192 = 257 octets, in domain labels of at most 63 characters.
    domain = ".".join(["b" * 62] * 3) + ".com"
    with pytest.raises(ValueError, match="too long"):
        normalize(f"{MAX_LOCAL_PART}@{domain}")


def test_existing_email_length_counts_utf8_octets():
    # 199 characters but 299 octets, because each é takes two octets in UTF-8.
    address = "\u00e9" * 100 + "@" + "c" * 63 + "." + "d" * 30 + ".com"
    assert len(address) <= 254

    with pytest.raises(ValueError, match="too long"):
        normalize_email(address)
