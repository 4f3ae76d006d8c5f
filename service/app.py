"""Gatehouse: registration, login, JWT access tokens and rotating refresh tokens."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import redis
import structlog
from flask import Flask

from service import api, ban_guard, database, errors, limits, log_file, login_guard, metrics, payload, redis_store, request_log
from service.blacklist import BanList, Blacklist, BanPolicy, parse_networks
from service.config import Settings, load_settings
from service.context import EXTENSION_KEY, Services
from service.flask_app import GatehouseFlask
from service.logs import configure_logging
from service.method_guard import MethodGuard
from service.networks import TrustedProxyFix
from service.passwords import Passwords
from service.readiness import ReadinessProbe
from service.access_state import AccessState
from service.sessions import SessionStore
from service.single_flight import SingleFlight
from service.sync import AccessStateSync, EventListener, create_listener_client
from service.tokens.keys import KeyRing
from service.warm_path import WarmPath

log = structlog.get_logger(__name__)


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment then overrides, pools, routes, hooks.

    Under gunicorn this runs in each worker after fork, so every pool belongs to one process.
    """
    settings = load_settings(overrides)
    configure_logging(settings.log_level)
    log_file.attach(settings, logging.getLogger())

    app = GatehouseFlask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # OPTIONS is not part of the API. Without this, Flask returns an empty HTML 200 for it
    # on every route, counted against the route's rate limit.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    # /v1//auth/login would otherwise get a 308 redirect to a URL built from the Host
    # header; only the canonical spelling of a path matches a route.
    app.url_map.merge_slashes = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    api.register_converters(app)
    request_log.init_app(app)
    # Before the ban check: its teardown hook decrements the gauge for every request,
    # so the increment must run for a rejected one too.
    metrics.track_in_flight(app)
    # Before every other hook, so a banned address is refused before any work is done for it.
    ban_guard.init_app(app)
    errors.init_app(app)
    metrics.init_app(app)
    # Rate limits before payload limits: a flooding client gets 429 without its body being read.
    limits.init_app(app, settings)
    login_guard.init_app(app, settings)
    payload.init_app(app, settings)
    _init_services(app, settings)
    _register_blueprints(app)
    if settings.log_level != "debug":
        app.bare_endpoints = frozenset({"health.health"})
        app.bare_response_hook = request_log.echo_request_id
    _wrap_wsgi_app(app, settings)
    log.info("app_created", pid=os.getpid(), gevent_patched=_gevent_patched())
    return app


def _wrap_wsgi_app(app: Flask, settings: Settings) -> None:
    """Put the WSGI layers in front of Flask. The last one wrapped receives a request first."""
    app.wsgi_app = payload.CloseConnection(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = WarmPath(app, app.wsgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxy_count:
        # The client address is the one the last trusted proxy saw; earlier entries are client-supplied.
        app.wsgi_app = TrustedProxyFix(app.wsgi_app, settings.trusted_proxy_count,  # type: ignore[method-assign]
                                       parse_networks(settings.trusted_proxy_networks or ""))
    app.wsgi_app = MethodGuard(app.wsgi_app)  # type: ignore[method-assign]


def _gevent_patched() -> bool:
    """Tell whether gevent has patched sockets, as gunicorn's gevent worker does before loading the app."""
    try:
        from gevent import monkey
    except ImportError:
        return False

    return monkey.is_module_patched("socket")


def _init_services(app: Flask, settings: Settings) -> None:
    # Services is the one place the app keeps its pools; close_app closes them from there.
    db = database.Database(settings)
    client = redis_store.create_client(settings)
    access = AccessState(
        claims_max_entries=settings.claims_cache_max_entries,
        user_max_entries=settings.user_cache_max_entries,
        user_ttl_seconds=settings.user_cache_seconds,
    )
    sessions = session_store(settings, client, on_revoked=access.mark_revoked)
    blacklist = Blacklist(client, ban_policy(settings))
    bans = BanList(blacklist)
    listener = EventListener(create_listener_client(settings), [AccessStateSync(sessions, access), bans])
    app.extensions[EXTENSION_KEY] = Services(
        settings=settings,
        database=db,
        redis=client,
        passwords=Passwords(settings),
        # Lenient, so that a bad key file added before a SIGHUP does not stop every worker.
        # The start-up checks of the first start load the keys strictly.
        keys=KeyRing.load(settings.keys_dir, settings.jwt_algorithm, publish_seconds=settings.key_publish_seconds,
                          skip_invalid=True),
        sessions=sessions,
        readiness=ReadinessProbe(db, client, settings.ready_cache_seconds),
        access=access,
        listener=listener,
        blacklist=blacklist,
        bans=bans,
        user_loads=SingleFlight(wait_seconds=settings.mysql_pool_wait_seconds + settings.mysql_connect_timeout
                                + settings.mysql_read_timeout),
    )
    # Started here, in the worker after fork: a thread started before fork would not survive it.
    listener.start()
    metrics.register_scrape_collector(app, metrics.ScrapeCollector(
        dependency_checks=lambda: _dependency_checks(app.extensions[EXTENSION_KEY]),
        job_records=lambda: _job_records(app.extensions[EXTENSION_KEY]),
        banned_addresses=lambda: app.extensions[EXTENSION_KEY].blacklist.count(),
    ))


def session_store(settings: Settings, client: redis.Redis,
                  on_revoked: Callable[[str, float], None] | None = None) -> SessionStore:
    """Build the session store on a Redis client. The app and the `gatehouse users` commands share it."""
    return SessionStore(
        client,
        session_ttl=settings.session_ttl_seconds,
        grace_seconds=settings.refresh_grace_seconds,
        revoked_ttl=settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + 60,
        max_sessions_per_user=settings.max_sessions_per_user,
        on_revoked=on_revoked,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_seconds=settings.redis_wait_timeout_seconds,
    )


def ban_policy(settings: Settings) -> BanPolicy:
    return BanPolicy(
        window_seconds=settings.ban_window_seconds,
        failed_logins=settings.ban_failed_logins,
        distinct_accounts=settings.ban_distinct_accounts,
        rate_limit_hits=settings.ban_rate_limit_hits,
        base_seconds=settings.ban_base_seconds,
        multiplier=settings.ban_multiplier,
        max_seconds=settings.ban_max_seconds,
        offence_decay_seconds=settings.ban_offence_decay_seconds,
        allowlist=parse_networks(settings.ban_allowlist),
    )


def _dependency_checks(svc: Services) -> dict[str, tuple[bool, float]]:
    """Return the readiness probe's per-dependency result, within SCRAPE_CHECK_WAIT_SECONDS."""
    results = svc.readiness.results_within(metrics.SCRAPE_CHECK_WAIT_SECONDS)
    return {name: (check.ok, check.latency_ms / 1000) for name, check in results.items()}


def _job_records(svc: Services) -> dict[str, tuple[float | None, float | None]]:
    """Read each maintenance job's last success and failure times from Redis."""
    pipe = svc.redis.pipeline(transaction=False)
    for job in metrics.MAINTENANCE_JOBS:
        pipe.hmget(f"{redis_store.KEY_PREFIX}job:{job}", "last_success_at", "last_failure_at")
    records = {}
    for job, (success, failure) in zip(metrics.MAINTENANCE_JOBS, pipe.execute(), strict=True):
        records[job] = (float(success) if success else None, float(failure) if failure else None)
    return records


def _register_blueprints(app: Flask) -> None:
    from service.blueprints import admin, auth, health, users
    from service.blueprints import metrics as metrics_blueprint

    for module in (health, metrics_blueprint, auth, users, admin):
        app.register_blueprint(module.blueprint)


def close_app(app: Flask) -> None:
    """Close this process's pools; called from gunicorn's worker_exit hook. Never raises."""
    svc: Services | None = app.extensions.get(EXTENSION_KEY)
    if svc is None:
        return

    svc.listener.stop()
    svc.database.close()
    redis_store.close_client(svc.redis)
    limits.close(app)
    log.info("pools_closed")
