"""Request and response bodies; the same models validate requests and generate /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Longer passwords are rejected before hashing, so a huge body cannot buy argon2 time.
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 256
EMAIL_MAX_LENGTH = 320


def normalize_email(value: str) -> str:
    """Validate the syntax and return the address trimmed and lower-cased.

    The whole address is lower-cased, so Alice@Example.com and alice@example.com are
    one account. Deliverability is not checked: that needs DNS and proves nothing.
    """
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None

    return result.normalized.lower()


EmailAddress = Annotated[
    str,
    Field(min_length=3, max_length=EMAIL_MAX_LENGTH, examples=["alice@example.com"]),
    AfterValidator(normalize_email),
]


class RequestBody(BaseModel):
    """Strict input: no type coercion, and unknown fields are rejected with 400."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RegisterRequest(RequestBody):
    email: EmailAddress
    password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)


class LoginRequest(RequestBody):
    email: EmailAddress
    password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)


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
    """application/problem+json (RFC 9457) with a stable code and the request id."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None
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
