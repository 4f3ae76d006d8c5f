"""The warm path: GET /v1/users/me and /health served from worker memory, before Flask's request machinery.

Other backends call /v1/users/me with every request they serve, and when the token,
its session and its account are all in this worker's memory (service.access_state)
the response needs no I/O. Flask's request context, routing, hook dispatch and
response object then cost more than the work itself. Under gunicorn's gevent worker
on the benchmark machine, the floor app of bench/ (one Flask route returning a small
JSON document) used 164 µs of CPU per request, and a plain WSGI app returning the
same document 85 µs.

WarmPath sits between the WSGI middleware and Flask. For a warm request it does what
the request hooks and the view would do, with the same components. These are the ban
check, the bearer check from memory, the rate limit counted in worker memory and the
cached response body. Then come the rate-limit, Cache-Control and X-Request-ID
headers, the HTTP metrics, the in-flight gauge and the request_completed log line. Every other request
goes to Flask unchanged, and so does this one whenever a step would not end in a 200
from memory: a banned address, a token not in the claims cache (unknown, expired or
never seen by this worker), a revoked session, a revoked set not loaded yet, a user
not cached or not active, a query string or a body.

Flask counts the rate limit before it checks the token. The warm path checks the
token first, but it sends a request that is not warm to Flask before counting it, so
each request is counted once either way. A request refused by its rate limit goes to
Flask with its count (limits.COUNTED_KEY), and Flask renders the 429 without
counting it again.

The liveness probe, GET or HEAD /health without a body, gets its fixed response here
too. Flask serves it as a bare endpoint (service.flask_app), without request hooks, so
the response is the same either way: the body and X-Request-ID, and no log line,
metrics or ban check. At log level debug, Flask runs the hooks for /health to log it,
and this layer passes the probe on.

Because the path repeats the request hooks, it checks at start-up that the app has
exactly the hooks it mirrors. Adding, removing or reordering one raises
HookMismatch until this module has been reviewed with it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from flask import Flask, signals

from service import metrics, request_log
from service.bearer import bearer_token_of
from service.context import EXTENSION_KEY, Services
from service.flask_app import lacks_host
from service.http_metrics import RECORDER_KEY
from service.limits import COUNTED_KEY, LIMITER_KEY, window_headers
from service.method_guard import ENCODED_SEPARATOR_KEY
from service.payload import has_body
from service.users import STATUS_ACTIVE

log = structlog.get_logger(__name__)

ROUTE = "/v1/users/me"
ENDPOINT = "users.me"
HEALTH_ROUTE = "/health"
HEALTH_ENDPOINT = "health.health"
_STATUS_LINE = "200 OK"

# The app's request hooks, in Flask's order, whose work WarmPath repeats.
MIRRORED_HOOKS = {
    "before_request": (
        "service.request_log._start_request",
        "service.metrics.track_in_flight.<locals>._request_started",
        "service.ban_guard._check_ban",
        "service.http_metrics._Recorder.start",
        "service.limits.RouteLimiter._check_request_limit",
        "service.payload._read_body",
    ),
    "after_request": (
        "service.request_log._finish_request",
        "service.http_metrics._Recorder.finish",
        "service.limits.init_app.<locals>.add_headers",
        "service.payload._close_unread_body",
    ),
    "teardown_request": (
        "service.request_log._clear_context",
        "service.metrics.track_in_flight.<locals>._request_finished",
        "service.http_metrics._Recorder.fail",
    ),
}


class HookMismatch(RuntimeError):
    """The app's request hooks differ from the ones the warm path repeats."""


def _hook_name(hook: Callable[..., Any]) -> str:
    while isinstance(hook, functools.partial):
        hook = hook.func
    return f"{hook.__module__}.{hook.__qualname__}"


# Flask's request signals: a receiver (an error tracker, say) would miss every warm request.
_REQUEST_SIGNALS = (signals.request_started, signals.request_finished, signals.request_tearing_down,
                    signals.got_request_exception, signals.appcontext_pushed, signals.appcontext_popped,
                    signals.appcontext_tearing_down)


def check_hooks(app: Flask) -> None:
    """Raise HookMismatch unless the app does per request exactly what the warm path repeats.

    That is: the request hooks in MIRRORED_HOOKS, no blueprint hooks, URL value
    processors, app-context teardowns or request signal receivers, and the users.me view
    of service.blueprints.users as a bearer route without roles, body or query.
    """
    from service.blueprints import health, users

    for kind, expected in MIRRORED_HOOKS.items():
        registered: dict[str | None, list[Callable[..., Any]]] = getattr(app, f"{kind}_funcs")
        scopes = {scope for scope, hooks in registered.items() if hooks}
        names = tuple(_hook_name(hook) for hook in registered.get(None, []))
        if scopes - {None} or names != expected:
            raise HookMismatch(f"{kind} hooks are {names} (blueprint scopes {sorted(map(str, scopes - {None}))}), "
                               f"but service.warm_path repeats {expected}; review the warm path")
    extra = [name for name in ("url_value_preprocessors", "url_default_functions")
             if any(getattr(app, name).values())]
    if app.teardown_appcontext_funcs:
        extra.append("teardown_appcontext_funcs")
    # receivers_for, not has_receivers_for: blinker 1.9's has_receivers_for stays true after a disconnect.
    extra += [signal.name for signal in _REQUEST_SIGNALS if any(True for _ in signal.receivers_for(app))]
    if extra:
        raise HookMismatch(f"the app has {', '.join(extra)}, which the warm path does not run; review the warm path")

    view = app.view_functions.get(ENDPOINT)
    operation = getattr(view, "openapi_operation", None)
    if view is not users.me or operation is None or not operation.bearer or operation.roles \
            or operation.request or operation.query:
        raise HookMismatch(f"{ENDPOINT} is no longer service.blueprints.users.me as a bearer route without roles, "
                           "body or query; review the warm path")
    if app.view_functions.get(HEALTH_ENDPOINT) is not health.health:
        raise HookMismatch(f"{HEALTH_ENDPOINT} is no longer service.blueprints.health.health; review the warm path")


class WarmPath:
    """WSGI layer in front of Flask that serves a warm GET /v1/users/me and the liveness probe itself."""

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        from service.blueprints.health import HEALTH_BODY
        from service.blueprints.users import current_user_body

        check_hooks(app)
        self._next = wsgi_app
        self._health_body = HEALTH_BODY.encode()
        # At log level debug, Flask runs the request hooks for /health so that it logs a
        # request_completed line, and the probe goes to Flask.
        self._serve_health = HEALTH_ENDPOINT in getattr(app, "bare_endpoints", ())
        # The users.me view's own rendering, so both paths send the same bytes.
        self._body_for = current_user_body
        self._services: Services = app.extensions[EXTENSION_KEY]
        self._limiter = app.extensions[LIMITER_KEY]
        self._recorder = app.extensions[RECORDER_KEY]
        self._ban_enabled = self._services.settings.ban_enabled
        self._log = request_log.log
        self.enabled = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == HEALTH_ROUTE and self._serve_health and self.enabled:
            return self._health(environ, start_response)
        if path != ROUTE or environ["REQUEST_METHOD"] != "GET" or not self.enabled:
            return self._next(environ, start_response)

        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        try:
            response = self._respond(environ, started)
        except Exception:
            # Flask repeats every step, so this request still gets its response, error
            # handling and log line there. The path stays off in this worker: an error
            # here is a defect, and one log line with its traceback is enough.
            self.enabled = False
            log.exception("warm_path_disabled")
            response = None
        finally:
            metrics.IN_FLIGHT.dec()
        if response is None:
            return self._next(environ, start_response)

        headers, body = response
        start_response(_STATUS_LINE, headers)
        return [body]

    def _health(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Respond to GET or HEAD /health as the bare health view does, and pass other methods and bodies to Flask."""
        method = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD") or _for_flask_only(environ):
            return self._next(environ, start_response)

        body = self._health_body
        start_response(_STATUS_LINE, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                      (request_log.REQUEST_ID_HEADER, request_log.request_id_for(environ))])
        return [body] if method == "GET" else []

    def _respond(self, environ: dict[str, Any], started: float) -> tuple[list[tuple[str, str]], bytes] | None:
        """Return the headers and body of a warm response, or None to leave the request to Flask."""
        if _for_flask_only(environ):
            return None
        # A query string: the route takes no parameters, and Flask rejects them.
        if ENCODED_SEPARATOR_KEY in environ or environ.get("QUERY_STRING"):
            return None
        client_address = environ.get("REMOTE_ADDR") or ""
        svc = self._services
        if self._ban_enabled and svc.bans.banned_until(client_address) is not None:
            return None

        token = bearer_token_of(environ.get("HTTP_AUTHORIZATION", ""))
        claims = svc.access.cached_claims(token) if token is not None else None
        if claims is None or not svc.access.synced or svc.access.is_revoked(claims.session_id):
            return None
        user = svc.access.cached_user(claims.user_id)
        if user is None or user.status != STATUS_ACTIVE:
            return None

        allowed, window = self._limiter.hit_in_worker(ROUTE, ENDPOINT, client_address)
        # Kept in the environ, so that Flask does not count the request again if it gets it after all.
        environ[COUNTED_KEY] = (allowed, window)
        if not allowed:
            return None

        body = self._body_for(user)
        request_id = request_log.request_id_for(environ)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), *window_headers(window),
                   (request_log.REQUEST_ID_HEADER, request_id)]
        seconds = time.perf_counter() - started
        self._recorder.record("GET", ROUTE, 200, seconds)
        self._log.info("request_completed", status=200, duration_ms=round(seconds * 1000, 2), request_id=request_id,
                       route=ROUTE, user_id=user.id, method="GET", client_ip=environ.get("REMOTE_ADDR"))
        return headers, body


def _for_flask_only(environ: dict[str, Any]) -> bool:
    """Tell whether a request has a body, which Flask reads, or lacks Host, which Flask rejects (flask_app)."""
    return has_body(environ) or lacks_host(environ)
