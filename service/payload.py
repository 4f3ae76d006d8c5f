"""Request bodies: size limits, a read deadline and the accepted transfer coding.

Every body is read before the view runs, up to the limit of its route:
GATEHOUSE_MAX_AUTH_BODY_BYTES under /v1/auth/, GATEHOUSE_MAX_BODY_BYTES elsewhere.
A larger body gets 413, and only a bounded part of the rest is read and discarded,
so a worker keeps at most the limit plus one read step of any body in memory. This
works the same way for Content-Length and chunked bodies.

The whole body must arrive within GATEHOUSE_BODY_READ_TIMEOUT_SECONDS, or the request
gets 408 body_timeout. gunicorn's keep-alive timeout covers only the wait for the
request head, so without this deadline a client that stops sending inside the body
keeps its connection and greenlet until it disconnects, and delays a graceful shutdown
as long. Malformed chunked framing, or a connection that ends inside the body, gets 400
invalid_body_encoding. After either, where the next request would start on the
connection is unknown, so the connection is closed after the response.

Transfer-Encoding must be chunked alone. gunicorn 27 removes the chunked framing of
"gzip, chunked" and passes the still gzip-coded body on, and nothing here decodes it,
so any other coding gets 501 unsupported_transfer_encoding before the body is read.
gunicorn itself rejects codings it does not know, chunked before another coding, and
Transfer-Encoding together with Content-Length.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import gevent
import structlog
from flask import Flask, Response, g, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from service.config import Settings
from service.errors import BodyTimedOut, InvalidBodyEncoding, PayloadTooLarge, UnsupportedTransferEncoding

log = structlog.get_logger(__name__)

AUTH_PATH_PREFIX = "/v1/auth/"
# Some responses leave the body unread (a 413, a 501, or a 429 before the body was read).
# Then up to this much more of the body is read and discarded, so that the client
# can finish sending and read the response, and the connection is closed. A client
# still sending after that is cut off: the connection is shut down. Otherwise gunicorn
# (27.0, gevent worker) would read the rest for keep-alive, however long it is.
DRAIN_SECONDS = 1.0
DRAIN_MAX_BYTES = 1024 * 1024
_DRAIN_STEP = 64 * 1024
# Set in the environ when the connection must end after the response (see CloseConnection).
CLOSE_CONNECTION_KEY = "gatehouse.close_connection"


def body_limit(settings: Settings, path: str) -> int:
    """Return the largest body in bytes accepted on a path."""
    return settings.max_auth_body_bytes if path.startswith(AUTH_PATH_PREFIX) else settings.max_body_bytes


def has_body(environ: dict[str, Any]) -> bool:
    """Tell whether a request has a body: a Content-Length above 0, or chunked transfer coding.

    Reads the environ, because request.content_length and request.headers parse on each access.
    """
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > 0:
        return True
    encoding = environ.get("HTTP_TRANSFER_ENCODING")
    return encoding is not None and "chunked" in encoding.lower()


def _read_body(settings: Settings) -> None:
    if not has_body(request.environ):
        # A request with neither Content-Length nor chunked encoding has no body (RFC 9112).
        return

    _check_transfer_encoding()
    limit = body_limit(settings, request.path)
    # werkzeug stops reading a chunked body at max_content_length without an error,
    # so a longer body would reach the JSON parser cut short. One byte of headroom
    # makes an oversized body visible: it reads as limit + 1 bytes.
    request.max_content_length = limit + 1
    try:
        body = _read_within(settings.body_read_timeout_seconds)
    except RequestEntityTooLarge:
        # Content-Length alone was over the limit; nothing was read.
        body = None
    if body is None or len(body) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes, the limit for this route.", field="body")

    g.body_complete = True


def _check_transfer_encoding() -> None:
    """Raise UnsupportedTransferEncoding unless Transfer-Encoding is absent or chunked alone."""
    # gunicorn strips the value and joins repeated fields with commas, so "gzip" and
    # "chunked" sent as two fields arrive as "gzip,chunked" and are rejected here too.
    encoding = request.environ.get("HTTP_TRANSFER_ENCODING")
    if encoding is None or encoding.strip(" \t").lower() == "chunked":
        return

    # The body is still read and discarded afterwards (up to DRAIN_SECONDS), so that the
    # client can read the response, but the connection is not used again.
    g.close_connection = True
    raise UnsupportedTransferEncoding(
        "Transfer-Encoding may only be chunked: send the body uncompressed, with Content-Length or chunked.",
        field="Transfer-Encoding")


def _read_within(seconds: float) -> bytes:
    """Read the whole body within `seconds`; raise BodyTimedOut or InvalidBodyEncoding when that fails."""
    deadline = gevent.Timeout(seconds)
    deadline.start()
    try:
        # Cached, so parse_body reads the same bytes without touching the stream again.
        body = request.get_data(cache=True)
    except gevent.Timeout as exc:
        if exc is not deadline:
            raise
        _mark_stream_broken()
        log.warning("request_body_timed_out", timeout_seconds=seconds,
                    content_length=request.environ.get("CONTENT_LENGTH"))
        raise BodyTimedOut(f"The request body did not arrive in full within {seconds:g} seconds.",
                           field="body") from None
    except ParseException as exc:
        # gunicorn's chunked reader: a bad chunk size, extension or terminator, or a bad trailer.
        _mark_stream_broken()
        # Only the error's name: gunicorn's message quotes the bad line, which can be the body itself.
        log.warning("request_body_invalid", error=type(exc).__name__)
        raise InvalidBodyEncoding(
            "The chunked request body is malformed. Each chunk is its size in hexadecimal, CRLF, "
            "the data and CRLF, and the body ends with 0 and two CRLFs.", field="body") from None
    except ClientDisconnected as exc:
        # werkzeug raises this for an OSError from the stream, such as gunicorn's NoMoreData
        # when the connection ends inside a chunked body.
        raise _body_ended_early(type(exc.__context__ or exc).__name__) from None
    finally:
        deadline.cancel()

    # gunicorn returns a Content-Length body cut short by the end of the connection
    # without an error, and werkzeug passes it on as the whole body.
    declared = request.environ.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and len(body) < int(declared):
        raise _body_ended_early(f"{len(body)} of {declared} bytes before the connection ended")

    return body


def _body_ended_early(error: str) -> InvalidBodyEncoding:
    _mark_stream_broken()
    log.warning("request_body_invalid", error=error)
    return InvalidBodyEncoding("The connection ended or failed before the end of the request body.", field="body")


def _mark_stream_broken() -> None:
    # gunicorn's reader stopped somewhere inside the body, so the rest cannot be drained
    # and the connection cannot carry another request.
    g.body_failed = True
    g.close_connection = True


def _close_unread_body(response: Response) -> Response:
    if g.get("close_connection"):
        request.environ[CLOSE_CONNECTION_KEY] = True
    if not has_body(request.environ) or g.get("body_complete") or g.get("body_failed"):
        return response

    # The response carries "Connection: close", and gunicorn closes the connection after the
    # drain below: whether the rest of the body arrives is unknown when the head is sent.
    request.environ[CLOSE_CONNECTION_KEY] = True
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
    # The socket timeout bounds each recv(). One read of _DRAIN_STEP bytes can take many
    # recv() calls from a client that sends a byte at a time, so a gevent timeout bounds
    # the whole drain.
    overall = gevent.Timeout(DRAIN_SECONDS)
    overall.start()
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
    except gevent.Timeout as exc:
        if exc is not overall:
            raise
    except Exception as exc:  # gunicorn's parse errors, timeouts and resets all end the connection
        log.debug("request_body_drain_failed", error=repr(exc), drained_bytes=drained, request_id=request_id)
    finally:
        overall.cancel()
        try:
            sock.settimeout(previous_timeout)
        except OSError:
            pass

    log.info("request_body_abandoned", drained_bytes=drained, request_id=request_id)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class CloseConnection:
    """WSGI middleware: ends the connection after a response whose request set CLOSE_CONNECTION_KEY.

    gunicorn passes a method of its response object as start_response, and that
    object's force_close() makes gunicorn send "Connection: close" and close the socket
    after the response. It is not too late when the app returns, because gunicorn
    writes the response head with the first chunk of the body. Under a server without
    force_close() the marker has no effect.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = self._app(environ, start_response)
        if environ.get(CLOSE_CONNECTION_KEY):
            force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
            if force_close is not None:
                force_close()
        return body


def init_app(app: Flask, settings: Settings) -> None:
    """Read every request body up to its route's limit and within the read timeout before the view runs.

    The app's WSGI stack must also contain CloseConnection, which service.app puts in front of Flask.
    """
    app.before_request(partial(_read_body, settings))
    app.after_request(_close_unread_body)
