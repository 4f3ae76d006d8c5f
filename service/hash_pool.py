"""The argon2 threads of a gevent worker, which give their memory back once hashing is idle.

Use a HashPool only from the thread that runs the worker's gevent loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import structlog
from gevent.queue import LifoQueue
from gevent.threadpool import ThreadPool

from service.config import Settings
from service.hash_memory import ArenaRelease, load_arena_release, resident_kib

log = structlog.get_logger(__name__)

T = TypeVar("T")


def _capture(function: Callable[..., T], args: tuple[object, ...]) -> tuple[T | None, BaseException | None]:
    """Call function and return (result, None), or (None, the exception it raised)."""
    try:
        return function(*args), None
    except Exception as exc:  # handed back to the waiting greenlet, which raises it
        return None, exc


class _Lane:
    """One hashing thread. A pool of one thread runs its tasks in order, never two at once."""

    def __init__(self) -> None:
        # Not the hub's pool: gevent's default resolver looks up host names on its
        # threads, so a burst of logins there would delay new MySQL and Redis connections.
        self.pool = ThreadPool(1)
        # True once it hashed after its last release, so its arena contains argon2 memory.
        self.used = False


class HashPool:
    """Run argon2 calls on at most `threads` threads, and release their memory after `idle_seconds` without a call.

    With `release` None or `idle_seconds` 0, the threads keep their memory, as glibc leaves it.
    """

    def __init__(self, threads: int, idle_seconds: float, release: ArenaRelease | None) -> None:
        self._max_lanes = threads
        self._lanes: list[_Lane] = []
        # Last in, first out: under light load one thread computes most hashes, so
        # fewer threads keep argon2 memory.
        self._idle_lanes: LifoQueue = LifoQueue()
        self._release = release if idle_seconds > 0 else None
        self._idle_seconds = idle_seconds
        # Calls that entered run() and have not returned, including those waiting for a thread.
        self._pending = 0
        self._last_finished = 0.0
        # The one pending idle check of this pool: a greenlet that sleeps until it is due.
        self._idle_check: gevent.Greenlet | None = None
        self._releasing = False
        # Number of releases so far, for tests and debugging.
        self.releases = 0

    def run(self, function: Callable[..., T], *args: object) -> T:
        """Call function(*args) on one of the threads, wait for it without blocking the loop, and return its result."""
        self._pending += 1
        try:
            lane = self._take_lane()
            try:
                # An exception raised on a pool thread is printed by gevent as a plain-text
                # traceback (every wrong password would write one), so the thread returns it instead.
                result, error = lane.pool.apply(_capture, (function, args))
            finally:
                lane.used = True
                self._idle_lanes.put(lane)
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._last_finished = time.monotonic()
                self._schedule_idle_check()

        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    def _take_lane(self) -> _Lane:
        # No new thread during a release: it would hash while the trim threshold is lowered.
        if self._idle_lanes.empty() and len(self._lanes) < self._max_lanes and not self._releasing:
            lane = _Lane()
            self._lanes.append(lane)
            return lane

        return self._idle_lanes.get()

    def _schedule_idle_check(self) -> None:
        # The check moves itself to the time it is due, so a busy pool spawns one
        # greenlet per idle period, not one per hash.
        if self._release is None or self._idle_check is not None:
            return

        self._idle_check = gevent.spawn_later(self._idle_seconds, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_check = None
        if self._pending:
            # The call that finishes last schedules the next check.
            return

        due_in = self._last_finished + self._idle_seconds - time.monotonic()
        if due_in > 0:
            self._idle_check = gevent.spawn_later(due_in, self._check_idle)
            return

        self._release_used_lanes()

    def _release_used_lanes(self) -> None:
        release = self._release
        used = [lane for lane in self._lanes if lane.used]
        if release is None or not used:
            return

        # With no call pending every lane is idle. Reserving them all keeps every thread from
        # hashing while one of them lowers the process-wide trim threshold.
        reserved_lanes = [self._idle_lanes.get_nowait() for _ in range(self._idle_lanes.qsize())]
        self._releasing = True
        rss_before = resident_kib()
        started = time.monotonic()
        try:
            # One at a time: each lowers and restores the same process-wide threshold.
            for lane in used:
                _apply_or_log(lane, release.release_thread_arena)
                lane.used = False
            _apply_or_log(used[-1], release.release_free_pages)
        finally:
            self._releasing = False
            # Back in the order they were taken from the stack, so the same thread stays on top.
            for lane in reversed(reserved_lanes):
                self._idle_lanes.put(lane)

        self.releases += 1
        rss_after = resident_kib()
        released_kib = rss_before - rss_after if rss_before is not None and rss_after is not None else None
        log.debug("hash_memory_released", threads=len(used), released_kib=released_kib,
                  seconds=round(time.monotonic() - started, 4))


def _apply_or_log(lane: _Lane, function: Callable[[], None]) -> None:
    _, error = lane.pool.apply(_capture, (function, ()))
    if error is not None:
        log.warning("hash_memory_release_failed", error=repr(error))


def create_hash_pool(settings: Settings) -> HashPool:
    """Create the hash pool of this worker, with the memory release that its C library allows.

    The release applies to every worker: libsodium unmaps its memory after each hash, but
    argon2-cffi verifies the hashes of other forms (older parameters, more lanes) in any
    worker, and its memory stays in the hashing thread's arena.
    """
    release = None
    if settings.argon2_release_idle_seconds > 0:
        release, reason = load_arena_release(settings.argon2_memory_kib, settings.argon2_parallelism)
        if release is None:
            log.info("hash_memory_release_disabled", reason=reason)

    return HashPool(settings.argon2_threads, settings.argon2_release_idle_seconds, release)
