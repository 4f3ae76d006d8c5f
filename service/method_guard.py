"""Checks of the request line that run before Flask routes the request.

Unknown methods: the request method is a label of the HTTP metrics, so every distinct
method name a client invents would add series to /metrics. A method outside the
standard set is renamed OTHER (the original stays in the environ for the log), so
routing returns 405 with an Allow header, or 404, and the metrics see a fixed
vocabulary. 405 rather than 501: an invented method is the client's error and must not
count toward 5xx alerts.

Encoded path separators: the WSGI server percent-decodes PATH_INFO, so
/v1%2Fadmin%2Fusers would be routed like /v1/admin/users, past an edge proxy that
allows or denies by path prefix. Such a request is routed by its raw, still encoded
path instead, which matches no API route because none of them accepts "%" (Flask's
static route does, but its folder does not exist, so it returns 404 as well). The
marker ENCODED_SEPARATOR_KEY then turns the 404 into 400 encoded_path_separator
(service.errors). The answer comes from inside Flask, so the request log and the
metrics record it like any other error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# The methods of RFC 9110 and PATCH (RFC 5789).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
OTHER_METHOD = "OTHER"
ORIGINAL_METHOD_KEY = "gatehouse.original_method"
ENCODED_SEPARATOR_KEY = "gatehouse.encoded_path_separator"
# Percent-encoded "/" and "\" in lower case. Some servers and proxies treat a backslash as a separator too.
_ENCODED_SEPARATORS = ("%2f", "%5c")


def has_encoded_separator(path: str) -> bool:
    """Tell whether a raw path contains %2F or %5C, in either case."""
    lowered = path.lower()
    return any(separator in lowered for separator in _ENCODED_SEPARATORS)


def _route_by_raw_path(environ: dict[str, Any], target: str) -> None:
    """Route a request whose raw path contains an encoded separator by that raw path, and mark it."""
    path = target.partition("?")[0]
    if has_encoded_separator(path):
        environ[ENCODED_SEPARATOR_KEY] = True
        environ["PATH_INFO"] = path


class MethodGuard:
    """WSGI middleware: renames methods outside KNOWN_METHODS to OTHER, routes encoded separators by the raw path."""

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
