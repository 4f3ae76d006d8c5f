"""The /ready checks: MySQL reachable with the expected schema, Redis accepting writes; cached briefly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog

from service.database import Database
from service.migrate import MIGRATION_TABLE, expected_versions
from service.redis_store import KEY_PREFIX

log = structlog.get_logger(__name__)


# How often results_within looks whether another caller's checks have ended.
_RUNNING_POLL_SECONDS = 0.02
# A check that has run this long counts as failed for the probes that arrive meanwhile.
# A check takes milliseconds when its server replies. One that waits out a hung MySQL's
# timeouts took 15 s with the defaults in a trial, and the cached "ready" would keep the
# pod in service that long.
STALLED_CHECK_SECONDS = 2.0

# The key the Redis check writes. Every worker of every replica writes the same key, so
# it adds one key to the database, which expires once the checks stop.
READY_KEY = KEY_PREFIX + "ready"
_READY_KEY_MILLISECONDS = 60_000


class SchemaBehind(Exception):
    """The database lacks migrations that this version of the code ships."""


@dataclass(frozen=True)
class Check:
    ok: bool
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True)
class Report:
    ready: bool
    checks: dict[str, Check]


def _timed(check: Callable[[], None]) -> Check:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # every failure becomes a "not ready" result, never a 500
        # /ready is public, so the body names only the kind of failure; addresses and
        # server messages go to the log.
        log.warning("readiness_check_failed", check=check.__name__.removeprefix("_check_"), error=str(exc)[:300])
        public = str(exc) if isinstance(exc, SchemaBehind) else type(exc).__name__
        return Check(False, round((time.perf_counter() - started) * 1000, 2), public)

    return Check(True, round((time.perf_counter() - started) * 1000, 2))


class ReadinessProbe:
    """Run the checks at most once per cache interval per process, however many probes arrive."""

    def __init__(self, database: Database, client: redis.Redis, cache_seconds: float) -> None:
        self._database = database
        self._redis = client
        self._cache_seconds = cache_seconds
        self._expected = expected_versions()
        self._lock = threading.Lock()
        self._report: Report | None = None
        self._checked_at = 0.0
        # The check running now and when it started (time.monotonic()), for results_within().
        self._running: tuple[str, float] | None = None

    def report(self) -> Report:
        """Return the cached report, or run the checks when it is older than the cache interval."""
        if self._report is not None and time.monotonic() - self._checked_at < self._cache_seconds:
            return self._report

        # One probe runs the checks; concurrent ones reuse the previous report instead of
        # piling up, unless the check has stalled.
        if not self._lock.acquire(blocking=self._report is None):
            return self._previous_or_stalled()
        try:
            checks = {}
            for name, check in (("mysql", self._check_mysql), ("redis", self._check_redis)):
                self._running = (name, time.monotonic())
                checks[name] = _timed(check)
            self._running = None
            report = Report(all(check.ok for check in checks.values()), checks)
            if self._report is not None and report.ready != self._report.ready:
                # Only losing readiness is a warning. Turning ready again is logged at info level.
                emit = log.info if report.ready else log.warning
                emit("readiness_changed", ready=report.ready,
                     failing=[name for name, check in checks.items() if not check.ok])
            self._report, self._checked_at = report, time.monotonic()
        finally:
            self._lock.release()
        return report

    def _previous_or_stalled(self) -> Report:
        """Return the previous report, or one with the running check failed once it has run STALLED_CHECK_SECONDS."""
        previous, running = self._report, self._running
        assert previous is not None
        if running is None:
            return previous
        name, started = running
        elapsed = time.monotonic() - started
        if elapsed < STALLED_CHECK_SECONDS:
            return previous
        checks = {**previous.checks, name: Check(False, round(elapsed * 1000, 2), "check_stalled")}
        return Report(False, checks)

    def results_within(self, wait_seconds: float) -> dict[str, Check]:
        """Return each dependency's latest check result, waiting at most wait_seconds; for /metrics.

        The checks run as report() runs them, on a thread of their own, or this waits for
        the checks that another caller, such as /ready, is running. A check still running
        after wait_seconds, such as one that waits out a hung server's timeouts, counts as
        failed with the time it has taken so far. The other dependency keeps its latest
        result. So a scrape ends within about wait_seconds and shows the hung dependency
        as down, where waiting for the check could outlast the scrape timeout.
        """
        deadline = time.monotonic() + wait_seconds
        done = threading.Event()

        def refresh() -> None:
            try:
                self.report()
            finally:
                done.set()

        threading.Thread(target=refresh, name="readiness-refresh", daemon=True).start()
        done.wait(wait_seconds)
        # report() returns the previous report at once while another caller's checks run.
        while self._running is not None and time.monotonic() < deadline:
            time.sleep(_RUNNING_POLL_SECONDS)
        results = dict(self._report.checks) if self._report is not None else {}
        running = self._running
        if running is not None:
            name, started = running
            results[name] = Check(False, round((time.monotonic() - started) * 1000, 2), "check_stalled")
        return results

    def _check_mysql(self) -> None:
        with self._database.cursor() as cursor:
            cursor.execute(f"SELECT migration_id FROM {MIGRATION_TABLE}")
            applied = {row["migration_id"] for row in cursor.fetchall()}
        missing = self._expected - applied
        if missing:
            raise SchemaBehind(f"schema out of date, pending migrations: {', '.join(sorted(missing))}")

    def _check_redis(self) -> None:
        # A write, not PING: a Redis that became a replica (the old primary behind a managed
        # service's host name after a failover) replies to PING but rejects every write.
        # redis_store turns its READONLY reply into a ConnectionError. ROLE or INFO would
        # tell as well, but a managed Redis may deny them to the service's user, which
        # would take every pod out of service.
        try:
            self._redis.set(READY_KEY, str(int(time.time())), px=_READY_KEY_MILLISECONDS)
        except redis.exceptions.OutOfMemoryError:
            # A full Redis under noeviction rejects writes but still serves reads, so warm
            # requests and the JWKS still work, and taking every pod out of service would
            # stop them too. Logins and refreshes get 503 redis_unavailable meanwhile.
            return
