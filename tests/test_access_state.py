"""The per-worker caches: expiry, revocation, resync and the user-change guard."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from service.access_state import AccessState
from service.tokens.access import AccessClaims
from service.users import User


def state(**changes) -> AccessState:
    options = {"claims_max_entries": 100, "user_max_entries": 100, "user_ttl_seconds": 60.0, **changes}
    return AccessState(**options)


def user(user_id: str = "u1", roles: tuple[str, ...] = ()) -> User:
    return User(user_id, f"{user_id}@example.com", "active", datetime.now(UTC), roles)


def test_claims_expire_with_token():
    cache = state()
    cache.remember_claims("live", AccessClaims("u1", "s1", "j1", int(time.time()) + 60))
    cache.remember_claims("dead", AccessClaims("u1", "s1", "j2", int(time.time()) - 1))
    assert cache.cached_claims("live") is not None
    assert cache.cached_claims("dead") is None


def test_claims_cache_is_bounded():
    cache = state(claims_max_entries=100)
    for index in range(250):
        cache.remember_claims(f"token-{index}", AccessClaims("u1", "s1", str(index), int(time.time()) + 60))
    assert cache.stats()["claims"] == 100


def test_revoked_entry_expires():
    cache = state()
    cache.mark_revoked("s1", time.time() + 60)
    cache.mark_revoked("s2", time.time() - 1)
    assert cache.is_revoked("s1") is True
    assert cache.is_revoked("s2") is False
    assert cache.stats()["revoked"] == 1


def test_resync_replaces_revoked_and_users():
    cache = state()
    cache.mark_revoked("stale", time.time() + 60)
    cache.remember_user(user(), cache.user_epoch())
    cache.resync({"fresh": time.time() + 60})
    assert cache.is_revoked("stale") is False
    assert cache.is_revoked("fresh") is True
    assert cache.cached_user("u1") is None
    assert cache.synced is True


def test_user_loaded_during_change_not_cached():
    cache = state()
    epoch = cache.user_epoch()
    cache.apply_event({"kind": "user_changed", "uid": "u1"})
    cache.remember_user(user(roles=("admin",)), epoch)
    assert cache.cached_user("u1") is None


def test_user_cache_expires_after_ttl():
    cache = state(user_ttl_seconds=0.05)
    cache.remember_user(user(), cache.user_epoch())
    assert cache.cached_user("u1") is not None
    time.sleep(0.1)
    assert cache.cached_user("u1") is None


def test_events_applied():
    cache = state()
    cache.remember_user(user(), cache.user_epoch())
    assert cache.apply_event({"kind": "session_revoked", "sid": "s9", "until": time.time() + 60}) is True
    assert cache.apply_event({"kind": "user_changed", "uid": "u1"}) is True
    assert cache.apply_event({"kind": "something_else"}) is False
    assert cache.is_revoked("s9") is True
    assert cache.cached_user("u1") is None
