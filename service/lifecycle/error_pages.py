"""gunicorn's own error responses as problem+json documents, like the application's.

gunicorn rejects some requests itself, before they reach the application:

- 400 for a malformed request line or header;
- 414 for a request line longer than limit_request_line;
- 417 for an Expect header other than 100-continue;
- 431 for too many or too large header fields;
- 501 for a transfer coding it does not support;
- 500 when the application fails before it responds.

gunicorn 27 writes these through gunicorn.util.write_error as an HTML page. install()
replaces that function, in the master before it forks, with write_problem, which sends
the same status line as an RFC 9457 document with a stable code. The handler around it
(gunicorn.workers.base.Worker.handle_error) still picks the status and logs the error.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from gunicorn import util

from service.problem_format import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX

# Status -> (code, field at fault). The application's own codes where they mean the same.
_PROBLEMS: dict[int, tuple[str, str | None]] = {
    400: ("malformed_request", None),
    403: ("forbidden_request", None),
    414: ("request_line_too_long", "request_line"),
    417: ("expectation_failed", "Expect"),
    431: ("header_fields_too_large", "headers"),
    500: ("internal_error", None),
    501: ("unsupported_transfer_encoding", "Transfer-Encoding"),
}
# gunicorn's message can quote the request line or a header: enough to see what failed.
MAX_DETAIL_CHARACTERS = 300


def problem_code(status: int) -> str:
    """Return the code of gunicorn's error response with a status."""
    return _PROBLEMS.get(status, ("http_error", None))[0]


def problem_document(status: int, reason: str, message: str) -> dict[str, Any]:
    """Return the problem document for one of gunicorn's own error responses."""
    code, field = _PROBLEMS.get(status, ("http_error", None))
    document: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": reason,
        "status": status,
        "detail": (message or reason)[:MAX_DETAIL_CHARACTERS],
        "code": code,
    }
    if field is not None:
        document["field"] = field
    return document


def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Write a complete error response and ask the client to close, as gunicorn.util.write_error does."""
    # gunicorn 27 passes "Bad Request" with its 501, so the phrase comes from the status.
    try:
        reason = HTTPStatus(status_int).phrase
    except ValueError:
        pass
    # ASCII JSON, so the body is valid in the latin-1 head that HTTP/1.1 requires too.
    body = (json.dumps(problem_document(status_int, reason, mesg)) + "\n").encode("ascii")
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_MEDIA_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


def install() -> None:
    """Make gunicorn write its own error responses with write_problem in this process and its forks."""
    util.write_error = write_problem
