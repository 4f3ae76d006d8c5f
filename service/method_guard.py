"""Fold unknown HTTP methods into one name before Flask sees them.

The request method is a label of the HTTP metrics, so every distinct method name a
client invents would add series to /metrics. A method outside the standard set is
renamed OTHER (the original stays in the environ for the log), so routing answers 405
with an Allow header, or 404, and the metrics see a fixed vocabulary. 405 rather than
501: an invented method is the client's error and must not count toward 5xx alerts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# The methods of RFC 9110 and PATCH (RFC 5789).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
OTHER_METHOD = "OTHER"
ORIGINAL_METHOD_KEY = "gatehouse.original_method"


class MethodGuard:
    """WSGI middleware renaming methods outside KNOWN_METHODS to OTHER."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if method not in KNOWN_METHODS:
            environ[ORIGINAL_METHOD_KEY] = method[:32]
            environ["REQUEST_METHOD"] = OTHER_METHOD
        return self._app(environ, start_response)
