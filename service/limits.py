"""Rate limits per client address and route: flask-limiter on Redis, 429 as problem+json.

Every route gets GATEHOUSE_RATE_LIMIT_DEFAULT unless ROUTE_LIMIT_SETTINGS names a
setting of its own, and the probes and /metrics are exempt. Each route counts
separately, in a moving window: in Redis, shared by every worker and replica, except
on routes that require a bearer token, which count in each worker's memory.
limit_storage describes what happens while Redis fails.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time

import structlog
from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit

from service import auth, metrics, redis_store
from service.config import Settings
from service.context import EXTENSION_KEY
from service.errors import RateLimited, problem_response
from service.limit_storage import MEMORY_STORAGE_SCHEME, STORAGE_SCHEME, FailoverStorage

log = structlog.get_logger(__name__)

LIMITER_KEY = "gatehouse.limiter"
# Probes and scrapes come from the platform every few seconds and must never be refused.
EXEMPT_ROUTES = frozenset({"/health", "/ready", "/metrics"})
# Route templates with a limit of their own, mapped to the name of the setting with that limit.
ROUTE_LIMIT_SETTINGS = {
    "/v1/auth/login": "rate_limit_login",
    "/v1/auth/refresh": "rate_limit_refresh",
    "/v1/auth/register": "rate_limit_register",
}
# Key for a client address that is not an IP address, such as a value a
# misconfigured proxy copied from X-Forwarded-For. One shared key means such
# values cannot create unlimited counters.
UNPARSABLE_CLIENT = "unparsable"

HEADER_LIMIT = "X-RateLimit-Limit"
HEADER_REMAINING = "X-RateLimit-Remaining"
HEADER_RESET = "X-RateLimit-Reset"


def client_network(address: str | None) -> str:
    """Return the rate-limit key of a client address: an IPv4 address, or the /64 network of an IPv6 one.

    A single IPv6 host usually controls a whole /64, so counting per address would
    let it pick a new key for every request.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return UNPARSABLE_CLIENT

    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip.packed, 64), strict=False))

    return str(ip)


def seconds_until(timestamp: float) -> int:
    """Return whole seconds from now until a Unix time, at least 1, for Retry-After."""
    return max(1, math.ceil(timestamp - time.time()))


def _client_key() -> str:
    # remote_addr is the client as seen through GATEHOUSE_TRUSTED_PROXY_COUNT proxies
    # (ProxyFix in app.py), so entries a client adds to X-Forwarded-For are ignored.
    return client_network(request.remote_addr)


def _route() -> str | None:
    return request.url_rule.rule if request.url_rule is not None else None


def _is_exempt() -> bool:
    return _route() in EXEMPT_ROUTES


def _requires_bearer_token() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    operation = getattr(view, "openapi_operation", None)
    return bool(getattr(operation, "bearer", False))


def init_app(app: Flask, settings: Settings) -> Limiter:
    """Attach flask-limiter with the configured limits, the rate-limit headers and the 429 handler."""

    def route_limit() -> str:
        return getattr(settings, ROUTE_LIMIT_SETTINGS.get(_route() or "", "rate_limit_default"))

    # Both limiters check one default limit whose value depends on the route. Default
    # limits are counted per route, and flask-limiter checks them before the view runs.
    shared = Limiter(
        _client_key,
        app=app,
        default_limits=[route_limit],
        strategy="moving-window",
        storage_uri=f"{STORAGE_SCHEME}://",
        storage_options={
            "connection_pool": redis_store.create_pool(
                settings,
                max_connections=settings.redis_pool_size,
                timeout=settings.redis_pool_wait_seconds,
                socket_timeout=settings.redis_socket_timeout,
            ),
            "retry_seconds": settings.rate_limit_retry_seconds,
        },
        # add_headers below writes the headers, because flask-limiter's Retry-After
        # truncates to whole seconds and is 0 just before the window frees a request.
        headers_enabled=False,
    )
    # Routes that require an access token count in this worker's memory, so a warm
    # authenticated request makes no Redis call. Their limit guards the worker's
    # capacity, not a secret, and an invalid token costs one signature check.
    # NOTE: with W workers and R replicas, such a route allows up to W x R times its limit.
    local = Limiter(
        _client_key,
        app=app,
        default_limits=[route_limit],
        strategy="moving-window",
        storage_uri=f"{MEMORY_STORAGE_SCHEME}://",
        headers_enabled=False,
    )
    shared.request_filter(lambda: _is_exempt() or _requires_bearer_token())
    local.request_filter(lambda: _is_exempt() or not _requires_bearer_token())
    # flask-limiter logs each breach at info as free text; the rate_limited event below replaces it.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)

    def current_limit() -> RequestLimit | None:
        return shared.current_limit or local.current_limit

    def add_headers(response: Response) -> Response:
        current = current_limit()
        if current is None:
            return response

        reset_time, remaining = current.window
        response.headers[HEADER_LIMIT] = str(current.limit.amount)
        response.headers[HEADER_REMAINING] = str(remaining)
        response.headers[HEADER_RESET] = str(math.ceil(reset_time))
        return response

    def handle_exceeded(_exc: RateLimitExceeded) -> Response:
        current = current_limit()
        retry_after = seconds_until(current.window.reset_time) if current is not None else 1
        return handle_rate_limited(RateLimited(
            f"Too many requests from this address; retry after {retry_after} s.",
            retry_after=retry_after, limit="client_ip",
        ))

    app.after_request(add_headers)
    app.register_error_handler(RateLimitExceeded, handle_exceeded)
    app.register_error_handler(RateLimited, handle_rate_limited)
    app.extensions[LIMITER_KEY] = shared
    return shared


def handle_rate_limited(problem: RateLimited) -> Response:
    """Log and count a 429, count it toward a ban, then render it.

    The log context already contains the route and client ip.
    """
    metrics.RATE_LIMIT_HITS.labels(route=_route() or "unmatched", limit=problem.limit).inc()
    log.warning("rate_limited", limit=problem.limit, retry_after=problem.retry_after)
    svc = current_app.extensions.get(EXTENSION_KEY)
    # While the limits run from memory, Redis is down and recording would only fail
    # with a warning per 429. The outage itself is logged once.
    if svc is not None and not limit_storage(current_app).using_memory:
        auth.record_rate_limit_hit(svc, request.remote_addr or "")
    return problem_response(problem)


def limit_storage(app: Flask) -> FailoverStorage:
    """Return the app's rate-limit storage, which the login guard shares."""
    storage = app.extensions[LIMITER_KEY].storage
    assert isinstance(storage, FailoverStorage)
    return storage


def close(app: Flask) -> None:
    """Close the rate-limit Redis pool of this process, logging an error instead of raising it."""
    limiter = app.extensions.get(LIMITER_KEY)
    if limiter is not None and isinstance(limiter.storage, FailoverStorage):
        limiter.storage.close()
