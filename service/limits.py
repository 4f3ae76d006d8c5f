"""Rate limits per client address and route: flask-limiter's strategy on Redis, 429 as problem+json.

Every route gets GATEHOUSE_RATE_LIMIT_DEFAULT unless ROUTE_LIMIT_SETTINGS names a
setting of its own, and the probes and /metrics are exempt. Each route counts
separately, in a moving window: in Redis, shared by every worker and replica, except
on routes that require a bearer token and the static documents (JWKS, API description),
which count in each worker's memory. Requests that match no route count in worker
memory too, all of them under one route key.
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
from flask_limiter import Limiter
from limits import RateLimitItem, parse_many
from limits.strategies import MovingWindowRateLimiter, RateLimiter

from service import auth, metrics, redis_store
from service.config import Settings
from service.context import EXTENSION_KEY
from service.errors import RateLimited, problem_response
from service.limit_storage import STORAGE_SCHEME, BoundedMemoryStorage, FailoverStorage
# Re-exported: client_network and UNPARSABLE_CLIENT lived here before IP bans needed them too.
from service.networks import UNPARSABLE_CLIENT, client_network  # noqa: F401


LIMITER_KEY = "gatehouse.limiter"
# Probes and scrapes come from the platform every few seconds and must never be refused.
EXEMPT_ROUTES = frozenset({"/health", "/ready", "/metrics"})
# Documents served from memory. They count in worker memory, so a stalled Redis does not
# hold up the key discovery of the services that verify tokens.
STATIC_ROUTES = frozenset({"/.well-known/jwks.json", "/openapi.json"})
# The route key of every request that matches no route: 404, 405, and 400
# encoded_path_separator or encoded_path_character. One counter per client for all of
# them, and one metric label, so a scanner's invented paths add neither counters nor series.
UNMATCHED_ROUTE = "unmatched"
# Route templates with a limit of their own, mapped to the name of the setting with that limit.
# These routes count in Redis even when they require a bearer token: their limit guards a
# secret (a password, a refresh token) rather than a worker's capacity, so it must hold
# across workers and replicas.
ROUTE_LIMIT_SETTINGS = {
    "/v1/auth/login": "rate_limit_login",
    "/v1/auth/refresh": "rate_limit_refresh",
    "/v1/auth/register": "rate_limit_register",
    # The password change checks the current password, so a stolen access token must not
    # give more guesses than a login from the same address.
    "/v1/users/me/password": "rate_limit_login",
}

HEADER_LIMIT = "X-RateLimit-Limit"
HEADER_REMAINING = "X-RateLimit-Remaining"
HEADER_RESET = "X-RateLimit-Reset"
# The result of a request already counted before Flask saw it (service.warm_path), as
# (allowed, window); the limiter uses it instead of counting the request again.
COUNTED_KEY = "gatehouse.rate_limit_counted"


def seconds_until(timestamp: float) -> int:
    """Return whole seconds from now until a Unix time, at least 1, for Retry-After."""
    return max(1, math.ceil(timestamp - time.time()))


def window_headers(window: tuple[int, int, float]) -> list[tuple[str, str]]:
    """Return the X-RateLimit headers for a window (limit, remaining, reset time)."""
    amount, remaining, reset_time = window
    return [(HEADER_LIMIT, str(amount)), (HEADER_REMAINING, str(remaining)), (HEADER_RESET, str(math.ceil(reset_time)))]


def _client_key() -> str:
    # remote_addr is the client as seen through GATEHOUSE_TRUSTED_PROXY_COUNT proxies
    # (ProxyFix in app.py), so entries a client adds to X-Forwarded-For are ignored.
    return client_network(request.remote_addr)


def _route_key() -> str:
    """Return the current request's route template, or UNMATCHED_ROUTE when it matched none."""
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE


class RouteKind(enum.Enum):
    """The counters a route uses: none, this worker's memory, or Redis."""

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
        route = _route_key()
        if route in EXEMPT_ROUTES:
            kind = RouteKind.EXEMPT
        elif endpoint is None or route in STATIC_ROUTES \
                or (getattr(operation, "bearer", False) and route not in ROUTE_LIMIT_SETTINGS):
            # The response to an unmatched request (endpoint None) or a static document needs
            # no I/O, so a Redis counter would cost more than the response itself.
            kind = RouteKind.WORKER
        else:
            kind = RouteKind.SHARED
        kinds[endpoint] = kind
    return kind


class RouteCounters:
    """Count requests per client and route against the route's limits, through a limits strategy.

    Each of a route's limits counts the request, shortest window first, as
    flask-limiter orders them; the first one that is used up refuses it. The
    X-RateLimit headers describe the shortest window.
    """

    def __init__(self, strategy: RateLimiter, limit_for_route: Callable[[str | None], str]) -> None:
        self._strategy = strategy
        self._limit_for_route = limit_for_route
        self._items: dict[str | None, list[RateLimitItem]] = {}

    def hit(self, route: str | None, endpoint: str, client: str) -> tuple[bool, tuple[int, int, float]]:
        """Count one request; return whether it is allowed and the window (limit, remaining, reset time).

        A refused request reports the window of the limit that refused it.
        """
        items = self._items.get(route)
        if items is None:
            items = self._items[route] = sorted(parse_many(self._limit_for_route(route)))
        for item in items:
            if not self._strategy.hit(item, client, endpoint):
                reset_time, _ = self._strategy.get_window_stats(item, client, endpoint)
                return False, (item.amount, 0, reset_time)
        reset_time, remaining = self._strategy.get_window_stats(items[0], client, endpoint)
        return True, (items[0].amount, max(0, remaining), reset_time)


class RouteLimiter(Limiter):
    """flask-limiter's storage and strategy, with each route's limit applied by RouteCounters.

    flask-limiter builds the Redis storage and the moving-window strategy from its
    configuration. Its own check resolves, parses and filters every limit on each
    request, which cost a refresh more CPU than its Redis round trip. This subclass
    decides from the route instead, once per endpoint: probes pass unchecked, routes
    that require a bearer token, the STATIC_ROUTES and requests that match no route count
    in this worker's memory, and every other route, and every route of ROUTE_LIMIT_SETTINGS,
    counts in Redis through flask-limiter's strategy. Unmatched requests (404, 405, 400 encoded_path_*) share one
    counter per client, UNMATCHED_ROUTE, against the default limit. Their 429s count
    toward a ban like any other.

    Bearer routes count in memory so that a warm authenticated request makes no
    Redis call. Their limit guards the worker's capacity, not a secret, and an
    invalid token costs one signature check.
    NOTE: with W workers and R replicas, a bearer route, a static route or the unmatched
    requests of a client get up to W x R times the limit.
    """

    def __init__(self, *args: Any, limit_for_route: Callable[[str | None], str], **kwargs: Any) -> None:
        self._limit_for_route = limit_for_route
        self._route_kinds: dict[str | None, RouteKind] = {}
        self._worker_counters = RouteCounters(MovingWindowRateLimiter(BoundedMemoryStorage()), limit_for_route)
        self._shared_counters: RouteCounters | None = None
        super().__init__(*args, **kwargs)

    def init_app(self, app: Flask) -> None:
        super().init_app(app)
        self._shared_counters = RouteCounters(self.limiter, self._limit_for_route)
        # flask-limiter's after-request hook makes conditional deductions and writes the
        # headers, and its teardown resets the context of its own check, which never
        # runs here (add_headers below writes the headers). Both would cost every
        # request, so they are removed.
        after = app.after_request_funcs.get(None, [])
        teardown = app.teardown_request_funcs.get(None, [])
        kept_after = [f for f in after if not (isinstance(f, functools.partial) and self in f.args)]
        kept_teardown = [f for f in teardown if getattr(f, "__self__", None) is not self]
        assert (len(after) - len(kept_after), len(teardown) - len(kept_teardown)) == (1, 1), \
            "flask-limiter's request hooks changed; review RouteLimiter.init_app"
        app.after_request_funcs[None] = kept_after
        app.teardown_request_funcs[None] = kept_teardown

    def limit(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("route limits come from ROUTE_LIMIT_SETTINGS in service.limits, not from decorators")

    shared_limit = limit

    def hit_in_worker(self, route: str, endpoint: str, client_address: str) -> tuple[bool, tuple[int, int, float]]:
        """Count a request to a bearer route in this worker's memory, as the request hook would."""
        return self._worker_counters.hit(route, endpoint, client_network(client_address))

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        kind = _route_kind(current_app, self._route_kinds)
        if kind is RouteKind.EXEMPT:
            return
        counted = request.environ.get(COUNTED_KEY)
        if counted is not None:
            allowed, window = counted
        else:
            counters = self._worker_counters if kind is RouteKind.WORKER else self._shared_counters
            assert counters is not None, "init_app has not run"
            allowed, window = counters.hit(_route_key(), request.endpoint or UNMATCHED_ROUTE, _client_key())
        g.rate_limit_window = window
        if not allowed:
            retry_after = seconds_until(window[2])
            raise RateLimited(f"Too many requests from this address; retry after {retry_after} s.",
                              retry_after=retry_after, limit="client_ip")


def init_app(app: Flask, settings: Settings) -> Limiter:
    """Attach the rate limits, the rate-limit headers and the 429 handler."""

    def limit_for_route(route: str | None) -> str:
        return getattr(settings, ROUTE_LIMIT_SETTINGS.get(route or "", "rate_limit_default"))

    # Every route counts separately, before the view runs, against the limit that limit_for_route returns for it.
    shared = RouteLimiter(
        _client_key,
        app=app,
        limit_for_route=limit_for_route,
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
        # add_headers below writes the headers from the window RouteCounters returned.
        headers_enabled=False,
    )
    # flask-limiter logs each breach at info as free text; the rate_limited event below replaces it.
    logging.getLogger("flask-limiter").setLevel(logging.WARNING)

    def add_headers(response: Response) -> Response:
        window = g.get("rate_limit_window")
        if window is None:
            return response

        for name, value in window_headers(window):
            response.headers[name] = value
        return response

    app.after_request(add_headers)
    app.register_error_handler(RateLimited, handle_rate_limited)
    app.extensions[LIMITER_KEY] = shared
    return shared


def handle_rate_limited(problem: RateLimited) -> Response:
    """Count a 429, count it toward a ban, then render it.

    The request's request_completed line names the limit: one line per 429, so a flood
    of refused requests does not write twice as many lines as it sends.
    """
    metrics.RATE_LIMIT_HITS.labels(route=_route_key(), limit=problem.limit).inc()
    structlog.contextvars.bind_contextvars(rate_limit=problem.limit, retry_after=problem.retry_after)
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
