"""HTTP request metrics: prometheus-flask-exporter's default series, recorded more cheaply.

prometheus-flask-exporter defines the series every dashboard and alert rule here
reads: `http_request_duration_seconds` (labels method, url_rule, status),
`http_request_total` and `http_request_exceptions_total` (labels method, status).
Its request hooks look the labelled series up anew on every request, with several
request-attribute checks around them, which cost a warm authenticated request about
a tenth of its CPU time. The extension classes here keep the exporter and its
series, and override export_defaults: the series are the same, but each request
records through label children cached per (method, route, status).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import Counter, Histogram
from prometheus_flask_exporter import NO_PREFIX, PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

# Probes and scrapes are the platform's traffic, not clients': recording them would
# dilute the latency and error rates of client requests.
EXCLUDED_PATHS = frozenset({"/metrics", "/health", "/ready"})
# The label the exporter calls group_by: the route template, never the raw path.
ROUTE_LABEL = "url_rule"
# The app extension that contains the recorder, for requests served outside Flask (service.warm_path).
RECORDER_KEY = "gatehouse.http_recorder"


class _Recorder:
    """Observe each request into label children that are created once and then reused."""

    def __init__(self, duration: Histogram, total: Counter, exceptions: Counter) -> None:
        self._duration = duration
        self._total = total
        self._exceptions = exceptions
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        series = self._children.get(key)
        if series is None:
            # Every label value comes from a fixed vocabulary: methods are folded by
            # method_guard, routes are templates (404s are "None") and statuses are few.
            series = self._children[key] = (
                self._duration.labels(method=method, url_rule=route, status=status),
                self._total.labels(method=method, status=status),
            )
        return series

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one request that was served without the request hooks."""
        duration, total = self._series(method, route, status)
        duration.observe(seconds)
        total.inc()

    def count_rejected(self, method: str, status: int) -> None:
        """Count a request that gunicorn rejected itself, in http_request_total only.

        Its duration is not known, and a 500 that gunicorn writes follows one that the
        app's teardown has already recorded.
        """
        self._total.labels(method=method, status=status).inc()

    def start(self) -> None:
        g.metrics_started = time.perf_counter()

    def finish(self, response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        if req.path in EXCLUDED_PATHS:
            return response

        started = g.get("metrics_started")
        duration, total = self._series(req.method, str(req.url_rule), response.status_code)
        if started is not None:
            duration.observe(max(time.perf_counter() - started, 0.0))
        total.inc()
        g.metrics_recorded = True
        return response

    def fail(self, exc: BaseException | None) -> None:
        """Count a request that ended in an exception no error handler turned into a response."""
        if exc is None or g.get("metrics_recorded"):
            return
        req = request._get_current_object()  # type: ignore[attr-defined]
        if req.path in EXCLUDED_PATHS:
            return

        self._exceptions.labels(method=req.method, status=500).inc()
        duration, total = self._series(req.method, str(req.url_rule), 500)
        started = g.get("metrics_started")
        if started is not None:
            duration.observe(max(time.perf_counter() - started, 0.0))
        total.inc()


class _CachedDefaults:
    """Replace the exporter's default-metrics hooks with a _Recorder; same series, names and help."""

    registry: Any
    version: str
    app: Flask | None

    def export_defaults(self, buckets: Any = None, group_by: str = ROUTE_LABEL,
                        latency_as_histogram: bool = True, prefix: str = "flask",
                        app: Flask | None = None, **_kwargs: Any) -> None:
        app = app or self.app
        assert app is not None, "export_defaults needs the app"
        assert group_by == ROUTE_LABEL, "the route label must be the route template"
        assert latency_as_histogram, "request durations must be a histogram"
        prefix = "" if prefix == NO_PREFIX else f"{prefix}_"
        self.info(f"{prefix}exporter_info", "Information about the Prometheus Flask exporter",  # type: ignore[attr-defined]
                  version=self.version)
        extra = {"buckets": buckets} if buckets is not None else {}
        recorder = _Recorder(
            Histogram(f"{prefix}http_request_duration_seconds", "Flask HTTP request duration in seconds",
                      ("method", ROUTE_LABEL, "status"), registry=self.registry, **extra),
            Counter(f"{prefix}http_request_total", "Total number of HTTP requests", ("method", "status"),
                    registry=self.registry),
            Counter(f"{prefix}http_request_exceptions_total",
                    "Total number of HTTP requests which resulted in an exception", ("method", "status"),
                    registry=self.registry),
        )
        app.extensions[RECORDER_KEY] = recorder
        app.before_request(recorder.start)
        app.after_request(recorder.finish)
        app.teardown_request(recorder.fail)


class HttpMetrics(_CachedDefaults, PrometheusMetrics):
    """The exporter for a single process (flask run, a debugger)."""


class GunicornHttpMetrics(_CachedDefaults, GunicornPrometheusMetrics):
    """The exporter for gunicorn's workers, writing to PROMETHEUS_MULTIPROC_DIR."""
