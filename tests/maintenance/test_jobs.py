"""run_job against the real test Redis: the lock, the records and the exit codes."""

from __future__ import annotations

from service.maintenance.jobs import (
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_SUCCEEDED,
    JobFailed,
    lock_key,
    read_record,
    run_job,
)


def test_success_records_result(redis_client):
    code = run_job(redis_client, "tokens_purge", lambda: {"removed": 3}, lock_seconds=60)

    record = read_record(redis_client, "tokens_purge")
    assert code == EXIT_SUCCEEDED
    assert record.last_result == {"removed": 3}
    assert record.last_success_at is not None
    assert record.last_error is None


def test_failure_keeps_last_success(redis_client):
    run_job(redis_client, "backup_verify", lambda: {"ok": True}, lock_seconds=60)

    def fail() -> dict:
        raise JobFailed("checksum of dump.sql does not match the manifest")

    code = run_job(redis_client, "backup_verify", fail, lock_seconds=60)

    record = read_record(redis_client, "backup_verify")
    assert code == EXIT_FAILED
    assert record.last_failure_at is not None
    assert record.last_success_at is not None
    assert record.last_failure_at >= record.last_success_at
    assert record.last_error == "checksum of dump.sql does not match the manifest"


def test_crash_counts_as_failure(redis_client):
    def crash() -> dict:
        raise ValueError("unexpected")

    code = run_job(redis_client, "backup_create", crash, lock_seconds=60)

    assert code == EXIT_FAILED
    assert read_record(redis_client, "backup_create").last_error == "ValueError: unexpected"
    assert not redis_client.exists(lock_key("backup_create"))


def test_held_lock_skips_work(redis_client):
    calls = []
    redis_client.set(lock_key("backup"), "other", ex=60)

    code = run_job(redis_client, "backup_restore", lambda: calls.append(1) or {}, lock_seconds=60, lock_name="backup")

    assert code == EXIT_LOCKED
    assert calls == []
    assert read_record(redis_client, "backup_restore").last_failure_at is None
