"""Sessions and their refresh tokens in Redis, with atomic rotation and reuse detection.

Keys (all under the gh: prefix):
    rt:<sha256>          hash  sid, uid, rotated_at ("" while current); expires with the session
    sess:<sid>           hash  uid, created_at, last_used_at, expires_at, user_agent, ip
    sess:<sid>:tokens    set   digests of every refresh token the session issued
    user:<uid>:sessions  zset  session ids scored by expires_at
    revoked:<sid>        str   present while access tokens of an ended session may still be live

Raw refresh tokens are never stored: only their SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis

from service.redis_store import KEY_PREFIX

# 32 random bytes: 256 bits, URL-safe base64 without padding (43 characters).
REFRESH_TOKEN_BYTES = 32

# Deletes a session, its tokens and index entry, and marks it revoked for the
# lifetime of its access tokens. Shared by the rotate and revoke scripts.
_REVOKE_LUA = """
local function revoke(prefix, sid, uid, revoked_ttl)
    local tokens_key = prefix .. 'sess:' .. sid .. ':tokens'
    for _, digest in ipairs(redis.call('SMEMBERS', tokens_key)) do
        redis.call('DEL', prefix .. 'rt:' .. digest)
    end
    redis.call('DEL', tokens_key, prefix .. 'sess:' .. sid)
    if uid then
        redis.call('ZREM', prefix .. 'user:' .. uid .. ':sessions', sid)
    end
    redis.call('SET', prefix .. 'revoked:' .. sid, '1', 'EX', revoked_ttl)
end
"""

# KEYS[1] = rt:<presented digest>, KEYS[2] = rt:<new digest>
# ARGV: prefix, now, grace seconds, new digest, revoked ttl
# NOTE: the session keys are derived inside the script, which is fine on a single
# Redis or behind Sentinel but would not hash to one slot on Redis Cluster.
_ROTATE_LUA = _REVOKE_LUA + """
local prefix, now, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = redis.call('HMGET', KEYS[1], 'sid', 'uid', 'rotated_at')
local sid, uid, rotated_at = fields[1], fields[2], fields[3]
if not sid then
    return {'invalid'}
end
local session_key = prefix .. 'sess:' .. sid
local expires_at = redis.call('HGET', session_key, 'expires_at')
if not expires_at then
    return {'invalid'}
end

local outcome = 'rotated'
if rotated_at and rotated_at ~= '' then
    if now - tonumber(rotated_at) > grace then
        revoke(prefix, sid, uid, tonumber(ARGV[5]))
        return {'reuse_detected', sid, uid}
    end
    outcome = 'grace'
else
    redis.call('HSET', KEYS[1], 'rotated_at', ARGV[2])
end

redis.call('HSET', KEYS[2], 'sid', sid, 'uid', uid, 'rotated_at', '')
redis.call('EXPIREAT', KEYS[2], expires_at)
redis.call('SADD', session_key .. ':tokens', ARGV[4])
redis.call('HSET', session_key, 'last_used_at', ARGV[2])
return {outcome, sid, uid}
"""

# ARGV: prefix, sid, revoked ttl
_REVOKE_SESSION_LUA = _REVOKE_LUA + """
local uid = redis.call('HGET', ARGV[1] .. 'sess:' .. ARGV[2], 'uid')
revoke(ARGV[1], ARGV[2], uid, tonumber(ARGV[3]))
if uid then return 1 end
return 0
"""


class RefreshOutcome(StrEnum):
    ROTATED = "rotated"
    GRACE = "grace"
    REUSE_DETECTED = "reuse_detected"
    INVALID = "invalid"


@dataclass(frozen=True)
class Rotation:
    outcome: RefreshOutcome
    session_id: str | None = None
    user_id: str | None = None
    refresh_token: str | None = None


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def digest(refresh_token: str) -> str:
    return hashlib.sha256(refresh_token.encode()).hexdigest()


class SessionStore:
    """Create, rotate and revoke sessions; every change is atomic in Redis."""

    def __init__(self, client: redis.Redis, *, session_ttl: int, grace_seconds: float,
                 revoked_ttl: int) -> None:
        self._redis = client
        self._session_ttl = session_ttl
        self._grace_seconds = grace_seconds
        # Long enough to outlive every access token issued for a revoked session.
        self._revoked_ttl = revoked_ttl
        self._rotate = client.register_script(_ROTATE_LUA)
        self._revoke = client.register_script(_REVOKE_SESSION_LUA)

    def create(self, user_id: str, *, user_agent: str, ip: str, now: float | None = None) -> tuple[str, str]:
        """Start a session; return its id and first refresh token."""
        now = now if now is not None else time.time()
        session_id = uuid.uuid4().hex
        refresh_token = new_refresh_token()
        token_digest = digest(refresh_token)
        expires_at = int(now + self._session_ttl)
        session_key = f"{KEY_PREFIX}sess:{session_id}"
        user_key = f"{KEY_PREFIX}user:{user_id}:sessions"

        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(session_key, mapping={
            "uid": user_id, "created_at": now, "last_used_at": now, "expires_at": expires_at,
            "user_agent": user_agent[:256], "ip": ip,
        })
        pipe.expireat(session_key, expires_at)
        pipe.hset(f"{KEY_PREFIX}rt:{token_digest}", mapping={"sid": session_id, "uid": user_id, "rotated_at": ""})
        pipe.expireat(f"{KEY_PREFIX}rt:{token_digest}", expires_at)
        pipe.sadd(f"{session_key}:tokens", token_digest)
        pipe.expireat(f"{session_key}:tokens", expires_at)
        pipe.zadd(user_key, {session_id: expires_at})
        # Expired members are left for the purge job; the index itself lives as long as its newest session.
        pipe.expireat(user_key, expires_at, gt=True)
        pipe.expireat(user_key, expires_at, nx=True)
        pipe.execute()
        return session_id, refresh_token

    def rotate(self, refresh_token: str, now: float | None = None) -> Rotation:
        """Exchange a refresh token for a new one of the same session.

        A token already rotated more than grace_seconds ago is reuse: the whole
        session is revoked. Within the grace interval a concurrent refresh gets its
        own new token, and both new tokens stay valid.
        """
        now = now if now is not None else time.time()
        new_token = new_refresh_token()
        new_digest = digest(new_token)
        result = self._rotate(
            keys=[f"{KEY_PREFIX}rt:{digest(refresh_token)}", f"{KEY_PREFIX}rt:{new_digest}"],
            args=[KEY_PREFIX, repr(now), repr(self._grace_seconds), new_digest, self._revoked_ttl],
        )
        outcome = RefreshOutcome(result[0])
        if outcome in (RefreshOutcome.INVALID, RefreshOutcome.REUSE_DETECTED):
            return Rotation(outcome, *result[1:3])

        return Rotation(outcome, result[1], result[2], new_token)

    def revoke(self, session_id: str) -> bool:
        """End a session and all its tokens; return whether it still existed."""
        return bool(self._revoke(keys=[], args=[KEY_PREFIX, session_id, self._revoked_ttl]))

    def is_revoked(self, session_id: str) -> bool:
        return bool(self._redis.exists(f"{KEY_PREFIX}revoked:{session_id}"))
