"""run_job against the real test Redis: the lock, the records, the exit codes and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from service.maintenance.jobs import (
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_SUCCEEDED,
    JobFailed,
    lock_key,
    read_record,
    remove_lock,
    run_job,
)
from service.maintenance.scratch import ScratchRedis
from tests.helpers import ROOT


def run_gatehouse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda signum: signal.Signals(signum).name)
def test_signal_stops_work_and_cleans_up(redis_client, tmp_path, signum):
    handler_before = signal.getsignal(signum)
    scratch_pids = []

    def work() -> dict:
        with tempfile.TemporaryDirectory(dir=tmp_path) as scratch_dir, ScratchRedis(Path(scratch_dir)) as scratch:
            scratch_pids.append(scratch.pid())
            os.kill(os.getpid(), signum)
            time.sleep(30)
        return {"finished": True}

    code = run_job(redis_client, "backup_verify", work, lock_seconds=60)

    name = signal.Signals(signum).name
    assert code == 128 + signum
    assert read_record(redis_client, "backup_verify").last_error == f"terminated by {name}"
    assert read_record(redis_client, "backup_verify").last_success_at is None
    assert not redis_client.exists(lock_key("backup_verify"))
    assert list(tmp_path.iterdir()) == []
    assert len(scratch_pids) == 1
    assert not Path(f"/proc/{scratch_pids[0]}").exists()
    assert signal.getsignal(signum) is handler_before


def test_second_signal_does_not_cut_cleanup(redis_client):
    cleaned = []

    @contextmanager
    def resource():
        try:
            yield
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append("after the second signal")

    def work() -> dict:
        with resource():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        return {}

    code = run_job(redis_client, "tokens_purge", work, lock_seconds=60)

    assert code == 143
    assert cleaned == ["after the second signal"]
    assert not redis_client.exists(lock_key("tokens_purge"))


def test_remove_lock_reports_time_left(redis_client):
    redis_client.set(lock_key("backup"), "left-by-a-killed-run", ex=600)

    removed = remove_lock(redis_client, "backup")
    again = remove_lock(redis_client, "backup")

    assert removed is not None
    assert 590 < removed <= 600
    assert again is None
    assert not redis_client.exists(lock_key("backup"))


def test_unlock_command_removes_lock(redis_client):
    redis_client.set(lock_key("backup"), "left-by-a-killed-run", ex=600)

    removed = run_gatehouse("jobs", "unlock", "backup")
    again = run_gatehouse("jobs", "unlock", "backup")

    assert removed.returncode == 0, removed.stderr
    assert "removed lock gh:lock:job:backup" in removed.stdout
    assert "job_lock_removed" in removed.stdout + removed.stderr
    assert not redis_client.exists(lock_key("backup"))
    assert again.returncode == 0, again.stderr
    assert "no lock gh:lock:job:backup was held" in again.stdout


def test_unlock_command_removes_claims_of_killed_run(redis_client, tmp_path):
    """A verification killed with SIGKILL leaves its claim too, which would hold up retention for an hour."""
    from service.maintenance.backup import claim, claim_key

    read = tmp_path / "gatehouse-20200101T000000Z"
    deleting = tmp_path / "gatehouse-20200102T000000Z"
    assert claim(redis_client, read, "verify", 3600)
    assert claim(redis_client, deleting, "retention", 3600)
    redis_client.set(lock_key("backup_verify"), "left-by-a-killed-run", ex=600)

    removed = run_gatehouse("jobs", "unlock", "backup_verify")

    assert removed.returncode == 0, removed.stderr
    assert f"removed claim {claim_key(read)}" in removed.stdout
    assert not redis_client.exists(claim_key(read))
    # The claim of the other lock's run stays.
    assert redis_client.get(claim_key(deleting)) == "retention"
