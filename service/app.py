"""Gatehouse: registration, login, JWT access tokens and rotating refresh tokens."""

from __future__ import annotations

import os
from typing import Any

import structlog
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from service import database, errors, limits, login_guard, metrics, payload, redis_store, request_log
from service.config import Settings, load_settings
from service.context import EXTENSION_KEY, Services
from service.logs import configure_logging
from service.passwords import Passwords
from service.readiness import ReadinessProbe
from service.sessions import SessionStore
from service.tokens.keys import KeyRing

log = structlog.get_logger(__name__)


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment then overrides, pools, routes, hooks.

    Under gunicorn this runs in each worker after fork, so every pool belongs to one process.
    """
    settings = load_settings(overrides)
    configure_logging(settings.log_level)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxy_count:
        # The client address is the one the last trusted proxy saw; earlier entries are client-supplied.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_count)  # type: ignore[method-assign]

    request_log.init_app(app)
    errors.init_app(app)
    metrics.init_app(app)
    # Rate limits before payload limits: a flooding client gets 429 without its body being read.
    limits.init_app(app, settings)
    login_guard.init_app(app, settings)
    payload.init_app(app, settings)
    _init_services(app, settings)
    _register_blueprints(app)
    log.info("app_created", pid=os.getpid(), gevent_patched=_gevent_patched())
    return app


def _gevent_patched() -> bool:
    """Tell whether gevent has patched sockets, as gunicorn's gevent worker does before loading the app."""
    try:
        from gevent import monkey
    except ImportError:
        return False

    return monkey.is_module_patched("socket")


def _init_services(app: Flask, settings: Settings) -> None:
    db = database.init_app(app, settings)
    client = redis_store.init_app(app, settings)
    app.extensions[EXTENSION_KEY] = Services(
        settings=settings,
        database=db,
        redis=client,
        passwords=Passwords(settings),
        keys=KeyRing.load(settings.keys_dir, settings.jwt_algorithm),
        sessions=SessionStore(
            client,
            session_ttl=settings.session_ttl_seconds,
            grace_seconds=settings.refresh_grace_seconds,
            revoked_ttl=settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + 60,
        ),
        readiness=ReadinessProbe(db, client, settings.ready_cache_seconds),
    )


def _register_blueprints(app: Flask) -> None:
    from service.blueprints import auth, health, users

    for module in (health, auth, users):
        app.register_blueprint(module.blueprint)


def close_app(app: Flask) -> None:
    """Close this process's pools; called from gunicorn's worker_exit hook. Never raises."""
    svc: Services | None = app.extensions.get(EXTENSION_KEY)
    if svc is None:
        return

    svc.database.close()
    redis_store.close_client(svc.redis)
    limits.close(app)
    log.info("pools_closed")
