"""Request body size limits, enforced the same way for Content-Length and chunked bodies.

Every body is read before the view runs, up to the limit of its route:
GATEHOUSE_MAX_AUTH_BODY_BYTES under /v1/auth/, GATEHOUSE_MAX_BODY_BYTES elsewhere.
A larger body gets 413, and only a bounded part of the rest is read and discarded,
so a worker keeps at most the limit plus one read step of any body in memory.
"""

from __future__ import annotations

import socket
import time
from functools import partial
from typing import Any

import structlog
from flask import Flask, Response, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from service.config import Settings
from service.errors import PayloadTooLarge

log = structlog.get_logger(__name__)

AUTH_PATH_PREFIX = "/v1/auth/"
# Some responses leave the body unread (a 413, or a 429 before the body was read).
# Then up to this much more of the body is read and discarded, so that the client
# can finish sending and read the response. A client still sending after that is cut
# off: the connection is shut down. Otherwise gunicorn (27.0, gevent worker) would
# read the rest for keep-alive, however long it is.
DRAIN_SECONDS = 1.0
DRAIN_MAX_BYTES = 1024 * 1024
_DRAIN_STEP = 64 * 1024


def body_limit(settings: Settings, path: str) -> int:
    """Return the largest body in bytes accepted on a path."""
    return settings.max_auth_body_bytes if path.startswith(AUTH_PATH_PREFIX) else settings.max_body_bytes


def _has_body() -> bool:
    # Read from the environ: request.content_length and request.headers parse on each access.
    environ = request.environ
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > 0:
        return True
    encoding = environ.get("HTTP_TRANSFER_ENCODING")
    return encoding is not None and "chunked" in encoding.lower()


def _read_body(settings: Settings) -> None:
    if not _has_body():
        # A request with neither Content-Length nor chunked encoding has no body (RFC 9112).
        return

    limit = body_limit(settings, request.path)
    # werkzeug stops reading a chunked body at max_content_length without an error,
    # so a longer body would reach the JSON parser cut short. One byte of headroom
    # makes an oversized body visible: it reads as limit + 1 bytes.
    request.max_content_length = limit + 1
    try:
        # Cached, so parse_body reads the same bytes without touching the stream again.
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        # Content-Length alone was over the limit; nothing was read.
        body = None
    if body is None or len(body) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes, the limit for this route.")

    g.body_complete = True


def _close_unread_body(response: Response) -> Response:
    if not _has_body() or g.get("body_complete"):
        return response

    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        # Runs after gunicorn has written the response.
        response.call_on_close(partial(drain_or_close, request.environ["wsgi.input"], sock,
                                       request_id=g.get("request_id")))
    return response


def drain_or_close(stream: Any, sock: socket.socket, *, request_id: str | None) -> None:
    """Read and discard a bounded part of an unread body; shut the connection down if the body goes on.

    Runs after the request's log context is gone, so the request id is passed in.
    """
    deadline = time.monotonic() + DRAIN_SECONDS
    drained = 0
    previous_timeout = sock.gettimeout()
    try:
        while drained < DRAIN_MAX_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = stream.read(_DRAIN_STEP)
            if not chunk:
                # The body ended: the connection can carry the next request.
                return
            drained += len(chunk)
    except Exception as exc:  # gunicorn's parse errors, timeouts and resets all end the connection
        log.debug("request_body_drain_failed", error=repr(exc), drained_bytes=drained, request_id=request_id)
    finally:
        try:
            sock.settimeout(previous_timeout)
        except OSError:
            pass

    log.info("request_body_abandoned", drained_bytes=drained, request_id=request_id)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def init_app(app: Flask, settings: Settings) -> None:
    """Read every request body up to its route's limit before the view runs."""
    app.before_request(partial(_read_body, settings))
    app.after_request(_close_unread_body)
