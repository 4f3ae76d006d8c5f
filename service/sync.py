"""Keeps each worker's AccessState in step with Redis through pub/sub.

The listener runs in a background thread, which is a greenlet under gunicorn's gevent
worker. It subscribes first and reloads each target's state second (revoked sessions,
IP bans), so a change made in between is seen through one path or the other. After any connection error it marks
the state as not synced, retries with backoff, and resynchronises on the new
subscription.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

import redis
import structlog
from redis.sentinel import SentinelConnectionPool

from service import redis_store
from service.access_state import AccessState
from service.config import Settings
from service.sessions import EVENTS_CHANNEL, SessionStore

log = structlog.get_logger(__name__)

_MAX_BACKOFF_SECONDS = 5.0
# In sentinel mode, how often the listener queries the Sentinels for the master.
MASTER_CHECK_SECONDS = 1.0


def publish_user_changed(client: redis.Redis, user_id: str) -> None:
    """Tell every worker to drop its cached copy of a user (roles or status changed)."""
    client.publish(EVENTS_CHANNEL, json.dumps({"kind": "user_changed", "uid": user_id}))


def create_listener_client(settings: Settings) -> redis.Redis:
    """Build the listener's own connection to the master, so it never takes one from the request pool.

    The socket timeout is left unset because a subscriber waits for messages
    indefinitely; a dead server shows up as a closed connection. In sentinel mode
    each reconnection queries the Sentinels for the master again. Sentinel closes the
    pub/sub connections of a master that it demotes, so after a failover the
    listener subscribes on the new master and resyncs.
    """
    pool = redis_store.create_pool(
        settings,
        # The subscription uses one connection. The second covers a reconnection
        # that starts before the pool has taken the broken one back.
        max_connections=2,
        timeout=settings.redis_connect_timeout,
        socket_timeout=None,
        socket_keepalive=True,
        decode_responses=True,
    )
    return redis.Redis(connection_pool=pool)


class SyncTarget(Protocol):
    """Per-worker state that the listener keeps in step with Redis."""

    synced: bool

    def resync(self) -> None:
        """Reload everything from Redis; called after every (re)subscription."""

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply one message; return False when it is not for this target."""


class AccessStateSync:
    """Binds the revoked-session set in Redis to a worker's AccessState."""

    def __init__(self, sessions: SessionStore, state: AccessState) -> None:
        self._sessions = sessions
        self._state = state

    @property
    def synced(self) -> bool:
        return self._state.synced

    @synced.setter
    def synced(self, value: bool) -> None:
        self._state.synced = value

    def resync(self) -> None:
        self._state.resync(self._sessions.revoked_sessions())

    def apply_event(self, event: dict[str, Any]) -> bool:
        return self._state.apply_event(event)


class EventListener:
    """Subscribe to the events channel and apply each message to every target."""

    def __init__(self, client: redis.Redis, targets: list[SyncTarget]) -> None:
        self._client = client
        self._targets = targets
        self._stopping = threading.Event()
        self._next_master_check = 0.0
        self._thread = threading.Thread(target=self._run, name="gatehouse-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end, which it does within about a second.

        The app closes its pools right after this, so a resync in progress may fail on a
        closed connection. Because the stop was requested, that is not logged as a failure.
        """
        self._stopping.set()

    def _run(self) -> None:
        backoff = 0.2
        outage_logged = False
        while not self._stopping.is_set():
            try:
                self._listen()
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self._synced():
                    # The last attempt worked for a while: this is a new outage.
                    backoff, outage_logged = 0.2, False
                self._mark_unsynced()
                if not outage_logged:
                    log.warning("sync_listener_disconnected", error=str(exc)[:200])
                    outage_logged = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            except Exception:  # a bug here must not end the listener for good
                self._mark_unsynced()
                if self._stopping.is_set():
                    return  # the pools are closing under a resync: not a failure
                log.exception("sync_listener_failed")
                self._stopping.wait(_MAX_BACKOFF_SECONDS)

    def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            pubsub.subscribe(EVENTS_CHANNEL)
            self._wait_for_confirmation(pubsub)
            for target in self._targets:
                target.resync()
            while not self._stopping.is_set():
                self._check_master(pubsub)
                message = pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    event = json.loads(message["data"])
                except (TypeError, ValueError):
                    log.warning("sync_event_unreadable")
                    continue
                if not isinstance(event, dict) or not any(target.apply_event(event) for target in self._targets):
                    log.warning("sync_event_ignored", kind=str(event.get("kind") if isinstance(event, dict) else "")[:64])
        finally:
            pubsub.close()

    def _check_master(self, pubsub: redis.client.PubSub) -> None:
        """Raise redis.ConnectionError when the Sentinels name a master other than the subscribed one.

        A demoted master keeps its subscribers for some seconds after the failover,
        and they miss every event published on the new master meanwhile.
        """
        pool = self._client.connection_pool
        connection = pubsub.connection
        if not isinstance(pool, SentinelConnectionPool) or connection is None:
            return

        now = time.monotonic()
        if now < self._next_master_check:
            return

        self._next_master_check = now + MASTER_CHECK_SECONDS
        if pool.get_master_address() != (connection.host, connection.port):
            raise redis.ConnectionError("the Sentinels name a new master")

    def _synced(self) -> bool:
        return all(target.synced for target in self._targets)

    def _mark_unsynced(self) -> None:
        for target in self._targets:
            target.synced = False

    @staticmethod
    def _wait_for_confirmation(pubsub: redis.client.PubSub) -> None:
        """Wait until Redis confirms the subscription; only then can no event be missed."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message.get("type") == "subscribe":
                return
        raise redis.TimeoutError("no subscription confirmation from Redis within 5 s")
