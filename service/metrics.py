"""Prometheus metrics: HTTP metrics from prometheus-flask-exporter and the domain counters.

In gunicorn, PROMETHEUS_MULTIPROC_DIR is set before any worker imports
prometheus_client, so every worker writes its samples to files in that directory
and /metrics on any worker aggregates all of them.
"""

from __future__ import annotations

import os

from flask import Flask
from prometheus_client import Counter, Gauge
from prometheus_flask_exporter import NO_PREFIX, PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

# Label values come from fixed vocabularies; never a user id, email, token or address.
LOGINS = Counter("gatehouse_logins_total", "Login attempts by result.", ["result"])
REFRESHES = Counter("gatehouse_refreshes_total", "Refresh-token exchanges by outcome.", ["outcome"])
REGISTRATIONS = Counter("gatehouse_registrations_total", "Accounts registered.")
LOGOUTS = Counter("gatehouse_logouts_total", "Sessions ended by their owner.")

LOGIN_RESULTS = ("success", "invalid_credentials", "disabled")
REFRESH_OUTCOMES = ("rotated", "grace", "reuse_detected", "invalid")

# Abuse protection. `route` is the route template; `limit` names the control that answered 429.
RATE_LIMIT_HITS = Counter("gatehouse_rate_limit_hits_total", "Requests answered 429 by route and limit.",
                          ["route", "limit"])
RATE_LIMIT_FALLBACKS = Counter("gatehouse_rate_limit_fallbacks_total",
                               "Times a worker moved its rate-limit counters to memory because Redis failed.")
RATE_LIMIT_MEMORY_FALLBACK = Gauge("gatehouse_rate_limit_memory_fallback",
                                   "Workers whose rate-limit counters are in memory because Redis failed.",
                                   multiprocess_mode="livesum")


def _initialize_labels() -> None:
    """Create every labelled series at zero, so rate() sees the first increment."""
    for result in LOGIN_RESULTS:
        LOGINS.labels(result=result)
    for outcome in REFRESH_OUTCOMES:
        REFRESHES.labels(outcome=outcome)


def init_app(app: Flask) -> PrometheusMetrics:
    """Export HTTP metrics grouped by route template and serve /metrics."""
    options = {
        "defaults_prefix": NO_PREFIX,
        # url_rule is the route template (/v1/auth/sessions/<id>), never the raw path.
        "group_by": "url_rule",
        "excluded_paths": ["^/metrics$"],
    }
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics: PrometheusMetrics = GunicornInternalPrometheusMetrics(app, **options)
    else:
        # Single process (flask run, a debugger): the default registry holds everything.
        metrics = PrometheusMetrics(app, **options)
    _initialize_labels()
    app.extensions["gatehouse.metrics"] = metrics
    return metrics
