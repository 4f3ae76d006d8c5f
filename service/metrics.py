"""Prometheus metrics: HTTP metrics through prometheus-flask-exporter, domain counters and gauges.

In gunicorn, PROMETHEUS_MULTIPROC_DIR is set before any worker imports
prometheus_client, so every worker writes its samples to files in that directory
and /metrics on any worker aggregates all of them. Values that are facts about the
shared servers (dependency health, job records, build info) are not stored per
worker: the worker serving the scrape computes them (see ScrapeCollector).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from importlib.metadata import version

from flask import Flask
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_flask_exporter import NO_PREFIX

from service import metric_files
from service.http_metrics import EXCLUDED_PATHS, ROUTE_LABEL, GunicornHttpMetrics, HttpMetrics

# Before any metric below opens its file: a full metrics directory then raises an error
# instead of killing the process with SIGBUS (service.metric_files).
metric_files.install()

# Label values come from fixed vocabularies; never a user id, email, token or address.
LOGINS = Counter("gatehouse_logins_total", "Login attempts by result.", ["result"])
REFRESHES = Counter("gatehouse_refreshes_total", "Refresh-token exchanges by outcome.", ["outcome"])
ROTATION_ERRORS = Counter("gatehouse_token_rotation_errors_total",
                          "Refresh-token rotations that failed on a Redis error.")
SESSION_WRITES_UNREPLICATED = Counter(
    "gatehouse_session_writes_unreplicated_total",
    "Session writes that fewer replicas than GATEHOUSE_REDIS_WAIT_REPLICAS acknowledged in time: refused "
    "(written to a replaced master) or accepted (on the current master).", ["result"])
REGISTRATIONS = Counter("gatehouse_registrations_total", "Accounts registered.")
LOGOUTS = Counter("gatehouse_logouts_total", "Sessions ended by their owner.")
SESSIONS_EVICTED = Counter("gatehouse_sessions_evicted_total",
                           "Oldest sessions ended because a login exceeded GATEHOUSE_MAX_SESSIONS_PER_USER.")
BANS = Counter("gatehouse_ip_bans_total", "Client addresses banned, by cause.", ["cause"])
UNBANS = Counter("gatehouse_ip_unbans_total", "Bans lifted by an administrator.", ["cause"])

# Per-worker gauges. "livesum" adds up the values of live workers only: pool usage and
# capacity are per process, and a dead worker's connections are gone with it.
IN_FLIGHT = Gauge("gatehouse_http_requests_in_flight", "Requests being served.", multiprocess_mode="livesum")
POOL_IN_USE = Gauge("gatehouse_pool_connections_in_use", "Pooled connections lent to requests.", ["pool"],
                    multiprocess_mode="livesum")
POOL_MAX = Gauge("gatehouse_pool_connections_max", "Pool capacity.", ["pool"], multiprocess_mode="livesum")

LOGIN_RESULTS = ("success", "invalid_credentials", "disabled")
REFRESH_OUTCOMES = ("rotated", "grace", "reuse_detected", "expired", "invalid", "account_inactive")
POOLS = ("mysql", "redis")
BAN_CAUSES = ("failed_logins", "credential_stuffing", "rate_limit", "manual")
# Jobs whose last success and failure are exported; each records them in Redis under gh:job:<name>.
MAINTENANCE_JOBS = ("tokens_purge", "blacklist_rotate", "backup_create", "backup_verify")

# Abuse protection. `route` is the route template, and `limit` names the control that returned 429.
RATE_LIMIT_HITS = Counter("gatehouse_rate_limit_hits_total", "Requests answered 429 by route and limit.",
                          ["route", "limit"])
RATE_LIMIT_FALLBACKS = Counter("gatehouse_rate_limit_fallbacks_total",
                               "Times a worker moved its rate-limit counters to memory because Redis failed.")
RATE_LIMIT_MEMORY_FALLBACK = Gauge("gatehouse_rate_limit_memory_fallback",
                                   "Workers whose rate-limit counters are in memory because Redis failed.",
                                   multiprocess_mode="livesum")


def _initialize_labels() -> None:
    """Create every labelled series at zero, so that rate() counts the first increment."""
    for result in LOGIN_RESULTS:
        LOGINS.labels(result=result)
    for outcome in REFRESH_OUTCOMES:
        REFRESHES.labels(outcome=outcome)
    for pool in POOLS:
        POOL_IN_USE.labels(pool=pool)
    for cause in BAN_CAUSES:
        BANS.labels(cause=cause)
    UNBANS.labels(cause="manual")


# Maximum wait of a scrape for the dependency checks. Prometheus's default scrape timeout
# and the chart's are 10 s, and a check of a hung MySQL can take several of its timeouts.
SCRAPE_CHECK_WAIT_SECONDS = 3.0


class ScrapeCollector(Collector):
    """Gauges computed when /metrics is scraped, by the worker that serves the scrape.

    The gauges read from Redis are left out when the Redis check failed, so a hung Redis
    does not hold the scrape up for its timeouts.
    """

    def __init__(self, dependency_checks: Callable[[], dict[str, tuple[bool, float]]],
                 job_records: Callable[[], dict[str, tuple[float | None, float | None]]],
                 banned_addresses: Callable[[], int]) -> None:
        self._dependency_checks = dependency_checks
        self._job_records = job_records
        self._banned_addresses = banned_addresses

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily("gatehouse_build_info", "Version of the running service.",
                                  labels=["version", "python"])
        build.add_metric([version("gatehouse"), platform.python_version()], 1)
        yield build

        up = GaugeMetricFamily("gatehouse_dependency_up", "1 when the dependency passed its check.",
                               labels=["dependency"])
        latency = GaugeMetricFamily("gatehouse_dependency_check_duration_seconds",
                                    "Duration of the last dependency check.", labels=["dependency"])
        dependencies = self._dependency_checks()
        for name, (ok, seconds) in dependencies.items():
            up.add_metric([name], 1 if ok else 0)
            latency.add_metric([name], seconds)
        yield up
        yield latency
        if not dependencies.get("redis", (False, 0.0))[0]:
            return

        success = GaugeMetricFamily("gatehouse_job_last_success_timestamp_seconds",
                                    "Unix time of the job's last success (0: never).", labels=["job_name"])
        failure = GaugeMetricFamily("gatehouse_job_last_failure_timestamp_seconds",
                                    "Unix time of the job's last failure (0: never).", labels=["job_name"])
        try:
            records = self._job_records()
        except Exception:  # Redis down: the job gauges are left out, and gatehouse_dependency_up shows why
            records = {}
        for job, (last_success, last_failure) in records.items():
            success.add_metric([job], last_success or 0)
            failure.add_metric([job], last_failure or 0)
        yield success
        yield failure

        try:
            banned = self._banned_addresses()
        except Exception:  # Redis down: left out, as above
            return
        yield GaugeMetricFamily("gatehouse_blacklisted_ips", "Client addresses banned right now.", value=banned)


def track_in_flight(app: Flask) -> None:
    """Count requests being served; register before any hook that can end a request early."""
    @app.before_request
    def _request_started() -> None:
        IN_FLIGHT.inc()

    @app.teardown_request
    def _request_finished(_exc: BaseException | None) -> None:
        IN_FLIGHT.dec()


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def init_app(app: Flask) -> None:
    """Record HTTP metrics per route template; /metrics itself is served by the metrics blueprint."""
    options = {
        "defaults_prefix": NO_PREFIX,
        # url_rule is the route template (/v1/auth/sessions/<id>), never the raw path.
        "group_by": ROUTE_LABEL,
        # Applied by the recorder in service.http_metrics; given here too for the
        # exporter's own decorators.
        "excluded_paths": [f"^{path}$" for path in sorted(EXCLUDED_PATHS)],
    }
    # Neither variant registers an endpoint here: the exporter's own endpoint builds a
    # new registry per scrape, which would drop the scrape-time gauges, and it fails
    # with 500 on a `name[]` filter in multiprocess mode.
    if _multiprocess():
        GunicornHttpMetrics(app, **options)
    else:
        # Single process (flask run, a debugger): the default registry contains everything.
        HttpMetrics(app, path=None, **options)
    _initialize_labels()


def register_scrape_collector(app: Flask, collector: ScrapeCollector) -> None:
    """Keep the collector whose gauges are computed at scrape time."""
    app.extensions["gatehouse.scrape_collector"] = collector


def render(app: Flask, accept_header: str | None) -> tuple[bytes, str]:
    """Render every metric of every live worker, plus the scrape-time gauges."""
    encoder, content_type = choose_encoder(accept_header or "")
    scrape_registry = CollectorRegistry()
    collector = app.extensions.get("gatehouse.scrape_collector")
    if collector is not None:
        scrape_registry.register(collector)

    if _multiprocess():
        multiprocess.MultiProcessCollector(scrape_registry)
        return encoder(scrape_registry), content_type

    return encoder(REGISTRY) + encoder(scrape_registry), content_type

