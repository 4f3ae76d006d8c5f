"""A Redis client and a session store on the test Redis, for the maintenance job tests."""

from __future__ import annotations

import pytest

from service.config import Settings
from service.redis_store import close_client, create_client
from service.sessions import SessionStore


@pytest.fixture
def redis_client(settings: Settings):
    client = create_client(settings)
    yield client
    close_client(client)


@pytest.fixture
def sessions(redis_client, settings: Settings) -> SessionStore:
    return SessionStore(redis_client, session_ttl=settings.session_ttl_seconds,
                        grace_seconds=settings.refresh_grace_seconds, revoked_ttl=900,
                        max_sessions_per_user=settings.max_sessions_per_user)
