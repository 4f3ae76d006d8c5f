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
(gunicorn.workers.base.Worker.handle_error) still picks the status and logs the error;
Gatehouse's worker hands it the error through without_request_data first.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http.errors import LimitRequestLine, ParseException

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
# The status of the error response that write_problem wrote last in this greenlet, for the
# worker's log line and metrics (gunicorn's handler picks the status and does not return it).
_WRITTEN_STATUS: contextvars.ContextVar[int | None] = contextvars.ContextVar("gatehouse_error_status",
                                                                             default=None)
# Cuts a detail that is longer than expected; without_request_data keeps details short.
MAX_DETAIL_CHARACTERS = 300

# gunicorn's parse errors quote the offending request data with %r after ": ". A request
# line, a header line or a chunk can hold a token or a password.
_QUOTED_DATA = re.compile(r":\s+b?['\"]")
# An HTTP token (RFC 9110): a header name or a method, safe to name in a log line.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_NAMED_ATTRIBUTES = ("hdr", "method", "expect")


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
    _WRITTEN_STATUS.set(status_int)
    # ASCII JSON, so the body is valid in the latin-1 head that HTTP/1.1 requires too.
    body = (json.dumps(problem_document(status_int, reason, mesg)) + "\n").encode("ascii")
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_MEDIA_TYPE}\r\n"
            f"Cache-Control: no-store\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


def take_written_status() -> int | None:
    """Return the status of the error response written since the last call in this greenlet, if any."""
    status = _WRITTEN_STATUS.get()
    _WRITTEN_STATUS.set(None)
    return status


def without_request_data(exc: BaseException) -> BaseException:
    """Return gunicorn's parse error with a message that quotes no request data.

    The copy keeps the error's class, so gunicorn still picks the same status. Its
    message keeps gunicorn's text before the quoted data, and names the header, method
    or expectation when the data starts with an HTTP token followed by more data.
    """
    if not isinstance(exc, ParseException):
        return exc
    if isinstance(exc, LimitRequestLine) and exc.max_size is not None:
        # gunicorn quotes how much it had read when it gave up, often its 8192-byte
        # buffer, as if that were the request line's length.
        return _with_message(exc, f"Request line is longer than {exc.max_size} bytes")

    text = str(exc)
    head = _QUOTED_DATA.split(text, maxsplit=1)[0]
    if head == text:
        return exc

    name = _quoted_name(exc)
    return _with_message(exc, f"{head}: {name!r}" if name else head)


def _with_message(exc: BaseException, message: str) -> BaseException:
    """Return a copy of exc, of a subclass of its class, whose str() is message."""
    redacted_class = _redacted_class(type(exc))
    redacted = redacted_class.__new__(redacted_class)
    redacted.__dict__.update(exc.__dict__)
    redacted.safe_message = message
    return redacted


def _quoted_name(exc: BaseException) -> str | None:
    for attribute in _NAMED_ATTRIBUTES:
        value = getattr(exc, attribute, None)
        if not isinstance(value, str):
            continue
        match = _TOKEN.match(value)
        # Only a token followed by more, such as a header name before its value: a whole
        # value that looks like a token may be a secret sent on a line of its own.
        if match and match.end() < len(value):
            return match.group()
    return None


@functools.cache
def _redacted_class(error_class: type[BaseException]) -> type[BaseException]:
    def message(self: Any) -> str:
        return self.safe_message

    return type(error_class.__name__, (error_class,), {"__str__": message})


def install() -> None:
    """Make gunicorn write its own error responses with write_problem in this process and its forks."""
    util.write_error = write_problem
