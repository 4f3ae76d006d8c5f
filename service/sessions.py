"""Sessions and their refresh tokens in Redis, with atomic rotation and reuse detection.

Keys (all under the gh: prefix):
    rt:<sha256>          hash  sid, uid, exp (session end), rotated_at ("" while current), generation;
                               kept one day past the session's end, so a late refresh reads as expired
    sess:<sid>           hash  uid, created_at, last_used_at, expires_at, user_agent, ip, generation
    sess:<sid>:tokens    set   digests of every refresh token the session issued
    user:<uid>:sessions  zset  session ids scored by expires_at
    revoked              zset  ended session ids scored by the time their last access token expires

Raw refresh tokens are never stored: only their SHA-256 digests. Every revocation
is published on the events channel (see service.sync) after it is stored. The Lua
scripts that make each change atomic are in service.session_scripts.

Generations keep a session to one chain of refresh tokens. The session stores the
generation of its newest tokens, and each token stores the generation it was issued
in. Only a token of the session's generation can rotate, which advances the session
by one. A grace refresh issues another token of the current generation without
advancing it. So of several such siblings only the first one to rotate continues,
and presenting any of the others afterwards is reuse. Records written before generations existed lack the field,
which reads as 0, and a session gets the field on its first refresh.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import structlog
from redis.commands.core import Script

from service import metrics, redis_store, session_scripts
from service.redis_store import KEY_PREFIX

log = structlog.get_logger(__name__)

# 32 random bytes: 256 bits, URL-safe base64 without padding (43 characters).
REFRESH_TOKEN_BYTES = 32
# Refresh-token records outlive their session by this much, so that presenting one
# soon after the session ended is reported as expired rather than unknown.
TOKEN_RETENTION_SECONDS = 86400
# A spent token may be presented again this many times within the grace interval
# (concurrent tabs, retried requests); one more is treated as reuse, so a thief who
# replays it quickly cannot mint tokens without limit.
MAX_GRACE_REFRESHES = 5
# At most this many ids of sessions ended by the per-user maximum go into one log line.
MAX_LOGGED_EVICTIONS = 20
REVOKED_KEY = f"{KEY_PREFIX}revoked"
EVENTS_CHANNEL = f"{KEY_PREFIX}events"

class WriteNotReplicated(redis.ConnectionError):
    """A session write went to a replaced master, and no replica acknowledged it within the WAIT timeout.

    The new master never receives the write. As a subclass of
    redis.ConnectionError it gets the Redis failure policy: 503 with Retry-After,
    and the client retries with the token it still holds.
    """

    def __init__(self, acknowledged: int, required: int) -> None:
        super().__init__(f"{acknowledged} of {required} replicas acknowledged the session write in time")
        self.acknowledged = acknowledged
        self.required = required


class RefreshOutcome(StrEnum):
    ROTATED = "rotated"
    GRACE = "grace"
    REUSE_DETECTED = "reuse_detected"
    EXPIRED = "expired"
    INVALID = "invalid"


class ReuseReason(StrEnum):
    # A spent token came back after the grace interval, beyond the grace cap, or after
    # the token its rotation issued had itself been rotated.
    REPLAYED = "replayed"
    # An unspent token of a generation that another token already advanced past.
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Rotation:
    outcome: RefreshOutcome
    session_id: str | None = None
    user_id: str | None = None
    refresh_token: str | None = None
    reuse_reason: ReuseReason | None = None


@dataclass(frozen=True)
class SessionInfo:
    id: str
    created_at: float
    last_used_at: float
    expires_at: int
    user_agent: str
    ip: str


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


class SessionStore:
    """Create, rotate, list and revoke sessions; every change is atomic in Redis."""

    def __init__(self, client: redis.Redis, *, session_ttl: int, grace_seconds: float,
                 revoked_ttl: int, max_sessions_per_user: int,
                 on_revoked: Callable[[str, float], None] | None = None,
                 wait_replicas: int = 0, wait_timeout_seconds: float = 0.5) -> None:
        self._redis = client
        # With wait_replicas > 0, a new session or rotated token counts as stored only
        # once that many replicas have it, so a failover cannot lose it (see _write).
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, round(wait_timeout_seconds * 1000))
        self._unreplicated_since: float | None = None
        # Applies a revocation to this worker's memory at once; other workers learn it
        # from the events channel a moment later.
        self._on_revoked = on_revoked or (lambda _session_id, _until: None)
        self._session_ttl = session_ttl
        self._grace_seconds = grace_seconds
        # Long enough to outlive every access token issued for a revoked session.
        self._revoked_ttl = revoked_ttl
        self._max_sessions_per_user = max_sessions_per_user
        self._create = client.register_script(session_scripts.CREATE_LUA)
        self._rotate = client.register_script(session_scripts.ROTATE_LUA)
        self._revoke = client.register_script(session_scripts.REVOKE_SESSION_LUA)
        self._revoke_user = client.register_script(session_scripts.REVOKE_USER_LUA)
        self._trim_user = client.register_script(session_scripts.TRIM_USER_LUA)

    def create(self, user_id: str, *, user_agent: str, ip: str, now: float | None = None) -> tuple[str, str]:
        """Start a session and return its id and first refresh token.

        When the user would then have more than max_sessions_per_user live sessions,
        the same script revokes the oldest ones by creation time, as revoke() does, so
        concurrent logins cannot leave more.
        """
        now = now if now is not None else time.time()
        session_id = uuid.uuid4().hex
        refresh_token = new_refresh_token()
        token_digest = digest(refresh_token)
        expires_at = int(now + self._session_ttl)
        session_key = f"{KEY_PREFIX}sess:{session_id}"
        user_key = f"{KEY_PREFIX}user:{user_id}:sessions"

        revoked_until = self._revoked_until(now)
        evicted = self._write(
            self._create,
            keys=[session_key, f"{KEY_PREFIX}rt:{token_digest}", f"{session_key}:tokens", user_key],
            args=[session_id, user_id, repr(now), expires_at, user_agent[:256], ip, token_digest,
                  TOKEN_RETENTION_SECONDS, KEY_PREFIX, revoked_until, self._max_sessions_per_user],
        )
        self._report_evicted(user_id, evicted, revoked_until, cause="login")
        return session_id, refresh_token

    @property
    def max_sessions_per_user(self) -> int:
        return self._max_sessions_per_user

    def enforce_maximum(self, user_id: str, now: float | None = None) -> list[str]:
        """End a user's oldest live sessions beyond max_sessions_per_user; return their ids, oldest first.

        A login does the same for its own account in the script that creates its session.
        This is for accounts that were over the maximum before it was lowered, and that
        no login has brought back within it (the purge job).
        """
        now = now if now is not None else time.time()
        revoked_until = self._revoked_until(now)
        evicted = self._trim_user(keys=[user_sessions_key(user_id)],
                                  args=[KEY_PREFIX, user_id, repr(now), self._max_sessions_per_user, revoked_until])
        self._report_evicted(user_id, evicted, revoked_until, cause="maximum_lowered")
        return evicted

    def _report_evicted(self, user_id: str, evicted: list[str], revoked_until: int, *, cause: str) -> None:
        if not evicted:
            return

        for evicted_id in evicted:
            self._on_revoked(evicted_id, revoked_until)
        metrics.SESSIONS_EVICTED.inc(len(evicted))
        log.info("sessions_evicted", user_id=user_id, count=len(evicted), cause=cause,
                 max_sessions=self._max_sessions_per_user, session_ids=evicted[:MAX_LOGGED_EVICTIONS])

    def find_token_owner(self, refresh_token: str) -> tuple[str, str] | None:
        """Return the session id and user id of a refresh token without spending it; None when unknown."""
        session_id, user_id = self._redis.hmget(f"{KEY_PREFIX}rt:{digest(refresh_token)}", "sid", "uid")
        if session_id is None or user_id is None:
            return None

        return session_id, user_id

    def rotate(self, refresh_token: str, now: float | None = None) -> Rotation:
        """Exchange a refresh token for a new one of the same session.

        A token already rotated more than grace_seconds ago is reuse: the whole
        session is revoked. Within the grace interval a concurrent refresh gets a
        sibling of the token that the rotation issued. The first of those siblings to
        rotate continues the session, and presenting any other one afterwards is reuse.
        """
        now = now if now is not None else time.time()
        new_token = new_refresh_token()
        new_digest = digest(new_token)
        result = self._write(
            self._rotate,
            keys=[f"{KEY_PREFIX}rt:{digest(refresh_token)}", f"{KEY_PREFIX}rt:{new_digest}"],
            args=[KEY_PREFIX, repr(now), repr(self._grace_seconds), new_digest, self._revoked_until(now),
                  TOKEN_RETENTION_SECONDS, MAX_GRACE_REFRESHES],
        )
        outcome = RefreshOutcome(result[0])
        if outcome is RefreshOutcome.REUSE_DETECTED:
            self._on_revoked(result[1], self._revoked_until(now))
            return Rotation(outcome, result[1], result[2], reuse_reason=ReuseReason(result[3]))
        if outcome is not RefreshOutcome.ROTATED and outcome is not RefreshOutcome.GRACE:
            return Rotation(outcome)

        return Rotation(outcome, result[1], result[2], new_token)

    def _write(self, script: Script, *, keys: list[str], args: list[object]) -> Any:
        """Run a session-writing script, then with wait_replicas wait until that many replicas have it.

        WAIT counts the writes of its own connection, so both commands run on one
        connection held for the purpose. A shortfall has two causes. Either the
        write went to a master that a failover has replaced (its replica was
        promoted), and then the write is lost: WriteNotReplicated turns it into a
        503 before the client sees a token that the new master lacks. Or replicas
        are slow or absent, as for some seconds after a failover until Sentinel
        attaches the old master to the new one: the write remains on the current
        master, and the shortfall is logged and counted.
        """
        if not self._wait_replicas:
            return script(keys=keys, args=args)

        client = redis.Redis(connection_pool=self._redis.connection_pool, single_connection_client=True)
        try:
            result = script(keys=keys, args=args, client=client)
            acknowledged = client.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
            address = (client.connection.host, client.connection.port) if client.connection else None
        finally:
            client.close()

        if acknowledged >= self._wait_replicas:
            if self._unreplicated_since is not None:
                log.info("session_writes_replicated", after_seconds=round(time.monotonic() - self._unreplicated_since, 1))
                self._unreplicated_since = None
            return result

        if redis_store.is_stale_master(self._redis, address):
            metrics.SESSION_WRITES_UNREPLICATED.labels(result="refused").inc()
            raise WriteNotReplicated(acknowledged, self._wait_replicas)

        metrics.SESSION_WRITES_UNREPLICATED.labels(result="accepted").inc()
        if self._unreplicated_since is None:
            # One line per streak, however many writes fall short in it.
            self._unreplicated_since = time.monotonic()
            log.warning("session_writes_unreplicated", acknowledged=acknowledged, required=self._wait_replicas,
                        timeout_ms=self._wait_timeout_ms)
        return result

    def revoke(self, session_id: str, *, user_id: str | None = None, even_if_missing: bool = False) -> bool:
        """End a session and all its tokens; return whether it existed (and belonged to user_id, if given).

        With even_if_missing, a session id that Redis does not hold goes into the revoked
        set anyway, so its access tokens stop working. Only for an id taken from a
        verified access token: its owner is the caller.
        """
        now = time.time()
        args = [KEY_PREFIX, session_id, self._revoked_until(now), repr(now), user_id or "",
                "1" if even_if_missing else ""]
        revoked = bool(self._revoke(keys=[], args=args))
        if revoked or even_if_missing:
            self._on_revoked(session_id, self._revoked_until(now))
        return revoked

    def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        """End every session of a user except `keep`; return how many ended."""
        now = time.time()
        args = [KEY_PREFIX, user_id, self._revoked_until(now), repr(now), keep or ""]
        revoked = self._revoke_user(keys=[], args=args)
        for session_id in revoked:
            self._on_revoked(session_id, self._revoked_until(now))
        return len(revoked)

    def list(self, user_id: str, now: float | None = None) -> list[SessionInfo]:
        """Return the user's live sessions, newest first."""
        now = now if now is not None else time.time()
        session_ids = self._redis.zrangebyscore(f"{KEY_PREFIX}user:{user_id}:sessions", now, "+inf")
        pipe = self._redis.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.hgetall(f"{KEY_PREFIX}sess:{session_id}")
        sessions = [
            SessionInfo(session_id, float(fields["created_at"]), float(fields["last_used_at"]),
                        int(fields["expires_at"]), fields.get("user_agent", ""), fields.get("ip", ""))
            for session_id, fields in zip(session_ids, pipe.execute(), strict=True) if fields
        ]
        return sorted(sessions, key=lambda session: session.created_at, reverse=True)

    def revoked_sessions(self, now: float | None = None) -> dict[str, float]:
        """Return every revoked session id whose access tokens may still be live, with that deadline."""
        now = now if now is not None else time.time()
        return dict(self._redis.zrangebyscore(REVOKED_KEY, now, "+inf", withscores=True))

    def is_revoked(self, session_id: str, now: float | None = None) -> bool:
        """Ask Redis whether a session was revoked; the slow path when the in-memory set is not in sync."""
        until = self._redis.zscore(REVOKED_KEY, session_id)
        return until is not None and until > (now if now is not None else time.time())

    def _revoked_until(self, now: float) -> int:
        return int(now + self._revoked_ttl)


# Key names for code outside this module that walks the keyspace, such as the purge
# job. Passing "*" as the argument gives the SCAN pattern of that kind of key.
def refresh_token_key(token_digest: str) -> str:
    return f"{KEY_PREFIX}rt:{token_digest}"


def session_key(session_id: str) -> str:
    return f"{KEY_PREFIX}sess:{session_id}"


def session_tokens_key(session_id: str) -> str:
    return f"{KEY_PREFIX}sess:{session_id}:tokens"


def user_sessions_key(user_id: str) -> str:
    return f"{KEY_PREFIX}user:{user_id}:sessions"
