"""Request and response bodies; the same models validate requests and generate /openapi.json."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from service.blacklist import MAX_MANUAL_BAN_SECONDS, MIN_MANUAL_BAN_SECONDS
from service.emails import normalize_email, normalize_new_email
from service.networks import without_port
from service.passwords import normalize_password

# Longer passwords are rejected before hashing, so a huge body cannot buy argon2 time.
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 256
# RFC 5321 limits a forward path to 256 octets, so an address to 254 characters.
EMAIL_MAX_LENGTH = 254


# The address of an existing account, as a login sends it.
EmailAddress = Annotated[
    str,
    Field(min_length=3, max_length=EMAIL_MAX_LENGTH, examples=["alice@example.com"],
          json_schema_extra={"format": "email"}),
    AfterValidator(normalize_email),
]
# The address of a new account, whose local part must be ASCII (see service.emails).
NewEmailAddress = Annotated[
    str,
    Field(min_length=3, max_length=EMAIL_MAX_LENGTH, examples=["alice@example.com"],
          description="The part before the @-sign must be ASCII and at most 64 characters long (RFC 5321). "
                      "A domain with other characters is stored and returned in its ASCII (xn--) form.",
          json_schema_extra={"format": "email"}),
    AfterValidator(normalize_new_email),
]


# The bidirectional embedding, override and isolate characters (Unicode's Bidi_Control
# minus the marks): they reorder the text that follows them on screen, so a reason
# shown in an admin tool or a terminal could read other than it was written.
_BIDI_FORMATTING = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def display_text_problem(value: str) -> str | None:
    """Return why a text shown to administrators is invalid, or None: control or bidirectional formatting characters."""
    # Cc, the control characters, and Zl and Zp, the line and paragraph separators U+2028
    # and U+2029, which break the line in terminals and editors too.
    if any(character in _BIDI_FORMATTING or unicodedata.category(character) in ("Cc", "Zl", "Zp")
           for character in value):
        return ("should contain no control characters or line breaks (NUL, tab, LF, U+2028, U+2029) and no "
                "bidirectional formatting characters (U+202A to U+202E, U+2066 to U+2069)")
    return None


def _check_display_text(value: str) -> str:
    problem = display_text_problem(value)
    if problem is not None:
        raise PydanticCustomError("display_text_character", f"String {problem}")
    return value


# Free text that administrators read back: a ban's reason, a role's description.
DisplayText = Annotated[
    str,
    # Documents the validator's rule; the validator itself gives the clearer message.
    Field(json_schema_extra={"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069]*$"}),
    AfterValidator(_check_display_text),
]


class RequestBody(BaseModel):
    """Strict input: no type coercion, and unknown fields are rejected with 400."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _normalize_new_password(value: str) -> str:
    """Normalize a new password, and apply the length limits to the normalized form too.

    NFKC composes a letter and its combining accent into one character, so "é" typed as
    two code points would otherwise count twice, and a password stored shorter than the
    minimum would pass. It also expands compatibility characters (one "ﷺ" becomes 18),
    and a normalized form over the maximum could not be sent to log in.
    """
    normalized = normalize_password(value)
    # Control characters (NUL, tab, line breaks) are no printing characters: a password
    # with them was most likely pasted with its line end, and many clients cannot type it.
    if any(unicodedata.category(character) == "Cc" for character in normalized):
        raise PydanticCustomError(
            "password_control_character", "String should contain no control characters such as NUL, tab or a line break")
    if len(normalized) < PASSWORD_MIN_LENGTH:
        raise PydanticCustomError(
            "string_too_short", "String should have at least {min_length} characters once Unicode-normalized (NFKC)",
            {"min_length": PASSWORD_MIN_LENGTH})
    if len(normalized) > PASSWORD_MAX_LENGTH:
        raise PydanticCustomError(
            "string_too_long", "String should have at most {max_length} characters once Unicode-normalized (NFKC)",
            {"max_length": PASSWORD_MAX_LENGTH})
    return normalized


NewPassword = Annotated[
    str,
    Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH,
          description=f"{PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters both as sent and in Unicode "
                      "NFKC form, which is what is hashed, without control characters.",
          # Documents the validator's rule; the validator itself gives the clearer message.
          json_schema_extra={"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"}),
    AfterValidator(_normalize_new_password),
]
ExistingPassword = Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX_LENGTH), AfterValidator(normalize_password)]


class RegisterRequest(RequestBody):
    email: NewEmailAddress
    password: NewPassword


class LoginRequest(RequestBody):
    email: EmailAddress
    password: ExistingPassword


class RefreshRequest(RequestBody):
    refresh_token: str = Field(min_length=1, max_length=256)


class UserCreated(BaseModel):
    id: str
    email: str
    created_at: datetime


class CurrentUser(BaseModel):
    id: str
    email: str
    status: Literal["active", "disabled"]
    created_at: datetime
    roles: list[str]


class TokenPair(BaseModel):
    """OAuth 2.0 token response (RFC 6749 section 5.1)."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="access-token lifetime in seconds")
    refresh_token: str


class FieldError(BaseModel):
    field: str
    message: str


class ProblemDetails(BaseModel):
    """application/problem+json (RFC 9457) with a stable code and, from the app, the request id."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = Field(
        default=None,
        description="The request id, as in the X-Request-ID response header. Problems that gunicorn writes "
                    "before the request reaches the app leave it out, and their responses have no X-Request-ID: "
                    "400 `malformed_request`, 414 `request_line_too_long`, 417 `expectation_failed`, 431 "
                    "`header_fields_too_large` and gunicorn's 501 `unsupported_transfer_encoding`.")
    field: str | None = None
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: Literal["ok"]


class CheckResult(BaseModel):
    ok: bool
    latency_ms: float
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, CheckResult]


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


class QueryParameters(BaseModel):
    """Query strings arrive as text, so numbers are converted; unknown parameters are rejected."""

    model_config = ConfigDict(extra="forbid")


def _decimal_digits_only(value: Any) -> Any:
    """Reject a query number that is not ASCII digits alone, such as " 1", "+5" or "1_000"."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticCustomError("int_parsing", "Input should be a whole number in decimal digits")
    return value


# Page sizes in query strings. The bounds come before the validator, or the JSON Schema would show them as ge and le.
UserPageSize = Annotated[int, Field(ge=1, le=200), BeforeValidator(_decimal_digits_only)]
AuditPageSize = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_decimal_digits_only)]


class ChangePasswordRequest(RequestBody):
    current_password: ExistingPassword
    new_password: NewPassword


class SetPasswordRequest(RequestBody):
    password: NewPassword


class Session(BaseModel):
    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str
    ip: str
    current: bool = Field(False, description="true for the session of the token making the request")


class SessionList(BaseModel):
    sessions: list[Session]


class SessionsEnded(BaseModel):
    sessions_ended: int


class AdminUser(BaseModel):
    id: str
    email: str
    status: Literal["active", "disabled"]
    created_at: datetime
    roles: list[str]


class AdminUserDetail(AdminUser):
    sessions: list[Session]


class UserPage(BaseModel):
    items: list[AdminUser]
    next_cursor: str | None = Field(
        description="the last email of this page: pass it as `cursor` for the next page; null on the last page"
    )


def parse_cursor(value: str) -> str:
    """Return the email of a user-listing cursor in its stored form, or raise ValueError if it is not an email.

    A cursor is the next_cursor of an earlier page, which is the last email of that page.
    """
    try:
        return normalize_email(value)
    except ValueError:
        raise ValueError("invalid cursor: pass the next_cursor of the previous page unchanged, URL-encoded "
                         "(an email can contain + and &)") from None


UserCursor = Annotated[
    str,
    Field(max_length=EMAIL_MAX_LENGTH, json_schema_extra={"format": "email"}),
    AfterValidator(parse_cursor),
]


class UserSearch(QueryParameters):
    query: str | None = Field(
        None, max_length=320,
        description="substring of the email, case-insensitive. Fullwidth and other compatibility characters "
                    "match their plain forms (NFKC), as on login.")
    status: Literal["active", "disabled"] | None = None
    limit: UserPageSize = 50
    cursor: UserCursor | None = Field(
        None, description="the next_cursor of the previous page: lists only users whose email sorts after it")


class Role(BaseModel):
    name: str
    description: str


class RoleList(BaseModel):
    roles: list[Role]


class CreateRoleRequest(RequestBody):
    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$", description="lower-case letters, digits, _ . -")
    description: DisplayText = Field("", max_length=255)


class AuditQuery(QueryParameters):
    limit: AuditPageSize = 100


class AuditEntry(BaseModel):
    id: int
    created_at: datetime
    actor_id: str | None
    action: str
    target_type: str
    target_id: str
    detail: dict[str, Any] = Field(
        description='facts of the action, such as {"role": "admin", "changed": true}. '
                    'A detail too long to store has "truncated": true.')
    client_ip: str


class AuditLog(BaseModel):
    entries: list[AuditEntry]


class BanOut(BaseModel):
    ip: str = Field(description="banned network key: an IPv4 address, or the /64 network of an IPv6 address",
                    examples=["203.0.113.7", "2001:db8:5::/64"])
    cause: Literal["failed_logins", "credential_stuffing", "rate_limit", "manual"]
    reason: str
    created_at: datetime
    expires_at: datetime | None = Field(description="null for a permanent ban")
    offences: int = Field(description="bans of this address within the offence-history window, this one included")
    actor: str = Field(description="id of the administrator for a manual ban; empty for automatic ones")


class BanList(BaseModel):
    bans: list[BanOut]


def _json_number_only(value: Any) -> Any:
    """Reject a JSON string or boolean where a lax field expects a number, and state the bounds of a huge one."""
    if isinstance(value, (str, bool)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    # A float too large for an integer (1e308) would get pydantic's message about parsing
    # an input string, so it gets the message of any value beyond the bounds.
    if isinstance(value, float) and value > MAX_MANUAL_BAN_SECONDS:
        raise PydanticCustomError("less_than_equal", "Input should be less than or equal to {le}",
                                  {"le": MAX_MANUAL_BAN_SECONDS})
    if isinstance(value, float) and value < MIN_MANUAL_BAN_SECONDS:
        raise PydanticCustomError("greater_than_equal", "Input should be greater than or equal to {ge}",
                                  {"ge": MIN_MANUAL_BAN_SECONDS})
    return value


def _ban_address(value: Any) -> Any:
    """Accept an address as log lines show it, with a port or in brackets, and name the forms a wrong one may take."""
    if not isinstance(value, str):
        return value
    # Not stripped: DELETE /v1/admin/bans/{ip} takes no spaces either.
    for candidate in (value, without_port(value)):
        if candidate is None:
            continue
        try:
            return str(ip_address(candidate))
        except ValueError:
            pass
    raise PydanticCustomError(
        "ip_address", "Input should be an IPv4 or IPv6 address, such as 203.0.113.7 or 2001:db8::7 (a port or "
                      "brackets as in [2001:db8::7]:443 are accepted, a prefix length is not)")


class CreateBanRequest(RequestBody):
    # Addresses only: an IPv6 address already names its /64, and a network type would let
    # the schema accept prefix lengths that the view rejects.
    ip: Annotated[IPv4Address | IPv6Address, BeforeValidator(_ban_address)] = Field(
        examples=["203.0.113.7"], description="an IPv4 address, or an IPv6 address whose /64 network is banned"
    )
    reason: DisplayText = Field(min_length=1, max_length=255)
    # Lax: JSON Schema counts 90.0 as an integer, so the API accepts it too, but no
    # string or boolean, which lax mode would read as numbers.
    # The bounds come before the validator, or the JSON Schema would show them as ge and le.
    duration_seconds: Annotated[
        int, Field(ge=MIN_MANUAL_BAN_SECONDS, le=MAX_MANUAL_BAN_SECONDS), BeforeValidator(_json_number_only)
    ] | None = Field(None, strict=False, description="omit or null for a permanent ban")
