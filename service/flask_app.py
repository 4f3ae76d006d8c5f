"""The Flask class of the service: Flask without the parts a token API never uses.

Departures from Flask's defaults, the first three each worth microseconds on every request:

- No cookie sessions. Clients authenticate with bearer tokens, so no request
  opens or saves a session; every request gets the same empty null session.
- No async views. Every view and hook is a plain function, so Flask does not
  need to ask of each one, on each request, whether it is a coroutine.
- Bare endpoints. The liveness probe only shows that a worker responds. Kubelets
  call it every few seconds, and its response does not depend on the client, so it
  skips the request hooks: no log line, metrics, rate limit or ban check. It still
  echoes or makes a request id. With debug logging on it takes the full path, so
  that its log line appears as the other probes' lines do. A request with a body
  takes the full path too, so that service.payload reads the body within its limit
  and deadline, and answers a malformed one before gunicorn would find it.
- Canonical paths only. werkzeug's matcher (3.1) drops leading slashes before it
  matches, even with merge_slashes off, so //v1/admin/users would be routed like
  /v1/admin/users, past an edge proxy that allows or denies by path prefix. A path
  that starts with two slashes matches no route here and gets 404.
- No Content-Type on a 204. werkzeug gives every response one, text/html by
  default, but a 204 has no content for it to describe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response, request
from flask.ctx import RequestContext
from flask.sessions import NullSession, SessionInterface
from werkzeug.datastructures import Headers
from werkzeug.exceptions import NotFound

from service.errors import MissingHost
from service.payload import has_body


class NoSessions(SessionInterface):
    """Hand every request the same empty null session, which Flask never saves."""

    null_session_class = NullSession

    def __init__(self) -> None:
        self._session = NullSession()

    def open_session(self, app: Flask, request: Request) -> NullSession:
        return self._session

    def make_null_session(self, app: Flask) -> NullSession:
        return self._session

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None


class GatehouseResponse(Response):
    """Flask's response class, except that a 204 response has no Content-Type header."""

    def get_wsgi_headers(self, environ: dict[str, Any]) -> Headers:
        # Called for every response Flask sends, after the view and every after_request
        # hook, so a status or header set late is covered too. werkzeug removes
        # Content-Length from a 204 here as well. service.warm_path sends only 200s itself.
        headers = super().get_wsgi_headers(environ)
        if self.status_code == 204:
            headers.remove("Content-Type")
        return headers


class CanonicalPathContext(RequestContext):
    """A request context whose routing leaves a path that starts with "//" unmatched, and an HTTP/1.1 request without Host."""

    def match_request(self) -> None:
        environ = self.request.environ
        # request.path has the leading slashes dropped as well, so the environ is read.
        if environ.get("PATH_INFO", "").startswith("//"):
            self.request.routing_exception = NotFound()
            return
        if lacks_host(environ):
            # gunicorn 27 accepts such a request; RFC 9112 section 3.2 requires a 400.
            self.request.routing_exception = MissingHost(
                "An HTTP/1.1 request must have a Host header.", field="Host")
            return
        super().match_request()


def lacks_host(environ: dict[str, Any]) -> bool:
    """Tell whether an HTTP/1.1 request came without a Host header."""
    return environ.get("SERVER_PROTOCOL") == "HTTP/1.1" and not environ.get("HTTP_HOST")


class GatehouseFlask(Flask):
    """Flask without cookie sessions or async views, with bare endpoints and canonical paths only.

    Its responses are GatehouseResponse objects, so a 204 carries no Content-Type.
    """

    session_interface = NoSessions()
    response_class = GatehouseResponse

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bare_endpoints: frozenset[str] = frozenset()
        # Called with the request and response of a bare endpoint to set X-Request-ID (request_log).
        self.bare_response_hook: Callable[[Request, Response], None] | None = None

    def request_context(self, environ: dict[str, Any]) -> RequestContext:
        return CanonicalPathContext(self, environ)

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        # Flask's version calls inspect.iscoroutinefunction on every hook and view of
        # every request. The service has no async views.
        return func

    def _is_bare(self) -> bool:
        rule = request.url_rule
        return rule is not None and rule.endpoint in self.bare_endpoints and not has_body(request.environ)

    def full_dispatch_request(self) -> Response:
        if not self.bare_endpoints or not self._is_bare():
            return super().full_dispatch_request()

        try:
            response = self.make_response(self.dispatch_request())
        except Exception as exc:
            response = self.make_response(self.handle_user_exception(exc))
        if self.bare_response_hook is not None:
            self.bare_response_hook(request, response)
        return response

    def do_teardown_request(self, *args: Any, **kwargs: Any) -> None:
        if self.bare_endpoints and self._is_bare():
            return
        super().do_teardown_request(*args, **kwargs)
