"""/metrics: Prometheus text format, aggregated over every worker."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from service import metrics

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def scrape() -> Response:
    # Query parameters are ignored: filtering by name is not offered.
    body, content_type = metrics.render(current_app, request.headers.get("Accept"))
    return Response(body, content_type=content_type)
