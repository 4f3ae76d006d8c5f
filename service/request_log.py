"""One canonical log line per request, with a request id echoed in X-Request-ID."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from flask import Flask, Response, g, request

from service.method_guard import ORIGINAL_METHOD_KEY

log = structlog.get_logger("gatehouse.request")

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is reused only when it is short and plain, so it cannot forge log content.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Successful probe and scrape requests arrive every few seconds; they log at debug level.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


def _start_request() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=g.request_id,
        method=request.environ.get(ORIGINAL_METHOD_KEY, request.method),
        route=request.url_rule.rule if request.url_rule else None,
        client_ip=request.remote_addr,
    )


def _finish_request(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
    duration_ms = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)
    fields = {"status": response.status_code, "duration_ms": duration_ms}
    if g.get("error_code"):
        fields["error_code"] = g.error_code

    if response.status_code >= 500:
        log.error("request_completed", **fields)
    elif response.status_code >= 400:
        log.warning("request_completed", **fields)
    elif request.url_rule is not None and request.url_rule.rule in _QUIET_ROUTES:
        log.debug("request_completed", **fields)
    else:
        log.info("request_completed", **fields)
    return response


def _clear_context(_exc: BaseException | None) -> None:
    structlog.contextvars.clear_contextvars()


def init_app(app: Flask) -> None:
    """Bind request context at the start, log one line at the end."""
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(_clear_context)
