"""Refuse banned client addresses with 403 on every request but GET and HEAD of the probes and /metrics."""

from __future__ import annotations

import math
import time

from flask import Flask, current_app, request

from service.blacklist import PERMANENT_SCORE
from service.context import EXTENSION_KEY, Services
from service.errors import IpBanned

# Kubernetes probes and Prometheus must keep working whatever their source address.
EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics"})
# They only send GET (and HEAD). Another method there is a 405 that counts as an unmatched
# request, so a banned client would get 429 and escalate its own ban instead of a 403.
EXEMPT_METHODS = frozenset({"GET", "HEAD"})


def is_exempt(path: str, method: str) -> bool:
    """Tell whether a request to a path with a method is served to a banned address."""
    return path in EXEMPT_PATHS and method in EXEMPT_METHODS


def _check_ban() -> None:
    if is_exempt(request.path, request.method):
        return

    svc: Services | None = current_app.extensions.get(EXTENSION_KEY)
    if svc is None or not svc.settings.ban_enabled:
        return

    # NOTE: the check reads only this worker's memory. While the events listener is
    # disconnected from Redis, bans made elsewhere in that time are not seen (fail open);
    # every other route needs Redis then and answers 503 anyway.
    # banned_until looks up the network key, so every spelling and /64 neighbour is rejected alike.
    until = svc.bans.banned_until(request.remote_addr or "")
    if until is None:
        return

    retry_after = None if until >= PERMANENT_SCORE else max(1, math.ceil(until - time.time()))
    raise IpBanned(retry_after)


def init_app(app: Flask) -> None:
    app.before_request(_check_ban)
