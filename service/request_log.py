"""One canonical log line per request, with a request id echoed in X-Request-ID."""

from __future__ import annotations

import random
import re
import time

import structlog
from flask import Flask, Request, Response, g, request

from service.method_guard import ORIGINAL_METHOD_KEY

log = structlog.get_logger("gatehouse.request")

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is reused only when it is short and plain, so it cannot forge log content.
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Successful probe and scrape requests arrive every few seconds; they log at debug level.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


def request_id_for(environ: dict) -> str:
    """Return the client's X-Request-ID when it is short and plain, else a new random id."""
    incoming = environ.get("HTTP_X_REQUEST_ID")
    if incoming and SAFE_REQUEST_ID.match(incoming):
        return incoming
    # Unique, not secret: random's generator avoids a system call per request, and
    # Python reseeds it in each forked worker.
    return f"{random.getrandbits(128):032x}"


def echo_request_id(req: Request, response: Response) -> None:
    """Set X-Request-ID on the response of a request that skipped the request hooks."""
    response.headers[REQUEST_ID_HEADER] = request_id_for(req.environ)


def mark_planned_rejection() -> None:
    """Log this request's completion at info level whatever its status.

    Use it for responses that reject a request on purpose, such as a stopping worker's 503
    from /ready. Every probe gets one during a rollout's drain, and no alert should count them.
    """
    g.planned_rejection = True


def _start_request() -> None:
    req = request._get_current_object()  # type: ignore[attr-defined]
    environ = req.environ
    request_id = request_id_for(environ)
    context = g._get_current_object()  # type: ignore[attr-defined]
    context.request_id = request_id
    context.started = time.perf_counter()
    rule = req.url_rule
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request_id,
        method=environ.get(ORIGINAL_METHOD_KEY) or environ["REQUEST_METHOD"],
        route=rule.rule if rule is not None else None,
        client_ip=environ.get("REMOTE_ADDR"),
    )


def _finish_request(response: Response) -> Response:
    context = g._get_current_object()  # type: ignore[attr-defined]
    request_id = getattr(context, "request_id", "")
    response.headers[REQUEST_ID_HEADER] = request_id
    started = getattr(context, "started", None)
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else 0.0
    status = response.status_code
    error_code = getattr(context, "error_code", None)
    if error_code:
        fields = {"status": status, "duration_ms": duration_ms, "error_code": error_code}
    else:
        fields = {"status": status, "duration_ms": duration_ms}

    if getattr(context, "planned_rejection", False):
        log.info("request_completed", **fields)
    # A 501 rejects a transfer coding that the client chose, so it is the client's error.
    elif status >= 500 and status != 501:
        log.error("request_completed", **fields)
    elif status >= 400:
        log.warning("request_completed", **fields)
    elif getattr(request.url_rule, "rule", None) in _QUIET_ROUTES:
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
