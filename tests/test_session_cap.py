"""SessionStore's maximum of live sessions per user, against the real test Redis.

The HTTP behaviour of an ended session is in tests/blueprints/test_sessions.py, and
parallel logins through gunicorn are in tests/e2e/test_session_cap.py.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.config import Settings
from service.redis_store import close_client, create_client
from service.sessions import (
    EVENTS_CHANNEL,
    REVOKED_KEY,
    RefreshOutcome,
    SessionStore,
    digest,
    refresh_token_key,
    session_key,
    session_tokens_key,
    user_sessions_key,
)

SESSION_TTL = 30 * 86400
REVOKED_TTL = 900
USER = "cap-user"


@pytest.fixture
def redis_client(settings: Settings):
    client = create_client(settings)
    yield client
    close_client(client)


class RevocationRecorder:
    """The on_revoked callback: records each call, from any thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, session_id: str, until: float) -> None:
        with self._lock:
            self.calls.append((session_id, until))

    @property
    def session_ids(self) -> list[str]:
        return [session_id for session_id, _ in self.calls]


def make_store(client, max_sessions: int, recorder: RevocationRecorder | None = None,
               session_ttl: int = SESSION_TTL) -> SessionStore:
    return SessionStore(client, session_ttl=session_ttl, grace_seconds=10, revoked_ttl=REVOKED_TTL,
                        max_sessions_per_user=max_sessions, on_revoked=recorder)


def create_sessions(store: SessionStore, count: int, start: float, user_id: str = USER) -> list[tuple[str, str]]:
    """Start COUNT sessions one second apart from START; return (session id, refresh token) pairs, oldest first."""
    return [store.create(user_id, user_agent="test", ip="127.0.0.1", now=start + index) for index in range(count)]


def test_cap_keeps_newest_sessions(redis_client):
    recorder = RevocationRecorder()
    store = make_store(redis_client, 3, recorder)
    start = time.time() - 10

    created = create_sessions(store, 5, start)

    listed = [session.id for session in store.list(USER)]
    assert listed == [session_id for session_id, _ in reversed(created[2:])]
    assert redis_client.zcard(user_sessions_key(USER)) == 3
    assert recorder.session_ids == [created[0][0], created[1][0]]


def test_cap_ends_evicted_like_revoke(redis_client):
    recorder = RevocationRecorder()
    store = make_store(redis_client, 2, recorder)
    start = time.time() - 10
    (oldest_id, oldest_token), *_ = create_sessions(store, 3, start)
    now = start + 2

    assert not redis_client.exists(session_key(oldest_id))
    assert not redis_client.exists(session_tokens_key(oldest_id))
    assert not redis_client.exists(refresh_token_key(digest(oldest_token)))
    assert store.is_revoked(oldest_id)
    assert redis_client.zscore(REVOKED_KEY, oldest_id) == int(now + REVOKED_TTL)
    assert recorder.calls == [(oldest_id, int(now + REVOKED_TTL))]
    assert store.rotate(oldest_token).outcome is RefreshOutcome.INVALID


def test_cap_evicts_rotated_session_tokens(redis_client):
    store = make_store(redis_client, 1)
    session_id, first_token = store.create(USER, user_agent="test", ip="127.0.0.1")
    second_token = store.rotate(first_token).refresh_token
    assert second_token is not None

    store.create(USER, user_agent="test", ip="127.0.0.1")

    assert store.is_revoked(session_id)
    assert not redis_client.exists(refresh_token_key(digest(first_token)))
    assert not redis_client.exists(refresh_token_key(digest(second_token)))
    assert store.rotate(second_token).outcome is RefreshOutcome.INVALID


def test_cap_publishes_revocation_event(redis_client):
    store = make_store(redis_client, 1)
    first_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1")
    pubsub = redis_client.pubsub()
    pubsub.subscribe(EVENTS_CHANNEL)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"

    now = time.time()
    store.create(USER, user_agent="test", ip="127.0.0.1", now=now)

    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message is not None
    assert json.loads(message["data"]) == {"kind": "session_revoked", "sid": first_id,
                                           "until": int(now + REVOKED_TTL)}


def test_cap_below_limit_ends_nothing(redis_client):
    recorder = RevocationRecorder()
    store = make_store(redis_client, 3, recorder)

    created = create_sessions(store, 3, time.time() - 10)

    assert len(store.list(USER)) == 3
    assert recorder.calls == []
    assert redis_client.zcard(REVOKED_KEY) == 0
    assert all(redis_client.exists(session_key(session_id)) for session_id, _ in created)


def test_cap_counts_each_user_apart(redis_client):
    store = make_store(redis_client, 2)
    start = time.time() - 10

    create_sessions(store, 2, start, user_id="first-user")
    create_sessions(store, 2, start + 5, user_id="second-user")

    assert len(store.list("first-user")) == 2
    assert len(store.list("second-user")) == 2
    assert redis_client.zcard(REVOKED_KEY) == 0


def test_cap_orders_by_creation_not_expiry(redis_client):
    # A session started before GATEHOUSE_SESSION_TTL_SECONDS was lowered expires after
    # newer ones, so the index score alone would pick a newer session.
    start = time.time() - 10
    long_lived = make_store(redis_client, 2, session_ttl=SESSION_TTL)
    oldest_id, _ = long_lived.create(USER, user_agent="test", ip="127.0.0.1", now=start)
    short_lived = make_store(redis_client, 2, session_ttl=3600)

    newer = create_sessions(short_lived, 2, start + 1)

    assert short_lived.is_revoked(oldest_id)
    assert [session.id for session in short_lived.list(USER)] == [session_id for session_id, _ in reversed(newer)]


def test_cap_keeps_new_session_under_skew(redis_client):
    # Another worker whose clock is ahead started the existing session "later" than the new one.
    store = make_store(redis_client, 1)
    now = time.time()
    ahead_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1", now=now + 60)

    new_id, new_token = store.create(USER, user_agent="test", ip="127.0.0.1", now=now)

    assert store.is_revoked(ahead_id)
    assert [session.id for session in store.list(USER)] == [new_id]
    assert store.rotate(new_token).outcome is RefreshOutcome.ROTATED


def test_cap_breaks_creation_ties_by_id(redis_client):
    recorder = RevocationRecorder()
    store = make_store(redis_client, 2, recorder)
    now = time.time()
    tied = [store.create(USER, user_agent="test", ip="127.0.0.1", now=now)[0] for _ in range(2)]

    newest_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1", now=now)

    assert recorder.session_ids == [min(tied)]
    assert {session.id for session in store.list(USER)} == {max(tied), newest_id}


def test_cap_ignores_expired_index_entries(redis_client):
    recorder = RevocationRecorder()
    store = make_store(redis_client, 2, recorder)
    older_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1", now=time.time() - 10)
    # Redis drops the keys of a session whose expiry has passed, but not its index entry,
    # which the purge job removes later.
    expired_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1", now=time.time() - SESSION_TTL - 60)

    newest_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1")

    assert recorder.calls == []
    assert redis_client.zscore(user_sessions_key(USER), expired_id) is not None
    assert [session.id for session in store.list(USER)] == [newest_id, older_id]


def test_cap_drops_index_entry_without_session(redis_client):
    recorder = RevocationRecorder()
    store = make_store(redis_client, 2, recorder)
    start = time.time() - 10
    (first_id, _), (second_id, _) = create_sessions(store, 2, start)
    redis_client.zadd(user_sessions_key(USER), {"f" * 32: int(start + SESSION_TTL)})

    third_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1", now=start + 5)

    assert recorder.session_ids == [first_id]
    assert redis_client.zscore(user_sessions_key(USER), "f" * 32) is None
    assert redis_client.zscore(REVOKED_KEY, "f" * 32) is None
    assert [session.id for session in store.list(USER)] == [third_id, second_id]


def test_cap_lowered_ends_every_excess_session(redis_client):
    # Sessions started under a higher maximum, or before the maximum existed, all end at
    # the account's next login.
    start = time.time() - 100
    created = create_sessions(make_store(redis_client, 50), 30, start)
    recorder = RevocationRecorder()
    lowered = make_store(redis_client, 5, recorder)

    newest_id, _ = lowered.create(USER, user_agent="test", ip="127.0.0.1", now=start + 50)

    assert recorder.session_ids == [session_id for session_id, _ in created[:26]]
    assert [session.id for session in lowered.list(USER)] == (
        [newest_id] + [session_id for session_id, _ in reversed(created[26:])])


@pytest.mark.parametrize("max_sessions", [1, 5])
def test_cap_holds_under_parallel_creates(redis_client, max_sessions):
    recorder = RevocationRecorder()
    store = make_store(redis_client, max_sessions, recorder)
    creates = 60
    start_together = threading.Barrier(creates)
    observed: list[int] = []
    finished = threading.Event()

    def create(_index: int) -> str:
        start_together.wait(timeout=30)
        session_id, _ = store.create(USER, user_agent="test", ip="127.0.0.1")
        return session_id

    def watch() -> None:
        # Each read runs between two scripts, so it never counts more than the maximum.
        while not finished.is_set():
            observed.append(redis_client.zcount(user_sessions_key(USER), time.time(), "+inf"))

    watcher = threading.Thread(target=watch, name="session-count-watcher")
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=creates) as pool:
            created = list(pool.map(create, range(creates)))
    finally:
        finished.set()
        watcher.join(timeout=30)

    listed = {session.id for session in store.list(USER)}
    assert len(listed) == max_sessions
    assert listed <= set(created)
    assert observed
    assert max(observed) <= max_sessions
    assert len(recorder.session_ids) == creates - max_sessions
    assert set(recorder.session_ids) == set(created) - listed
    assert all(store.is_revoked(session_id) for session_id in recorder.session_ids)
