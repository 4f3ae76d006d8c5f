"""Per-worker memory for the authenticated hot path: verified claims, users with roles, revoked sessions.

A warm request is answered from here without MySQL or Redis. The revoked set and
the user cache stay correct through the events listener (service.sync): each
message is applied as it arrives, and every (re)subscription replaces the revoked
set from Redis and empties the user cache, so a message lost during a disconnect
cannot leave a stale entry behind.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from cachetools import TLRUCache, TTLCache

from service.tokens.access import AccessClaims
from service.users import User

log = structlog.get_logger(__name__)


def _until_token_expiry(_token: str, claims: AccessClaims, _now: float) -> float:
    return float(claims.expires_at)


class AccessState:
    """In-memory caches of one worker.

    NOTE: the caches are plain dicts without locks. Under gevent no greenlet switch
    happens inside their pure-Python operations; threaded servers would need a lock.
    """

    def __init__(self, *, claims_max_entries: int, user_max_entries: int, user_ttl_seconds: float) -> None:
        # Keyed by the raw token: an entry lives until the token's own exp, never longer.
        self._claims: TLRUCache[str, AccessClaims] = TLRUCache(
            maxsize=claims_max_entries, ttu=_until_token_expiry, timer=time.time
        )
        self._users: TTLCache[str, User] = TTLCache(maxsize=user_max_entries, ttl=user_ttl_seconds)
        self._revoked: dict[str, float] = {}
        # Bumped by every user change and resync. A user loaded from MySQL is cached
        # only if no change arrived while it was loading, or the cache could keep the
        # pre-change copy for a whole TTL.
        self._user_epoch = 0
        # False until the listener has subscribed and loaded the revoked set; while
        # False, revocation checks go to Redis instead of this memory.
        self.synced = False

    # Claims

    def cached_claims(self, token: str) -> AccessClaims | None:
        return self._claims.get(token)

    def remember_claims(self, token: str, claims: AccessClaims) -> None:
        self._claims[token] = claims

    # Users

    def cached_user(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    def user_epoch(self) -> int:
        return self._user_epoch

    def remember_user(self, user: User, epoch: int) -> None:
        """Cache a user loaded when user_epoch() returned `epoch`, unless a change arrived since."""
        if epoch == self._user_epoch:
            self._users[user.id] = user

    def forget_user(self, user_id: str) -> None:
        self._user_epoch += 1
        self._users.pop(user_id, None)

    # Revoked sessions

    def is_revoked(self, session_id: str, now: float | None = None) -> bool:
        until = self._revoked.get(session_id)
        if until is None:
            return False

        if until <= (now if now is not None else time.time()):
            # Every access token of that session has expired, so the entry can go.
            self._revoked.pop(session_id, None)
            return False

        return True

    def mark_revoked(self, session_id: str, until: float) -> None:
        self._revoked[session_id] = max(until, self._revoked.get(session_id, 0.0))

    # Synchronisation

    def resync(self, revoked: dict[str, float]) -> None:
        """Replace the revoked set with Redis's copy and drop every cached user."""
        self._revoked = dict(revoked)
        self._user_epoch += 1
        self._users.clear()
        self.synced = True
        log.info("access_state_resynced", revoked_sessions=len(revoked))

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply one message from the events channel; return False when it is not about sessions or users."""
        kind = event.get("kind")
        if kind == "session_revoked" and isinstance(event.get("sid"), str):
            self.mark_revoked(event["sid"], float(event.get("until", 0)))
            return True
        if kind == "user_changed" and isinstance(event.get("uid"), str):
            self.forget_user(event["uid"])
            return True
        return False

    def stats(self) -> dict[str, int]:
        return {"claims": len(self._claims), "users": len(self._users), "revoked": len(self._revoked)}
