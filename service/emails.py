"""Email addresses: syntax checks, the stored form, and the key that a login looks up.

A new account (registration, `gatehouse users create`) needs an ASCII local part.
Otherwise a Unicode look-alike of an ASCII address, such as one with a fullwidth ａ or
a Cyrillic а, could become a second account that reads the same in admin listings and
the audit trail. Logins and listing cursors accept what registration accepted before
that rule, because accounts with a non-ASCII local part may exist from before it.
"""

from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

# Maximum number of distinct non-ASCII characters that a rejection message names. It counts the rest.
_MAX_NAMED_CHARACTERS = 3


def normalize_email(value: str) -> str:
    """Validate the syntax and return the address in its stored form.

    The local part is NFC-normalized (by email-validator) and lower-cased, and the
    domain is lower-cased in its ASCII (IDNA) form, so Alice@Example.com and
    alice@example.com are one account, and so are a Unicode domain and its xn--
    spelling. Emails are compared byte for byte after this. Deliverability is not
    checked: that needs DNS and proves nothing.

    NOTE: This accepts a non-ASCII local part and one longer than 64 octets, unlike
    normalize_new_email, because accounts registered before those rules may have one.
    An address that no account has then fails its login like any unknown email.
    """
    return _stored_form(_validate(value.strip(), allow_smtputf8=True))


def normalize_new_email(value: str) -> str:
    """Validate the address of a new account and return its stored form.

    The rules of normalize_email apply, the local part must be ASCII, and it may have
    at most 64 octets (RFC 5321 section 4.5.3.1.1). ASCII text is unchanged by NFKC, so
    the stored form of a new account is its own lookup key (see fold_email).
    """
    address = value.strip()

    # email-validator's own message shows the rejected character, and a look-alike
    # there reads as the ASCII letter. This message names the code points instead.
    local_part, at_sign, _ = address.rpartition("@")
    if at_sign and not local_part.isascii():
        raise ValueError(_non_ascii_message(local_part))

    # email-validator's strict mode counts the local part in characters, which are
    # octets here because the local part is ASCII.
    return _stored_form(_validate(address, allow_smtputf8=False, strict=True))


def fold_email(email: str) -> str:
    """Return the lookup key of an address in stored form: its local part NFKC-normalized, then lower-cased.

    NFKC maps compatibility characters to their plain forms, such as fullwidth ａ
    (U+FF41) to a, but keeps the letters of other scripts: Cyrillic а (U+0430) stays
    apart from Latin a. The domain is already ASCII and stays as it is.
    """
    local_part, _, domain = email.rpartition("@")
    return f"{fold_text(local_part)}@{domain}"


def fold_text(text: str) -> str:
    """Return text folded as the local part of a lookup key is: NFKC-normalized, then lower-cased."""
    return unicodedata.normalize("NFKC", text).lower()


def search_spellings(text: str) -> list[str]:
    """Return the spellings of part of an address that a search looks for in stored emails.

    The folded spelling (fold_text) matches every account whose stored email is its own
    lookup key, which includes every account made since local parts had to be ASCII.
    The stored-form spelling (NFC, lower-cased) finds an older account whose non-ASCII
    local part NFKC would change, such as fullwidth ａlice@.
    """
    return list(dict.fromkeys((fold_text(text), unicodedata.normalize("NFC", text).lower())))


def _validate(address: str, *, allow_smtputf8: bool, strict: bool = False) -> ValidatedEmail:
    try:
        return validate_email(address, check_deliverability=False, allow_smtputf8=allow_smtputf8, strict=strict)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


def _stored_form(result: ValidatedEmail) -> str:
    return f"{result.local_part.lower()}@{result.ascii_domain.lower()}"


def _non_ascii_message(local_part: str) -> str:
    characters = list(dict.fromkeys(character for character in local_part if not character.isascii()))
    named = ", ".join(f"U+{ord(character):04X} {unicodedata.name(character, '(unnamed)')}"
                      for character in characters[:_MAX_NAMED_CHARACTERS])
    if len(characters) > _MAX_NAMED_CHARACTERS:
        named += f" and {len(characters) - _MAX_NAMED_CHARACTERS} more"

    return f"The part before the @-sign must contain only ASCII characters, not {named}."
