"""Rate limits per client address and route: flask-limiter on Redis, 429 as problem+json.

Every route gets GATEHOUSE_RATE_LIMIT_DEFAULT unless ROUTE_LIMIT_SETTINGS names a
setting of its own, and the probes and /metrics are exempt. Each route counts
separately, in a moving window: in Redis, shared by every worker and replica, except
on routes that require a bearer token, which count in each worker's memory.
limit_storage describes what happens while Redis fails.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import structlog
from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import RateLimitItem
from limits import parse as parse_limit
from limits.strategies import MovingWindowRateLimiter

from service import auth, metrics, redis_store
from service.config import Settings
from service.context import EXTENSION_KEY
from service.errors import RateLimited, problem_response
from service.limit_storage import STORAGE_SCHEME, BoundedMemoryStorage, FailoverStorage
# Re-exported: client_network and UNPARSABLE_CLIENT lived here before IP bans needed them too.
from service.networks import UNPARSABLE_CLIENT, client_network  # noqa: F401

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

HEADER_LIMIT = "X-RateLimit-Limit"
HEADER_REMAINING = "X-RateLimit-Remaining"
HEADER_RESET = "X-RateLimit-Reset"


def seconds_until(timestamp: float) -> int:
    """Return whole seconds from now until a Unix time, at least 1, for Retry-After."""
    return max(1, math.ceil(timestamp - time.time()))


def _client_key() -> str:
    # remote_addr is the client as seen through GATEHOUSE_TRUSTED_PROXY_COUNT proxies
    # (ProxyFix in app.py), so entries a client adds to X-Forwarded-For are ignored.
    return client_network(request.remote_addr)


def _route() -> str | None:
    return request.url_rule.rule if request.url_rule is not None else None


class RouteKind(enum.Enum):
    """The counter a route uses: none, this worker's memory, or Redis."""

    EXEMPT = "exempt"
    WORKER = "worker"
    SHARED = "shared"


def _route_kind(app: Flask, kinds: dict[str | None, RouteKind]) -> RouteKind:
    """Classify the current request's route, caching the result per endpoint."""
    endpoint = request.endpoint
    kind = kinds.get(endpoint)
    if kind is None:
        view = app.view_functions.get(endpoint or "")
        operation = getattr(view, "openapi_operation", None)
        if _route() in EXEMPT_ROUTES:
            kind = RouteKind.EXEMPT
        elif getattr(operation, "bearer", False):
            kind = RouteKind.WORKER
        else:
            kind = RouteKind.SHARED
        # NOTE: unmatched requests (endpoint None: 404, 405) reach flask-limiter, which
        # skips a request without an endpoint, so they are not counted.
        kinds[endpoint] = kind
    return kind


class WorkerLimits:
    """Moving-window counters in this worker's memory, through the limits library.

    Routes that require an access token count here, so a warm authenticated request
    makes no Redis call. Their limit guards the worker's capacity, not a secret, and
    an invalid token costs one signature check.
    NOTE: with W workers and R replicas, such a route allows up to W x R times its limit.
    """

    def __init__(self, limit_for_route: Callable[[str | None], str]) -> None:
        self._limit_for_route = limit_for_route
        self._strategy = MovingWindowRateLimiter(BoundedMemoryStorage())
        self._items: dict[str | None, RateLimitItem] = {}

    def hit(self, route: str | None, endpoint: str, client: str) -> tuple[int, int, float]:
        """Count one request; return (limit, remaining, reset time) or raise RateLimited."""
        item = self._items.get(route)
        if item is None:
            item = self._items[route] = parse_limit(self._limit_for_route(route))
        allowed = self._strategy.hit(item, client, endpoint)
        reset_time, remaining = self._strategy.get_window_stats(item, client, endpoint)
        if not allowed:
            retry_after = seconds_until(reset_time)
            raise RateLimited(f"Too many requests from this address; retry after {retry_after} s.",
                              retry_after=retry_after, limit="client_ip")
        return item.amount, max(0, remaining), reset_time


class RouteLimiter(Limiter):
    """flask-limiter for the limits counted in Redis, checking only the routes it owns.

    flask-limiter evaluates every limiter's limits, request filters and exemptions on
    each request, which cost the warm authenticated request more than its own work.
    This subclass decides first, from the route: probes pass unchecked, bearer routes
    go to WorkerLimits, and only the others reach flask-limiter's check.
    """

    def __init__(self, *args: Any, worker_limits: WorkerLimits, **kwargs: Any) -> None:
        self._worker_limits = worker_limits
        self._route_kinds: dict[str | None, RouteKind] = {}
        super().__init__(*args, **kwargs)

    def init_app(self, app: Flask) -> None:
        super().init_app(app)
        # flask-limiter's after-request hook makes conditional deductions and writes the
        # headers; neither is used here (no deduct_when, headers_enabled=False, add_headers
        # below writes them). Its teardown resets a context that is stored on the request
        # context and ends with it. Both would cost every request, so they are removed.
        after = app.after_request_funcs.get(None, [])
        teardown = app.teardown_request_funcs.get(None, [])
        kept_after = [f for f in after if not (isinstance(f, functools.partial) and self in f.args)]
        kept_teardown = [f for f in teardown if getattr(f, "__self__", None) is not self]
        assert (len(after) - len(kept_after), len(teardown) - len(kept_teardown)) == (1, 1), \
            "flask-limiter's request hooks changed; review RouteLimiter.init_app"
        app.after_request_funcs[None] = kept_after
        app.teardown_request_funcs[None] = kept_teardown

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        kind = _route_kind(current_app, self._route_kinds)
        if kind is RouteKind.SHARED:
            super()._check_request_limit(callable_name, in_middleware)
        elif kind is RouteKind.WORKER:
            g.rate_limit_window = self._worker_limits.hit(_route(), request.endpoint or "", _client_key())


def init_app(app: Flask, settings: Settings) -> Limiter:
    """Attach the rate limits, the rate-limit headers and the 429 handler."""

    def limit_for_route(route: str | None) -> str:
        return getattr(settings, ROUTE_LIMIT_SETTINGS.get(route or "", "rate_limit_default"))

    # One default limit whose value depends on the route. Default limits are counted
    # per route, and flask-limiter checks them before the view runs.
    shared = RouteLimiter(
        _client_key,
        app=app,
        default_limits=[lambda: limit_for_route(_route())],
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
        worker_limits=WorkerLimits(limit_for_route),
    )
    # flask-limiter logs each breach at info as free text; the rate_limited event below replaces it.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)

    def add_headers(response: Response) -> Response:
        window = g.get("rate_limit_window")
        if window is None:
            current = shared.current_limit
            if current is None:
                return response
            reset_time, remaining = current.window
            window = (current.limit.amount, remaining, reset_time)

        amount, remaining, reset_time = window
        response.headers[HEADER_LIMIT] = str(amount)
        response.headers[HEADER_REMAINING] = str(remaining)
        response.headers[HEADER_RESET] = str(math.ceil(reset_time))
        return response

    def handle_exceeded(_exc: RateLimitExceeded) -> Response:
        current = shared.current_limit
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
