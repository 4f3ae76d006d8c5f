"""Shared parts of every maintenance job: one run at a time, a logged result, a record in Redis.

Records (all under the gh: prefix):
    job:<name>        hash  last_success_at, last_failure_at (Unix seconds), last_duration_seconds,
                            last_result (JSON summary of the last success), last_error
    lock:job:<lock>   str   held by the run in progress; expires after job_lock_seconds
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from redis.exceptions import LockError
from redis.lock import Lock

from service.maintenance.termination import JobTerminated, StopSignals
from service.redis_store import KEY_PREFIX

log = structlog.get_logger("gatehouse.jobs")

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
# A usage or configuration error, found before the lock is taken; nothing is recorded.
EXIT_USAGE = 2
# sysexits.h EX_TEMPFAIL: another run holds the lock or the input (JobSkipped); running again later is the fix.
EXIT_LOCKED = 75


class JobFailed(Exception):
    """A job found a problem it reports as its result, such as a backup that does not verify."""


class JobSkipped(Exception):
    """The work found nothing it should do now, as when its input is being removed: exit 75, nothing recorded."""


@dataclass(frozen=True)
class JobRecord:
    last_success_at: float | None
    last_failure_at: float | None
    last_duration_seconds: float | None
    last_result: dict[str, Any] | None
    last_error: str | None


def record_key(name: str) -> str:
    return f"{KEY_PREFIX}job:{name}"


def lock_key(lock_name: str) -> str:
    return f"{KEY_PREFIX}lock:job:{lock_name}"


def read_record(client: redis.Redis, name: str) -> JobRecord:
    """Return the last recorded outcome of a job; fields never recorded are None."""
    fields = client.hgetall(record_key(name))

    def number(field: str) -> float | None:
        return float(fields[field]) if fields.get(field) else None

    return JobRecord(
        last_success_at=number("last_success_at"),
        last_failure_at=number("last_failure_at"),
        last_duration_seconds=number("last_duration_seconds"),
        last_result=json.loads(fields["last_result"]) if fields.get("last_result") else None,
        last_error=fields.get("last_error") or None,
    )


def remove_lock(client: redis.Redis, lock_name: str) -> float | None:
    """Delete a job's lock, whichever run holds it; return the seconds it had left, or None if none was held."""
    pipe = client.pipeline(transaction=True)
    pipe.pttl(lock_key(lock_name))
    pipe.delete(lock_key(lock_name))
    ttl_ms, deleted = pipe.execute()
    return max(ttl_ms, 0) / 1000 if deleted else None


def run_job(client: redis.Redis, name: str, work: Callable[[], Mapping[str, Any]], *,
            lock_seconds: int, lock_name: str | None = None, record: bool = True) -> int:
    """Run work under the job's Redis lock, log and record the outcome, and return the exit code.

    With record=False the outcome is logged but not recorded, so /metrics and the alerts
    keep the outcome of the scheduled runs. It is for a run by hand on another target.

    A second run while the lock is held does nothing and returns EXIT_LOCKED. The lock
    expires after lock_seconds, so a run that dies cannot block the job for longer.
    SIGTERM or SIGINT during the work raises JobTerminated inside it: the work cleans up,
    the failure is recorded and the exit code is 128 + the signal number (143 for
    SIGTERM). A signal that arrives after the work finished does not change the outcome.
    Call it from the main thread, which alone can install signal handlers.
    """
    with StopSignals() as signals:
        return _run_locked(client, name, work, signals, lock_seconds=lock_seconds, lock_name=lock_name,
                           record=record)


def _run_locked(client: redis.Redis, name: str, work: Callable[[], Mapping[str, Any]], signals: StopSignals, *,
                lock_seconds: int, lock_name: str | None, record: bool) -> int:
    lock = client.lock(lock_key(lock_name or name), timeout=lock_seconds, blocking=False)
    try:
        acquired = lock.acquire()
    except redis.RedisError as exc:
        log.error("job_failed", job=name,
                  error=f"Redis failed, lock not taken: {exc}; check GATEHOUSE_REDIS_URL and that Redis is up")
        return EXIT_FAILED

    if not acquired:
        log.warning("job_skipped", job=name, reason="another run holds the lock", lock=lock_key(lock_name or name))
        return EXIT_LOCKED

    started = time.time()
    try:
        with signals.raising():
            result = dict(work())
    except JobTerminated as exc:
        return _record_failure(client, name, started, str(exc), exit_code=exc.exit_code, record=record)
    except JobSkipped as exc:
        log.warning("job_skipped", job=name, reason=str(exc))
        return EXIT_LOCKED
    except JobFailed as exc:
        return _record_failure(client, name, started, str(exc), record=record)
    except Exception as exc:  # the job's boundary: any error is its failure, logged with the stack
        log.exception("job_crashed", job=name)
        return _record_failure(client, name, started, f"{type(exc).__name__}: {exc}", record=record)
    finally:
        _release(lock, name)

    code = _record_success(client, name, started, result, record=record)
    if signals.received:
        log.warning("job_signal_ignored", job=name, signal=signal.Signals(signals.received[0]).name,
                    reason="the work had finished")
    return code


def _record_success(client: redis.Redis, name: str, started: float, result: dict[str, Any], *, record: bool) -> int:
    finished = time.time()
    duration = round(finished - started, 3)
    log.info("job_succeeded", job=name, duration_seconds=duration, recorded=record, **result)
    if not record:
        return EXIT_SUCCEEDED
    try:
        client.hset(record_key(name), mapping={
            "last_success_at": repr(finished),
            "last_duration_seconds": repr(duration),
            "last_result": json.dumps(result, default=str),
        })
    except redis.RedisError as exc:
        # The work is done, but monitoring would not learn it: report a failure.
        log.error("job_record_failed", job=name, error=str(exc))
        return EXIT_FAILED

    return EXIT_SUCCEEDED


def _record_failure(client: redis.Redis, name: str, started: float, error: str, *,
                    exit_code: int = EXIT_FAILED, record: bool) -> int:
    finished = time.time()
    duration = round(finished - started, 3)
    log.error("job_failed", job=name, duration_seconds=duration, error=error, recorded=record)
    if not record:
        return exit_code
    try:
        client.hset(record_key(name), mapping={
            "last_failure_at": repr(finished),
            "last_duration_seconds": repr(duration),
            "last_error": error[:2000],
        })
    except redis.RedisError as exc:
        log.error("job_record_failed", job=name, error=str(exc))
    return exit_code


def _release(lock: Lock, name: str) -> None:
    try:
        lock.release()
    except LockError:
        # The lock expired during the run, so another run may have started meanwhile.
        log.warning("job_lock_expired", job=name, hint="raise GATEHOUSE_JOB_LOCK_SECONDS above the job's duration")
    except redis.RedisError as exc:
        log.warning("job_lock_release_failed", job=name, error=str(exc))
