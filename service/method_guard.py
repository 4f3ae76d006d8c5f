"""Reject unknown HTTP methods before Flask sees them.

The request method is a label of the HTTP metrics, so every distinct method name a
client invents would add series to /metrics. Methods outside the standard set end
here with 501 and are neither routed nor counted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from service.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MethodGuard:
    """WSGI middleware answering 501 problem+json for methods outside KNOWN_METHODS."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in KNOWN_METHODS:
            return self._app(environ, start_response)

        request_id = uuid.uuid4().hex
        body = json.dumps({
            "type": PROBLEM_TYPE_PREFIX + "method_not_implemented",
            "title": "Method not implemented",
            "status": 501,
            "detail": f"Use one of {', '.join(sorted(KNOWN_METHODS))}.",
            "code": "method_not_implemented",
            "request_id": request_id,
        }).encode() + b"\n"
        start_response("501 Not Implemented", [
            ("Content-Type", PROBLEM_MEDIA_TYPE),
            ("Content-Length", str(len(body))),
            ("X-Request-ID", request_id),
        ])
        return [body]
