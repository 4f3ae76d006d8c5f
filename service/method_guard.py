"""Checks of the request line that run before Flask routes the request.

Unknown methods: the request method is a label of the HTTP metrics, so every distinct
method name a client invents would add series to /metrics. A method outside the
standard set is renamed OTHER (the original stays in the environ for the log), so
routing returns 405 with an Allow header, or 404, and the metrics see a fixed
vocabulary. 405 rather than 501: an invented method is the client's error and must not
count toward 5xx alerts.

Encoded path separators and characters: the WSGI server percent-decodes PATH_INFO, so
/v1%2Fadmin%2Fusers or /v1/%61dmin/users would be routed like /v1/admin/users, past an
edge proxy that allows or denies by path prefix. Such a request is routed by its raw,
still encoded path instead, which matches no API route because none of them accepts
"%" (Flask's static route does, but its folder does not exist, so it returns 404 as
well). The marker ENCODED_SEPARATOR_KEY or ENCODED_CHARACTER_KEY then turns the 404
into 400 encoded_path_separator or encoded_path_character (service.errors). The answer
comes from inside Flask, so the request log and the metrics record it like any other
error. Other escapes, such as %3A for ":" in an address, are decoded as usual.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

# The methods of RFC 9110 and PATCH (RFC 5789).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
OTHER_METHOD = "OTHER"
ORIGINAL_METHOD_KEY = "gatehouse.original_method"
ENCODED_SEPARATOR_KEY = "gatehouse.encoded_path_separator"
ENCODED_CHARACTER_KEY = "gatehouse.encoded_path_character"
# Percent-encoded "/" and "\" in lower case. Some servers and proxies treat a backslash as a separator too.
_ENCODED_SEPARATORS = ("%2f", "%5c")
# Percent-encoded unreserved characters (RFC 3986, section 2.3): letters, digits and "-._~".
# Their encoded and plain forms name the same path, and a canonical client never encodes them.
_ENCODED_UNRESERVED = re.compile(r"%(?:3[0-9]|4[1-9a-f]|5[0-9a]|6[1-9a-f]|7[0-9a]|2d|2e|5f|7e)", re.IGNORECASE)


def has_encoded_separator(path: str) -> bool:
    """Tell whether a raw path contains %2F or %5C, in either case."""
    lowered = path.lower()
    return any(separator in lowered for separator in _ENCODED_SEPARATORS)


def has_encoded_unreserved(path: str) -> bool:
    """Tell whether a raw path percent-encodes a letter, a digit or one of "-._~"."""
    return _ENCODED_UNRESERVED.search(path) is not None


def _route_by_raw_path(environ: dict[str, Any], target: str) -> None:
    """Route a request whose raw path encodes a separator or an unreserved character by that raw path, and mark it."""
    path = target.partition("?")[0]
    if has_encoded_separator(path):
        environ[ENCODED_SEPARATOR_KEY] = True
    elif has_encoded_unreserved(path):
        environ[ENCODED_CHARACTER_KEY] = True
    else:
        return
    environ["PATH_INFO"] = path


class MethodGuard:
    """WSGI middleware: renames methods outside KNOWN_METHODS to OTHER, routes non-canonical escapes by the raw path."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if method not in KNOWN_METHODS:
            environ[ORIGINAL_METHOD_KEY] = method[:32]
            environ["REQUEST_METHOD"] = OTHER_METHOD
        # gunicorn keeps the request target as sent in RAW_URI, and werkzeug's server and test
        # client keep it in RAW_URI and REQUEST_URI. Without either, only the decoded PATH_INFO
        # is left, and an encoded separator looks like a plain one there.
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI", "")
        # Most request targets contain no "%", and then this test is the whole cost of the check.
        if "%" in target:
            _route_by_raw_path(environ, target)
        return self._app(environ, start_response)
