"""The per-process services that routes use, kept on the app."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from service.access_state import AccessState
from service.blacklist import Blacklist, BanList
from service.config import Settings
from service.database import Database
from service.passwords import Passwords
from service.readiness import ReadinessProbe
from service.sessions import SessionStore
from service.single_flight import SingleFlight
from service.sync import EventListener
from service.tokens.keys import KeyRing

EXTENSION_KEY = "gatehouse"


@dataclass
class Services:
    settings: Settings
    database: Database
    redis: redis.Redis
    passwords: Passwords
    keys: KeyRing
    sessions: SessionStore
    readiness: ReadinessProbe
    access: AccessState
    listener: EventListener
    blacklist: Blacklist
    bans: BanList
    # Cold-cache user loads, one MySQL query per user at a time (service.bearer.load_user).
    user_loads: SingleFlight


def services() -> Services:
    """Return the services of the current app."""
    return current_app.extensions[EXTENSION_KEY]
