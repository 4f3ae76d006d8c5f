"""Email addresses: syntax checks and the stored form."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email


def normalize_email(value: str) -> str:
    """Validate the syntax and return the address in its one stored form.

    The local part is NFC-normalized (by email-validator) and lower-cased, and the
    domain is lower-cased in its ASCII (IDNA) form, so Alice@Example.com and
    alice@example.com are one account, and so are a Unicode domain and its xn--
    spelling. Emails are compared byte for byte after this. Deliverability is not
    checked: that needs DNS and proves nothing.
    """
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None

    return f"{result.local_part.lower()}@{result.ascii_domain.lower()}"
