"""The token purge against the real test Redis: what it removes, what it keeps, and the job around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from service.maintenance.jobs import EXIT_LOCKED, lock_key, read_record
from service.maintenance.purge import purge_expired
from service.sessions import (
    REVOKED_KEY,
    RefreshOutcome,
    SessionStore,
    digest,
    refresh_token_key,
    session_key,
    session_tokens_key,
    user_sessions_key,
)
from tests.helpers import ROOT

SESSION_TTL = 30 * 86400


def create_expired(sessions, user_id: str) -> str:
    """Start a session whose expiry passed a minute ago; Redis drops its keys but not its index entry."""
    session_id, _ = sessions.create(user_id, user_agent="test", ip="127.0.0.1", now=time.time() - SESSION_TTL - 60)
    return session_id


def run_purge_command(*extra_env: tuple[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **dict(extra_env)}
    return subprocess.run([sys.executable, "-m", "service.cli", "tokens", "purge"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def log_events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_purge_removes_stale_index_entries(redis_client, sessions):
    live_id, live_token = sessions.create("u1", user_agent="test", ip="127.0.0.1")
    expired_id = create_expired(sessions, "u1")

    counts = purge_expired(redis_client, sessions, batch_size=10)

    assert counts["index_entries_removed"] == 1
    assert redis_client.zrange(user_sessions_key("u1"), 0, -1) == [live_id]
    assert not redis_client.exists(session_key(expired_id))
    assert sessions.rotate(live_token).outcome is RefreshOutcome.ROTATED


def test_purge_removes_session_without_expiry(redis_client, sessions):
    session_id, token = sessions.create("u2", user_agent="test", ip="127.0.0.1")
    # A session whose keys lost their expiry, as after a hand edit or a partial restore.
    for key in (session_key(session_id), session_tokens_key(session_id), refresh_token_key(digest(token)),
                user_sessions_key("u2")):
        redis_client.persist(key)
    redis_client.hset(session_key(session_id), "expires_at", int(time.time()) - 1)

    counts = purge_expired(redis_client, sessions, batch_size=10)

    assert counts["sessions_removed"] == 1
    assert counts["refresh_tokens_removed"] == 1
    assert counts["index_entries_removed"] == 1
    assert not redis_client.exists(session_key(session_id))
    assert not redis_client.exists(session_tokens_key(session_id))
    assert not redis_client.exists(refresh_token_key(digest(token)))
    assert sessions.rotate(token).outcome is RefreshOutcome.INVALID


def test_purge_removes_orphaned_tokens(redis_client, sessions):
    session_id, token = sessions.create("u3", user_agent="test", ip="127.0.0.1")
    rotated = sessions.rotate(token)
    redis_client.delete(session_key(session_id))

    counts = purge_expired(redis_client, sessions, batch_size=10)

    assert counts["token_sets_removed"] == 1
    assert counts["refresh_tokens_removed"] == 2
    assert not redis_client.exists(session_tokens_key(session_id))
    assert not redis_client.exists(refresh_token_key(digest(token)))
    assert not redis_client.exists(refresh_token_key(digest(rotated.refresh_token)))


def test_purge_removes_lone_refresh_token(redis_client, sessions):
    redis_client.hset(refresh_token_key("0" * 64), mapping={"sid": "gone", "uid": "u4", "rotated_at": ""})
    redis_client.hset(refresh_token_key("1" * 64), mapping={"uid": "u4"})

    counts = purge_expired(redis_client, sessions, batch_size=10)

    assert counts["refresh_tokens_removed"] == 2
    assert redis_client.keys(refresh_token_key("*")) == []


def test_purge_trims_revoked_set(redis_client, sessions):
    now = time.time()
    redis_client.zadd(REVOKED_KEY, {"ended-long-ago": now - 10, "ended-recently": now + 600})

    counts = purge_expired(redis_client, sessions, batch_size=10, now=now)

    assert counts["revoked_entries_removed"] == 1
    assert redis_client.zrange(REVOKED_KEY, 0, -1) == ["ended-recently"]


def test_purge_works_in_batches_and_twice(redis_client, sessions):
    users = [f"user-{number}" for number in range(35)]
    live = {user_id: sessions.create(user_id, user_agent="test", ip="127.0.0.1")[0] for user_id in users}
    for user_id in users:
        create_expired(sessions, user_id)

    first = purge_expired(redis_client, sessions, batch_size=10)
    second = purge_expired(redis_client, sessions, batch_size=10)

    assert first["index_entries_removed"] == len(users)
    assert first["keys_examined"] >= len(users)
    assert second["index_entries_removed"] == 0
    assert second["sessions_removed"] == 0
    assert second["refresh_tokens_removed"] == 0
    for user_id, session_id in live.items():
        assert redis_client.zrange(user_sessions_key(user_id), 0, -1) == [session_id]


def test_purge_command_logs_and_records(redis_client, sessions):
    sessions.create("u5", user_agent="test", ip="127.0.0.1")
    create_expired(sessions, "u5")
    before = time.time()

    result = run_purge_command()

    assert result.returncode == 0, result.stderr
    succeeded = [event for event in log_events(result.stderr) if event["event"] == "job_succeeded"]
    assert len(succeeded) == 1
    assert succeeded[0]["job"] == "tokens_purge"
    assert succeeded[0]["index_entries_removed"] == 1
    record = read_record(redis_client, "tokens_purge")
    assert record.last_success_at is not None
    assert record.last_success_at >= before
    assert record.last_result["index_entries_removed"] == 1
    assert record.last_failure_at is None
    assert not redis_client.exists(lock_key("tokens_purge"))


def test_purge_command_skips_while_locked(redis_client):
    redis_client.set(lock_key("tokens_purge"), "another-run", ex=60)

    result = run_purge_command()

    assert result.returncode == EXIT_LOCKED
    assert [event["event"] for event in log_events(result.stderr)] == ["job_skipped"]
    assert read_record(redis_client, "tokens_purge").last_success_at is None
    assert redis_client.get(lock_key("tokens_purge")) == "another-run"


def test_purge_commands_at_once_agree(redis_client, sessions):
    for number in range(200):
        sessions.create(f"busy-{number}", user_agent="test", ip="127.0.0.1")
        create_expired(sessions, f"busy-{number}")
    command = [sys.executable, "-m", "service.cli", "tokens", "purge"]

    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=60) for run in runs]

    codes = sorted(run.returncode for run in runs)
    assert codes in ([0, 0], [0, EXIT_LOCKED]), outputs
    removed = sum(event.get("index_entries_removed", 0) for _, stderr in outputs for event in log_events(stderr)
                  if event["event"] == "job_succeeded")
    assert removed == 200
    assert sum(redis_client.zcard(user_sessions_key(f"busy-{number}")) for number in range(200)) == 200


def test_purge_command_fails_without_redis(redis_client):
    from tests.helpers import free_port

    result = run_purge_command(("GATEHOUSE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0"),
                               ("GATEHOUSE_REDIS_CONNECT_TIMEOUT", "0.5"))

    assert result.returncode == 1
    failed = [event for event in log_events(result.stderr) if event["event"] == "job_failed"]
    assert len(failed) == 1
    assert "Redis failed, lock not taken" in failed[0]["error"]
    assert "GATEHOUSE_REDIS_URL" in failed[0]["error"]


def test_purge_enforces_a_lowered_maximum(redis_client, settings):
    """Accounts over a maximum that was lowered lose their oldest sessions at the next purge, as at a login."""
    generous = SessionStore(redis_client, session_ttl=SESSION_TTL, grace_seconds=10, revoked_ttl=900,
                            max_sessions_per_user=10)
    start = time.time() - 100
    over = [generous.create("over", user_agent="test", ip="127.0.0.1", now=start + number)[0] for number in range(6)]
    within = [generous.create("within", user_agent="test", ip="127.0.0.1", now=start + number)[0] for number in range(3)]
    ended = []
    lowered = SessionStore(redis_client, session_ttl=SESSION_TTL, grace_seconds=10, revoked_ttl=900,
                           max_sessions_per_user=3, on_revoked=lambda session_id, _until: ended.append(session_id))

    counts = purge_expired(redis_client, lowered, batch_size=10)

    assert counts["sessions_evicted"] == 3
    assert ended == over[:3]
    assert redis_client.zrange(user_sessions_key("over"), 0, -1) == over[3:]
    assert redis_client.zrange(user_sessions_key("within"), 0, -1) == within
    for session_id in over[:3]:
        assert not redis_client.exists(session_key(session_id))
        assert redis_client.zscore(REVOKED_KEY, session_id) is not None
    assert purge_expired(redis_client, lowered, batch_size=10)["sessions_evicted"] == 0


def test_purge_command_enforces_a_lowered_maximum(redis_client, sessions):
    session_ids = [sessions.create("many", user_agent="test", ip="127.0.0.1", now=time.time() - 10 + number)[0]
                   for number in range(4)]

    result = run_purge_command(("GATEHOUSE_MAX_SESSIONS_PER_USER", "1"))

    assert result.returncode == 0, result.stderr
    events = log_events(result.stderr)
    evicted = [event for event in events if event["event"] == "sessions_evicted"]
    assert len(evicted) == 1
    assert evicted[0]["cause"] == "maximum_lowered"
    assert evicted[0]["session_ids"] == session_ids[:3]
    assert [event for event in events if event["event"] == "job_succeeded"][0]["sessions_evicted"] == 3
    assert redis_client.zrange(user_sessions_key("many"), 0, -1) == session_ids[3:]
