"""Probes and discovery documents: /health, /ready, /openapi.json, /.well-known/jwks.json."""

from __future__ import annotations

from importlib.metadata import version

from flask import Blueprint, Response, current_app, jsonify

from service.api import json_response, operation
from service.context import services
from service.lifecycle import state
from service.openapi import openapi_document
from service.request_log import mark_planned_rejection
from service.schemas import CheckResult, Health, Jwks, Readiness

blueprint = Blueprint("health", __name__)

# The API description, serialized on its first request, in app.extensions.
_OPENAPI_BODY_KEY = "gatehouse.openapi_body"
# The liveness response body never changes, so it is serialized once.
HEALTH_BODY = Health(status="ok").model_dump_json() + "\n"


@blueprint.get("/health")
@operation("Liveness: the process can serve; never checks dependencies", responses={200: Health},
           tags=("operations",), uses_dependencies=False, ignores_query=True)
def health() -> Response:
    return Response(HEALTH_BODY, mimetype="application/json")


@blueprint.get("/ready")
@operation("Readiness: MySQL, Redis and the schema version, cached briefly",
           responses={200: Readiness, 503: Readiness}, tags=("operations",), uses_dependencies=False,
           ignores_query=True)
def ready() -> Response:
    if state.shutting_down():
        # Checked before the dependencies: a stopping process is not ready, whatever their checks report.
        mark_planned_rejection()
        body = Readiness(status="not_ready", checks={
            "shutdown": CheckResult(ok=False, latency_ms=0.0, error="shutting down")})
        return json_response(body, 503, headers={"Retry-After": "1"})

    report = services().readiness.report()
    body = Readiness(
        status="ready" if report.ready else "not_ready",
        checks={name: CheckResult(ok=check.ok, latency_ms=check.latency_ms, error=check.error)
                for name, check in report.checks.items()},
    )
    return json_response(body, 200 if report.ready else 503, headers={} if report.ready else {"Retry-After": "1"})


@blueprint.get("/.well-known/jwks.json")
@operation("Public keys that verify access tokens (RFC 7517)", responses={200: Jwks}, tags=("tokens",),
           uses_dependencies=False, caching=("public-max-age",), ignores_query=True)
def jwks() -> Response:
    svc = services()
    response = jsonify(svc.keys.jwks())
    # GATEHOUSE_KEY_PUBLISH_SECONDS is at least this max-age, so that copies cached before a
    # new key appeared expire before the key signs (the KeyRing docstring gives the limits).
    response.headers["Cache-Control"] = f"public, max-age={svc.settings.jwks_max_age_seconds}"
    return response


@blueprint.get("/openapi.json")
def openapi() -> Response:
    # The routes are fixed once the app serves, and building the document takes several
    # milliseconds, so each worker builds it on the first request only.
    body = current_app.extensions.get(_OPENAPI_BODY_KEY)
    if body is None:
        document = openapi_document(current_app, version=version("gatehouse"))
        body = current_app.extensions[_OPENAPI_BODY_KEY] = current_app.json.dumps(document) + "\n"
    return Response(body, mimetype="application/json")
