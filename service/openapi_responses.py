"""The problems and headers that the request pipeline adds to each operation of /openapi.json.

A route's operation(...) declaration names its own responses and errors, and the layers
around the view send more. gunicorn rejects requests that break HTTP. The ban check and
the rate limit run before the view. A body sent to any route is read within its size
limit and deadline. The declared body, query, token, roles and dependencies bring
problems of their own. Each rule here tests the same fact as the code that sends the
problem (service.ban_guard.is_exempt, service.limits.EXEMPT_ROUTES, the declaration's
fields), so a new route is described without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service import ban_guard, errors, limits, request_log
from service.api import Operation
from service.lifecycle import error_pages


@dataclass(frozen=True)
class Cause:
    """A problem that the pipeline sends with a status, and the condition that triggers it."""

    status: int
    code: str
    condition: str
    # False for gunicorn's own responses, written before the app reads the request: no X-Request-ID.
    from_app: bool = True
    # False for a response sent before the route's rate limit counts the request: no X-RateLimit headers.
    counted: bool = True


def _problem(problem: type[errors.Problem], condition: str, *, counted: bool = True) -> Cause:
    return Cause(problem.status, problem.code, condition, counted=counted)


def _gunicorn(status: int, condition: str) -> Cause:
    return Cause(status, error_pages.problem_code(status), condition, from_app=False, counted=False)


# gunicorn writes these for any path (service.lifecycle.error_pages). Its 403 needs the
# PROXY protocol, which gunicorn.conf.py leaves off, and its 500 is a defect of the app.
GUNICORN_CAUSES = (
    _gunicorn(400, "gunicorn rejected the request line, a header field or the chunked framing"),
    _gunicorn(414, "the request line is longer than gunicorn accepts"),
    _gunicorn(417, "an Expect header other than 100-continue"),
    _gunicorn(431, "more header fields than gunicorn accepts, or one that is too long"),
    _gunicorn(501, "the request uses a transfer coding that gunicorn does not implement"),
)
# Checks of the request line and Host, for any path. Such a request matches no route, so
# it counts against the limit of unmatched requests, and its X-RateLimit headers describe that.
# NOTE: this holds on /health and /ready too, so a client that sends many requests there
# without Host gets 429, which their operations do not list.
REQUEST_LINE_CAUSES = (
    _problem(errors.MissingHost, "an HTTP/1.1 request has no Host header", counted=False),
    _problem(errors.EncodedPathSeparator, "the path contains %2F or %5C", counted=False),
    _problem(errors.EncodedPathCharacter, "the path percent-encodes a letter, digit or one of -._~", counted=False),
)
# service.payload reads a body sent to any route before the view runs, also to a route that takes none.
BODY_CAUSES = (
    _problem(errors.InvalidBodyEncoding,
             "the chunked framing of the body is malformed, or the connection ended inside the body"),
    _problem(errors.BodyTimedOut, "the body did not arrive in full within the body read timeout"),
    _problem(errors.PayloadTooLarge, "the body is larger than the route's limit"),
    _problem(errors.UnsupportedTransferEncoding, "Transfer-Encoding is other than chunked alone"),
)
IP_BANNED = _problem(errors.IpBanned, "the client address is banned. Retry-After gives the seconds left of a "
                                      "temporary ban", counted=False)
RATE_LIMITED = _problem(errors.RateLimited, "a rate limit rejected the request")
BODY_MODEL_CAUSES = (
    _problem(errors.InvalidJson,
             "the body is empty or not JSON as RFC 8259 defines it (no NaN or Infinity), and `field` is `body`"),
    _problem(errors.InvalidRequest, "a body field is missing, invalid or unknown, and `field` names it"),
    _problem(errors.UnsupportedMediaType,
             "the body is not application/json, or has a Content-Encoding other than identity"),
)
QUERY_CAUSE = _problem(errors.InvalidRequest, "a query parameter is invalid, unknown or repeated, and `field` names it")
NO_QUERY_CAUSE = _problem(errors.InvalidRequest, "the request has a query parameter, which this operation does not "
                                                 "take, and `field` names it")
BEARER_CAUSES = (
    _problem(errors.MissingToken, "the request has no Authorization header"),
    _problem(errors.InvalidToken, "the access token is invalid or expired, or its account is gone or disabled"),
    _problem(errors.SessionRevoked, "the session of the access token has ended"),
)
MISSING_ROLE = _problem(errors.MissingRole, "the account lacks a role that the operation requires")
DEPENDENCY_CAUSES = (
    _problem(errors.DatabaseUnavailable, "MySQL failed, timed out or had no free connection"),
    _problem(errors.RedisUnavailable, "Redis failed, timed out or had no free connection"),
)

ALL_CAUSES = (*GUNICORN_CAUSES, *REQUEST_LINE_CAUSES, *BODY_CAUSES, IP_BANNED, RATE_LIMITED, *BODY_MODEL_CAUSES,
              QUERY_CAUSE, NO_QUERY_CAUSE, *BEARER_CAUSES, MISSING_ROLE, *DEPENDENCY_CAUSES)

# Every 429 is an errors.RateLimited and every 503 an errors.DependencyUnavailable or the
# 503 of /ready, and all of them send Retry-After.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# Every 401 is an errors.Unauthorized, which sends a Bearer challenge.
CHALLENGE_STATUS = 401

_REQUEST_ID_DESCRIPTION = ("The request id: the request's X-Request-ID when it is 1 to 128 characters of A-Z, "
                           "a-z, 0-9 and ._:- and otherwise a new one. The log line of the request has it too.")
_RATE_LIMIT_HEADERS = (
    ("RateLimitLimit", limits.HEADER_LIMIT, {"type": "integer", "minimum": 1},
     "Requests allowed in the window of the route's limit with the shortest window, or of the limit that "
     "rejected the request."),
    ("RateLimitRemaining", limits.HEADER_REMAINING, {"type": "integer", "minimum": 0},
     "Requests left in that window."),
    ("RateLimitReset", limits.HEADER_RESET, {"type": "integer"},
     "Unix time in seconds at which the oldest counted request leaves that window."),
)
_NOT_COUNTED = (" Absent, or describing the limit of requests that match no route, when the response comes before "
                "the route's limit counted the request: 403 `ip_banned`, gunicorn's own responses, 400 "
                "`missing_host` and `encoded_path_*`.")


def _header(schema: dict[str, Any], required: bool, description: str) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


# The header objects of components.headers. A name ending in "IfFromApp", "IfCounted" or
# "IfBanned" is the optional form of a header that only some sources of a status send.
HEADER_COMPONENTS: dict[str, dict[str, Any]] = {
    "RequestId": _header({"type": "string", "pattern": request_log.SAFE_REQUEST_ID.pattern}, True,
                         _REQUEST_ID_DESCRIPTION),
    "RequestIdIfFromApp": _header({"type": "string", "pattern": request_log.SAFE_REQUEST_ID.pattern}, False,
                                  _REQUEST_ID_DESCRIPTION + " Absent from the responses that gunicorn writes itself."),
    **{name: _header(schema, True, description) for name, _, schema, description in _RATE_LIMIT_HEADERS},
    **{name + "IfCounted": _header(schema, False, description + _NOT_COUNTED)
       for name, _, schema, description in _RATE_LIMIT_HEADERS},
    "RetryAfter": _header({"type": "integer", "minimum": 1}, True, "Seconds to wait before retrying."),
    "RetryAfterIfBanned": _header({"type": "integer", "minimum": 1}, False,
                                  "Seconds left of a temporary ban, with `ip_banned` only."),
    "BearerChallenge": _header({"type": "string", "pattern": "^Bearer "}, True,
                               'A Bearer challenge (RFC 6750), with error="invalid_token" when the access token '
                               "was rejected."),
}

# The caching headers that an operation's own responses may declare, by the name that
# Operation.caching uses: the header, its entry's name in components.headers, the entry.
CACHING_HEADERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "no-store": ("Cache-Control", "NoStore", _header(
        {"type": "string", "enum": ["no-store"]}, True,
        "The response is personal or secret, or a problem document: no shared or browser cache may keep it.")),
    "token-no-cache": ("Pragma", "NoCache", _header(
        {"type": "string", "enum": ["no-cache"]}, True,
        "For HTTP/1.0 caches, on token responses as RFC 6749 section 5.1 asks.")),
    "public-max-age": ("Cache-Control", "PublicMaxAge", _header(
        {"type": "string", "pattern": "^public, max-age=[0-9]+$"}, True,
        "Any cache may keep the response for `GATEHOUSE_JWKS_MAX_AGE_SECONDS`; a new signing key is published "
        "at least that long before it signs.")),
}
HEADER_COMPONENTS.update({component: header for _, component, header in CACHING_HEADERS.values()})


def caching_headers(caching: tuple[str, ...]) -> dict[str, Any]:
    """Return the caching headers of an operation's own responses, as references to HEADER_COMPONENTS."""
    return {CACHING_HEADERS[name][0]: {"$ref": f"#/components/headers/{CACHING_HEADERS[name][1]}"}
            for name in caching}


def is_rate_limited(path: str) -> bool:
    """Tell whether requests to a route template count against a rate limit."""
    return path not in limits.EXEMPT_ROUTES


def causes_for(spec: Operation, path: str, method: str) -> list[Cause]:
    """Return the pipeline's problems for the operation of a route template and method."""
    causes = [*GUNICORN_CAUSES, *REQUEST_LINE_CAUSES, *BODY_CAUSES]
    if not ban_guard.is_exempt(path, method):
        causes.append(IP_BANNED)
    if is_rate_limited(path):
        causes.append(RATE_LIMITED)
    if spec.request is not None:
        causes.extend(BODY_MODEL_CAUSES)
    if spec.query is not None:
        causes.append(QUERY_CAUSE)
    elif not spec.ignores_query:
        causes.append(NO_QUERY_CAUSE)
    if spec.bearer:
        causes.extend(BEARER_CAUSES)
    if spec.roles:
        causes.append(MISSING_ROLE)
    if spec.uses_dependencies:
        causes.extend(DEPENDENCY_CAUSES)
    return causes


def response_headers(status: int, causes: list[Cause], *, declared: bool, rate_limited: bool) -> dict[str, Any]:
    """Return the headers of one response of an operation, as references to HEADER_COMPONENTS.

    `causes` are the pipeline's problems with this status. `declared` is true when the
    route sends the status itself, from the view, after its rate limit counted the
    request. A header is required when every source of the status sends it.
    """
    from_app = [cause.from_app for cause in causes] + [True] * declared
    counted = [cause.counted for cause in causes] + [True] * declared
    headers: dict[str, str] = {}
    if any(from_app):
        headers[request_log.REQUEST_ID_HEADER] = "RequestId" if all(from_app) else "RequestIdIfFromApp"
    if rate_limited and any(counted):
        for component, name, _, _ in _RATE_LIMIT_HEADERS:
            headers[name] = component if all(counted) else component + "IfCounted"
    if status in RETRY_AFTER_STATUSES:
        headers["Retry-After"] = "RetryAfter"
    elif IP_BANNED in causes:
        headers["Retry-After"] = "RetryAfterIfBanned"
    if status == CHALLENGE_STATUS:
        headers["WWW-Authenticate"] = "BearerChallenge"
    return {name: {"$ref": f"#/components/headers/{component}"} for name, component in headers.items()}
