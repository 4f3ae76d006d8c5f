"""`gatehouse tokens purge`: remove what expired sessions leave behind in Redis.

Sessions, their token sets and refresh tokens carry an absolute expiry, so Redis
drops them itself. What it cannot drop are members of sets that outlive them: the
per-user session index keeps an entry per session until the index itself expires,
and the revoked set keeps ended sessions until the next revocation trims it. The
purge removes those, and, as a safety net, any session past its expires_at and any
token or token set whose session is gone (a key restored or edited without its
expiry, for example).

Every pass walks the keyspace with SCAN in batches, so Redis keeps serving requests
in between. Each removal is safe without a transaction: a session id is never
reused, so a token or index entry whose session is gone can never become valid again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import redis
import structlog

from service.sessions import (
    REVOKED_KEY,
    SessionStore,
    refresh_token_key,
    session_key,
    session_tokens_key,
    user_sessions_key,
)

log = structlog.get_logger(__name__)


def purge_expired(client: redis.Redis, sessions: SessionStore, *, batch_size: int,
                  now: float | None = None) -> dict[str, int]:
    """Remove expired index entries, sessions and tokens; return what was removed and examined.

    It also ends the oldest sessions of accounts that have more live sessions than
    GATEHOUSE_MAX_SESSIONS_PER_USER, as a login would, for a maximum that was lowered.
    """
    now = now if now is not None else time.time()
    counts: Counter[str] = Counter()

    _purge_user_indexes(client, sessions, batch_size, now, counts)
    _purge_expired_sessions(client, batch_size, now, counts)
    _purge_orphaned_token_sets(client, batch_size, counts)
    _purge_orphaned_refresh_tokens(client, batch_size, counts)
    counts["revoked_entries_removed"] += client.zremrangebyscore(REVOKED_KEY, "-inf", now)

    return {name: counts[name] for name in (
        "index_entries_removed", "sessions_removed", "token_sets_removed", "refresh_tokens_removed",
        "revoked_entries_removed", "sessions_evicted", "keys_examined",
    )}


def _batches(client: redis.Redis, pattern: str, key_type: str, batch_size: int) -> Iterator[list[str]]:
    """Yield the keys matching pattern and of key_type, at most batch_size at a time."""
    batch: list[str] = []
    for key in client.scan_iter(match=pattern, count=batch_size, _type=key_type):
        batch.append(key)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sessions_exist(client: redis.Redis, session_ids: list[str]) -> list[bool]:
    pipe = client.pipeline(transaction=False)
    for session_id in session_ids:
        pipe.exists(session_key(session_id))
    return [bool(found) for found in pipe.execute()]


def _purge_user_indexes(client: redis.Redis, sessions: SessionStore, batch_size: int, now: float,
                        counts: Counter[str]) -> None:
    """Drop index entries scored before now and those whose session no longer exists, then enforce the maximum."""
    prefix, suffix = user_sessions_key("*").split("*")
    for keys in _batches(client, user_sessions_key("*"), "zset", batch_size):
        counts["keys_examined"] += len(keys)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.zremrangebyscore(key, "-inf", now)
        counts["index_entries_removed"] += sum(pipe.execute())

        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.zrange(key, 0, -1)
        entries = [(key, sid) for key, session_ids in zip(keys, pipe.execute(), strict=True) for sid in session_ids]
        exists = _sessions_exist(client, [sid for _, sid in entries])
        missing: dict[str, list[str]] = {}
        for (key, sid), found in zip(entries, exists, strict=True):
            if not found:
                missing.setdefault(key, []).append(sid)
        if missing:
            pipe = client.pipeline(transaction=False)
            for key, session_ids in missing.items():
                pipe.zrem(key, *session_ids)
            counts["index_entries_removed"] += sum(pipe.execute())

        # Every entry left is a live session, so an index longer than the maximum is over it.
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.zcard(key)
        for key, live in zip(keys, pipe.execute(), strict=True):
            if live > sessions.max_sessions_per_user:
                user_id = key.removeprefix(prefix).removesuffix(suffix)
                counts["sessions_evicted"] += len(sessions.enforce_maximum(user_id, now))


def _purge_expired_sessions(client: redis.Redis, batch_size: int, now: float, counts: Counter[str]) -> None:
    """Delete sessions whose expires_at has passed but whose key did not expire, with their tokens."""
    prefix = session_key("")
    for keys in _batches(client, session_key("*"), "hash", batch_size):
        counts["keys_examined"] += len(keys)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "uid", "expires_at")
        expired = [(key.removeprefix(prefix), uid) for key, (uid, expires_at) in zip(keys, pipe.execute(), strict=True)
                   if expires_at is not None and float(expires_at) <= now]
        for session_id, user_id in expired:
            digests = client.smembers(session_tokens_key(session_id))
            pipe = client.pipeline(transaction=False)
            for token_digest in digests:
                pipe.delete(refresh_token_key(token_digest))
            pipe.delete(session_tokens_key(session_id), session_key(session_id))
            if user_id:
                pipe.zrem(user_sessions_key(user_id), session_id)
            results = pipe.execute()
            counts["refresh_tokens_removed"] += sum(results[:len(digests)])
            counts["sessions_removed"] += 1
            if user_id:
                counts["index_entries_removed"] += results[-1]


def _purge_orphaned_token_sets(client: redis.Redis, batch_size: int, counts: Counter[str]) -> None:
    """Delete token sets whose session is gone, together with the tokens they list."""
    prefix = session_key("")
    suffix = session_tokens_key("").removeprefix(prefix)
    for keys in _batches(client, session_tokens_key("*"), "set", batch_size):
        counts["keys_examined"] += len(keys)
        session_ids = [key.removeprefix(prefix).removesuffix(suffix) for key in keys]
        for key, found in zip(keys, _sessions_exist(client, session_ids), strict=True):
            if found:
                continue
            digests = client.smembers(key)
            pipe = client.pipeline(transaction=False)
            for token_digest in digests:
                pipe.delete(refresh_token_key(token_digest))
            pipe.delete(key)
            results = pipe.execute()
            counts["refresh_tokens_removed"] += sum(results[:-1])
            counts["token_sets_removed"] += results[-1]


def _purge_orphaned_refresh_tokens(client: redis.Redis, batch_size: int, counts: Counter[str]) -> None:
    """Delete refresh tokens whose session is gone."""
    for keys in _batches(client, refresh_token_key("*"), "hash", batch_size):
        counts["keys_examined"] += len(keys)
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "sid")
        session_ids = pipe.execute()
        known = [(key, sid) for key, sid in zip(keys, session_ids, strict=True) if sid]
        exists = _sessions_exist(client, [sid for _, sid in known])
        orphans = [key for (key, _), found in zip(known, exists, strict=True) if not found]
        orphans += [key for key, sid in zip(keys, session_ids, strict=True) if not sid]
        if orphans:
            counts["refresh_tokens_removed"] += client.delete(*orphans)
