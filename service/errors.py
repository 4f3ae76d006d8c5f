"""Domain exceptions and the one handler that maps them to problem+json (RFC 9457)."""

from __future__ import annotations

import math
import time
from typing import Any

import pymysql
import redis
import structlog
from flask import Flask, Response, current_app, g, json, request
from werkzeug.exceptions import HTTPException

from service.method_guard import ENCODED_CHARACTER_KEY, ENCODED_SEPARATOR_KEY
from service.problem_format import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX

log = structlog.get_logger(__name__)


class Problem(Exception):
    """Base of every error a client may see; subclasses fix status, code and title."""

    status = 500
    code = "internal_error"
    title = "Internal server error"

    def __init__(self, detail: str | None = None, *, field: str | None = None,
                 errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.field = field
        self.errors = errors

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(Problem):
    """A request that breaks its declaration. With a field, `errors` lists at least that field."""

    status, code, title = 400, "invalid_request", "Invalid request"

    def __init__(self, detail: str | None = None, *, field: str | None = None,
                 errors: list[dict[str, str]] | None = None) -> None:
        if errors is None and field is not None and detail:
            errors = [{"field": field, "message": detail.removeprefix(f"{field}: ")}]
        super().__init__(detail, field=field, errors=errors)


class InvalidJson(Problem):
    """The request body is empty or not JSON. The problem's field is always "body", because no field was parsed."""

    status, code, title = 400, "invalid_json", "Request body is not valid JSON"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, field="body")


class EncodedPathSeparator(Problem):
    """The raw request path contains %2F or %5C, which the WSGI server would decode into a separator."""

    status, code, title = 400, "encoded_path_separator", "Encoded slash or backslash in the path"


class MissingHost(Problem):
    """An HTTP/1.1 request without a Host header, which RFC 9112 section 3.2 requires a server to refuse."""

    status, code, title = 400, "missing_host", "Missing Host header"


class EncodedPathCharacter(Problem):
    """The raw request path percent-encodes a letter, digit or one of "-._~", which must be sent as itself."""

    status, code, title = 400, "encoded_path_character", "Encoded letter, digit or unreserved mark in the path"


class UnsupportedMediaType(Problem):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UnsupportedContentEncoding(UnsupportedMediaType):
    """A body sent with a content coding, such as gzip. RFC 7694 responds with 415 and the accepted codings."""

    def __init__(self, coding: str) -> None:
        super().__init__(f"Content-Encoding: {coding[:40]!r} is not accepted; send the body without a content coding.",
                         field="Content-Encoding")

    def headers(self) -> dict[str, str]:
        return {"Accept-Encoding": "identity"}


class PayloadTooLarge(Problem):
    status, code, title = 413, "payload_too_large", "Request body too large"


class InvalidBodyEncoding(Problem):
    """The chunked framing of the body is malformed, or the connection ended inside the body."""

    status, code, title = 400, "invalid_body_encoding", "Invalid request body encoding"


class BodyTimedOut(Problem):
    """The body did not arrive in full within GATEHOUSE_BODY_READ_TIMEOUT_SECONDS."""

    status, code, title = 408, "body_timeout", "Request body timed out"


class UnsupportedTransferEncoding(Problem):
    """Transfer-Encoding names a coding other than chunked, which the service does not decode."""

    status, code, title = 501, "unsupported_transfer_encoding", "Unsupported transfer encoding"


class NotFound(Problem):
    status, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(Problem):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class EmailTaken(Problem):
    status, code, title = 409, "email_taken", "Email already registered"


class MissingRole(Problem):
    status, code, title = 403, "missing_role", "Role required"


class IpBanned(Problem):
    """The client address is banned. Retry-After gives the seconds until a temporary ban ends."""

    status, code, title = 403, "ip_banned", "Client address banned"

    def __init__(self, retry_after: int | None) -> None:
        detail = ("This address is banned for abuse." if retry_after is None
                  else f"This address is banned for abuse for another {retry_after} seconds.")
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class Conflict(Problem):
    status, code, title = 409, "conflict", "Conflict with the current state"


class InvalidCurrentPassword(Problem):
    status, code, title = 403, "invalid_current_password", "Current password is wrong"


class PasswordUnchanged(Problem):
    """The new password of a password change is the current password."""

    status, code, title = 422, "password_unchanged", "New password is the current password"


class PasswordBlocklisted(Problem):
    """A new password is a commonly used one, a listed one, or the account's email or the service's name."""

    status, code, title = 422, "password_blocklisted", "Password is too easy to guess"


class AccountDisabled(Problem):
    status, code, title = 403, "account_disabled", "Account disabled"


class Unauthorized(Problem):
    """A 401 with the RFC 6750 error in WWW-Authenticate."""

    status = 401
    bearer_error: str | None = "invalid_token"

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="gatehouse"'
        if self.bearer_error:
            challenge += f', error="{self.bearer_error}", error_description="{self.title}"'
        return {"WWW-Authenticate": challenge}


class InvalidCredentials(Unauthorized):
    code, title = "invalid_credentials", "Invalid email or password"
    bearer_error = None


class MissingToken(Unauthorized):
    code, title = "missing_token", "Bearer token required"
    # RFC 6750 section 3.1: no error code when the request carries no credentials.
    bearer_error = None


class InvalidToken(Unauthorized):
    code, title = "invalid_token", "Access token invalid or expired"


class SessionRevoked(Unauthorized):
    code, title = "session_revoked", "Session has ended; log in again"


class InvalidRefreshToken(Unauthorized):
    code, title = "invalid_refresh_token", "Refresh token invalid, expired or revoked"
    bearer_error = None


class RateLimited(Problem):
    """A 429 with Retry-After. `limit` names the control that rejected the request, as a metric label.

    The names are a fixed set: client_ip (the per-route limits), account and login_delay (the login guard).
    """

    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, limit: str) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.limit = limit

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DependencyUnavailable(Problem):
    """A 503 with Retry-After: a backing service failed or its pool had no free connection."""

    status, code, title = 503, "service_unavailable", "Service temporarily unavailable"
    retry_after = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DatabaseUnavailable(DependencyUnavailable):
    code = "database_unavailable"


class RedisUnavailable(DependencyUnavailable):
    code = "redis_unavailable"


_HTTP_EXCEPTIONS: dict[int, type[Problem]] = {
    400: InvalidRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType,
}


def problem_response(problem: Problem) -> Response:
    """Render a Problem as an application/problem+json response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + problem.code,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        "request_id": g.get("request_id"),
    }
    if problem.field is not None:
        body["field"] = problem.field
    if problem.errors:
        body["errors"] = problem.errors
    response = Response(json.dumps(body) + "\n", status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    response.headers.update(problem.headers())
    # A problem describes one request at one moment: a cache that kept a 404 or 429 would
    # send it for later requests that would have succeeded.
    response.headers["Cache-Control"] = "no-store"
    g.error_code = problem.code
    return response


def _handle_problem(problem: Problem) -> Response:
    return problem_response(problem)


def _handle_http_exception(exc: HTTPException) -> Response:
    problem_class = _HTTP_EXCEPTIONS.get(exc.code or 500)
    if exc.code == 404 and ENCODED_SEPARATOR_KEY in request.environ:
        # MethodGuard routed the request by its raw path, which matches no route.
        problem: Problem = EncodedPathSeparator(
            "The path contains an encoded slash or backslash (%2F or %5C), which no route accepts. "
            "Send path separators unencoded.", field="path")
    elif exc.code == 404 and ENCODED_CHARACTER_KEY in request.environ:
        problem = EncodedPathCharacter(
            "The path percent-encodes a letter, digit or one of - . _ ~, which no route accepts. "
            "Send these characters as themselves.", field="path")
    elif problem_class is None:
        problem = Problem(exc.description)
        problem.status, problem.code, problem.title = exc.code or 500, "http_error", exc.name
    else:
        problem = problem_class()
    response = problem_response(problem)
    if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        # Sorted: werkzeug collects the methods in a set, whose order changes between processes.
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
    return response


# During an outage every request fails alike, and each one's request_completed line has
# its 503, so a worker logs the cause at most once per this many seconds per dependency.
DEPENDENCY_LOG_INTERVAL_SECONDS = 1.0
_FAILURE_LOG_KEY = "gatehouse.dependency_failure_log"


class DependencyFailureLog:
    """The dependency_failed lines of one app: the cause at most once per interval per dependency."""

    def __init__(self) -> None:
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def failed(self, dependency: str, exc: Exception) -> None:
        """Log dependency_failed with the cause and the failures left unlogged since the last line."""
        now = time.monotonic()
        if now - self._logged_at.get(dependency, -math.inf) < DEPENDENCY_LOG_INTERVAL_SECONDS:
            self._unlogged[dependency] = self._unlogged.get(dependency, 0) + 1
            return
        self._logged_at[dependency] = now
        log.warning("dependency_failed", dependency=dependency, error=_describe_failure(exc),
                    failures_unlogged=self._unlogged.pop(dependency, 0))


# PyMySQL raises InterfaceError(0, '') for a statement on a connection that it has
# already found closed, which gives an operator no cause.
_EMPTY_INTERFACE_ERROR = "the connection was already closed, as after the server went away or restarted"


def _describe_failure(exc: Exception) -> str:
    """Return the exception for the log: its repr, with a cause where the library gives none."""
    text = repr(exc)[:300]
    if type(exc).__name__ == "InterfaceError" and exc.args in ((0, ""), (0,)):
        return f"{text}: {_EMPTY_INTERFACE_ERROR}"
    return text


def _handle_database_failure(exc: Exception) -> Response:
    # Dependency failure policy for MySQL: refuse with 503 and Retry-After.
    current_app.extensions[_FAILURE_LOG_KEY].failed("mysql", exc)
    return problem_response(DatabaseUnavailable())


def _handle_redis_failure(exc: Exception) -> Response:
    # Dependency failure policy for Redis: refuse with 503 and Retry-After.
    current_app.extensions[_FAILURE_LOG_KEY].failed("redis", exc)
    return problem_response(RedisUnavailable())


def _handle_unexpected(exc: Exception) -> Response:
    log.error("server_error", exc_info=exc)
    return problem_response(Problem("An unexpected error occurred; quote the request id when reporting it."))


def init_app(app: Flask) -> None:
    """Register the error handlers on the app."""
    app.extensions[_FAILURE_LOG_KEY] = DependencyFailureLog()
    app.register_error_handler(Problem, _handle_problem)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(pymysql.err.OperationalError, _handle_database_failure)
    app.register_error_handler(pymysql.err.InterfaceError, _handle_database_failure)
    app.register_error_handler(redis.exceptions.ConnectionError, _handle_redis_failure)
    app.register_error_handler(redis.exceptions.TimeoutError, _handle_redis_failure)
    # A full Redis under noeviction refuses writes with OOM: a dependency failure, not a defect.
    app.register_error_handler(redis.exceptions.OutOfMemoryError, _handle_redis_failure)
    app.register_error_handler(Exception, _handle_unexpected)
