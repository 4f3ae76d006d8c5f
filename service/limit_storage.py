"""Rate-limit counters in Redis, kept in process memory while Redis fails.

This module is the one place of the rate-limit policy for a Redis failure: limits
keep applying, per worker from memory, and no request fails because of the limiter.
Redis counters are shared by every worker and replica. Memory counters are not, so
while Redis is down each worker allows the full limit on its own.

flask-limiter 4.1 has an in-memory fallback of its own. But it re-raises the
storage error for every request that was already waiting on Redis when the first
one failed, and it retries Redis on a back-off of up to 32 seconds. Wrapping the
storage instead keeps every caller, flask-limiter and the login guard, on one policy.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import structlog
from cachetools import LRUCache
from limits.storage import MovingWindowSupport, RedisStorage, Storage

from service import metrics
from service.redis_store import KEY_PREFIX

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Keys look like gh:rl:LIMITER/127.0.0.1/auth.login/20/1/minute.
RATE_LIMIT_KEY_PREFIX = KEY_PREFIX + "rl"
STORAGE_SCHEME = "gatehouse+failover"
# Keys one in-memory storage keeps before it evicts the least recently used one.
# Measured with tracemalloc on CPython 3.11: 100000 keys with one request each take
# about 32 MB, and each further request in a window about 34 bytes.
MEMORY_MAX_KEYS = 100_000
# A window read along with an acquisition serves the next read of its key for this
# many seconds. After that, the window is read from Redis again.
# The cache is bounded, because the login guard acquires without reading windows.
RECENT_WINDOW_SECONDS = 1.0
RECENT_WINDOWS = 4096

# Queues one command that runs right after a write to Redis, in the same pipeline,
# such as the login guard's index update (service.login_guard_index). A write that
# falls back to memory skips it.
PipelineStep = Callable[[redis.client.Pipeline], None]


class BoundedMemoryStorage(Storage, MovingWindowSupport):
    """Rate-limit counters in process memory that expire when read, in an LRU map of bounded size.

    limits' own MemoryStorage (5.8) scans every key for expired entries every 10 ms
    while it is in use. With 30000 client keys one scan took 46 ms on a 2-core
    machine, more than a worker's whole time. Expiring on access keeps each
    operation's cost independent of the number of keys, and the LRU bound caps
    memory whatever the clients send.
    """

    def __init__(self, uri: str | None = None, *, max_keys: int = MEMORY_MAX_KEYS, **options: Any) -> None:
        super().__init__(uri, **options)
        # Moving windows: the timestamps of the counted requests, oldest first.
        self._windows: LRUCache[str, list[float]] = LRUCache(maxsize=max_keys)
        # Counters: value and the time at which it expires.
        self._counters: LRUCache[str, tuple[int, float]] = LRUCache(maxsize=max_keys)
        self._lock = threading.Lock()

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    def _live_entries(self, key: str, expiry: float, now: float) -> list[float]:
        entries = self._windows.get(key, [])
        # Drop the entries that left the window; the list is sorted, oldest first.
        del entries[:bisect.bisect_right(entries, now - expiry)]
        return entries

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = time.time()
        with self._lock:
            entries = self._live_entries(key, expiry, now)
            if len(entries) + amount > limit:
                return False

            entries.extend([now] * amount)
            self._windows[key] = entries
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        with self._lock:
            entries = self._live_entries(key, expiry, now)
            return (entries[0], len(entries)) if entries else (now, 0)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            value, expires_at = self._counters.get(key, (0, 0.0))
            if expires_at <= now:
                # Like Redis INCR with EXPIRE on creation: the expiry starts with the first increment.
                value, expires_at = 0, now + expiry
            self._counters[key] = (value + amount, expires_at)
            return value + amount

    def get(self, key: str) -> int:
        with self._lock:
            value, expires_at = self._counters.get(key, (0, 0.0))
            return value if expires_at > time.time() else 0

    def get_expiry(self, key: str) -> float:
        now = time.time()
        with self._lock:
            _, expires_at = self._counters.get(key, (0, now))
            return max(expires_at, now)

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)
            self._counters.pop(key, None)

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self._windows) + len(self._counters)
            self._windows.clear()
            self._counters.clear()
            return count


class FailoverStorage(Storage, MovingWindowSupport):
    """A limits storage on Redis that switches to process memory from a Redis error until Redis replies to PING.

    Defining the class registers it with the limits library under the scheme
    gatehouse+failover://, so flask-limiter builds it from its storage URI. The
    keyword arguments come from flask-limiter's storage_options.
    """

    STORAGE_SCHEME = [STORAGE_SCHEME]

    def __init__(self, uri: str | None = None, *, connection_pool: redis.ConnectionPool, retry_seconds: float,
                 **options: Any) -> None:
        super().__init__(uri, **options)
        # A pool of its own (service.redis_store.create_pool builds it for either Redis
        # mode), so rate limiting and session operations do not compete for connections.
        self.pool = connection_pool
        # RedisStorage takes every connection from the pool and reads only the scheme of this URI.
        self._redis = RedisStorage("redis://", connection_pool=self.pool, key_prefix=RATE_LIMIT_KEY_PREFIX)
        self._memory = BoundedMemoryStorage()
        # The window each recent acquisition in Redis saw, by key, and when it was read.
        self._recent_windows: LRUCache[str, tuple[tuple[float, int], float]] = LRUCache(maxsize=RECENT_WINDOWS)
        self._retry_seconds = retry_seconds
        self._failed_at: float | None = None
        self._next_retry = 0.0

    @property
    def base_exceptions(self) -> type[Exception]:
        # Every Redis error is caught in _call, so nothing reaches the library's wrapper.
        return redis.RedisError

    @property
    def using_memory(self) -> bool:
        """Tell whether counters currently live in this process's memory."""
        return self._failed_at is not None

    def _call(self, operation: Callable[[Storage], T]) -> T:
        if self._failed_at is not None and not self._redis_recovered():
            return operation(self._memory)

        try:
            return operation(self._redis)
        except redis.RedisError as exc:
            self._switch_to_memory(exc)
            return operation(self._memory)

    def _switch_to_memory(self, exc: redis.RedisError) -> None:
        self._next_retry = time.monotonic() + self._retry_seconds
        if self._failed_at is not None:
            return

        # Greenlets that were waiting on Redis at the same moment fail here too.
        # Only the first one logs, so an outage gives one warning per worker.
        self._failed_at = time.monotonic()
        metrics.RATE_LIMIT_FALLBACKS.inc()
        metrics.RATE_LIMIT_MEMORY_FALLBACK.set(1)
        log.warning("rate_limit_redis_failed", error=repr(exc), fallback="memory",
                    retry_seconds=self._retry_seconds, pid=os.getpid())

    def _redis_recovered(self) -> bool:
        now = time.monotonic()
        if now < self._next_retry:
            return False

        # Set before the PING, so concurrent requests keep using memory meanwhile.
        self._next_retry = now + self._retry_seconds
        if not self._redis.check():
            return False

        outage_seconds = round(now - (self._failed_at or now), 1)
        self._failed_at = None
        metrics.RATE_LIMIT_MEMORY_FALLBACK.set(0)
        # Counters from the outage are dropped, because Redis has the shared state again.
        self._memory.reset()
        log.info("rate_limit_redis_recovered", outage_seconds=outage_seconds, pid=os.getpid())
        return True

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._call(lambda storage: storage.incr(key, expiry, amount))

    def get(self, key: str) -> int:
        return self._call(lambda storage: storage.get(key))

    def get_expiry(self, key: str) -> float:
        return self._call(lambda storage: storage.get_expiry(key))

    def clear(self, key: str) -> None:
        self._call(lambda storage: storage.clear(key))

    def check(self) -> bool:
        return self._redis.check()

    def reset(self) -> int | None:
        self._memory.reset()
        return self._call(lambda storage: storage.reset())

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1, *,
                      follow_up: PipelineStep | None = None) -> bool:
        def acquire(storage: Storage) -> bool:
            if storage is self._redis:
                return self._acquire_in_redis(key, limit, expiry, amount, follow_up)
            return storage.acquire_entry(key, limit, expiry, amount)  # type: ignore[attr-defined]

        return self._call(acquire)

    def _acquire_in_redis(self, key: str, limit: int, expiry: int, amount: int,
                          follow_up: PipelineStep | None) -> bool:
        """Acquire an entry and read the window after it in one round trip, with limits' own scripts.

        The window is what the X-RateLimit headers report next, so get_moving_window
        returns it without a second call to Redis. follow_up runs after the acquisition,
        in the same round trip.
        """
        prefixed = self._redis.prefixed_key(key)
        now = time.time()
        pipe = self._redis.get_connection().pipeline(transaction=False)
        pipe.evalsha(self._redis.lua_acquire_moving_window.sha, 1, prefixed, now, limit, expiry, amount)
        pipe.evalsha(self._redis.lua_moving_window.sha, 1, prefixed, now - expiry, limit)
        if follow_up is not None:
            follow_up(pipe)
        # Each command's error comes back in its place: the acquisition may have counted
        # even when the second script was missing, and must not be repeated then.
        acquired, window, *follow_up_results = pipe.execute(raise_on_error=False)
        if isinstance(acquired, redis.exceptions.NoScriptError):
            # Not in Redis's script cache (flushed, or never loaded): the library's own call loads it.
            # The follow-up ran before the acquisition then, so it runs once more after it.
            acquired = self._redis.acquire_entry(key, limit, expiry, amount)
            self._run_follow_up(follow_up)
            return bool(acquired)
        if isinstance(acquired, Exception):
            raise acquired
        for result in follow_up_results:
            if isinstance(result, Exception):
                raise result
        if not isinstance(window, Exception):
            self._recent_windows[key] = ((float(window[0]), int(window[1])) if window else (now, 0),
                                         time.monotonic())
        return bool(acquired)

    def _run_follow_up(self, follow_up: PipelineStep | None) -> None:
        if follow_up is None:
            return

        pipe = self._redis.get_connection().pipeline(transaction=False)
        follow_up(pipe)
        pipe.execute()

    def read_many(self, counter_keys: Sequence[str],
                  windows: Sequence[tuple[str, int, int]]) -> tuple[list[int], list[tuple[float, int]]]:
        """Read counters and moving windows (key, limit, expiry) in one round trip to Redis.

        Returns the counters' values and each window's start and entry count, in the
        order given, as get and get_moving_window would. A window read takes a second
        round trip when Redis has lost the window script, which that call loads again.
        """
        def read(storage: Storage) -> tuple[list[int], list[tuple[float, int]]]:
            if storage is self._redis:
                return self._read_in_redis(counter_keys, windows)
            counters = [storage.get(key) for key in counter_keys]
            return counters, [storage.get_moving_window(*window) for window in windows]  # type: ignore[attr-defined]

        return self._call(read)

    def _read_in_redis(self, counter_keys: Sequence[str],
                       windows: Sequence[tuple[str, int, int]]) -> tuple[list[int], list[tuple[float, int]]]:
        now = time.time()
        pipe = self._redis.get_connection().pipeline(transaction=False)
        for key in counter_keys:
            pipe.get(self._redis.prefixed_key(key))
        for key, limit, expiry in windows:
            pipe.evalsha(self._redis.lua_moving_window.sha, 1, self._redis.prefixed_key(key), now - expiry, limit)
        results = pipe.execute(raise_on_error=False)

        counter_results = results[:len(counter_keys)]
        for result in counter_results:
            if isinstance(result, Exception):
                raise result
        counters = [int(value or 0) for value in counter_results]

        window_results = []
        for (key, limit, expiry), window in zip(windows, results[len(counter_keys):], strict=True):
            if isinstance(window, redis.exceptions.NoScriptError):
                # Not in Redis's script cache (flushed, or never loaded): the library's own call loads it.
                window_results.append(self._redis.get_moving_window(key, limit, expiry))
            elif isinstance(window, Exception):
                raise window
            else:
                window_results.append((float(window[0]), int(window[1])) if window else (now, 0))
        return counters, window_results

    def clear_and_mark(self, keys: Sequence[str], marker_key: str | None = None, expiry: int = 0, *,
                       follow_up: PipelineStep | None = None) -> None:
        """Delete keys and set the counter marker_key to 1, expiring in expiry seconds, in one round trip to Redis.

        The marker gets a fresh expiry even when it exists, as clear followed by incr
        would give it. follow_up runs after both, in the same round trip.
        """
        def clear(storage: Storage) -> None:
            if storage is self._redis:
                self._clear_in_redis(keys, marker_key, expiry, follow_up)
                return

            for key in keys:
                storage.clear(key)
            if marker_key is not None:
                storage.clear(marker_key)
                storage.incr(marker_key, expiry)

        self._call(clear)

    def _clear_in_redis(self, keys: Sequence[str], marker_key: str | None, expiry: int,
                        follow_up: PipelineStep | None) -> None:
        pipe = self._redis.get_connection().pipeline(transaction=False)
        if keys:
            pipe.delete(*(self._redis.prefixed_key(key) for key in keys))
        if marker_key is not None:
            pipe.set(self._redis.prefixed_key(marker_key), 1, ex=expiry)
        if follow_up is not None:
            follow_up(pipe)
        pipe.execute()

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        recent = self._recent_windows.pop(key, None)
        if recent is not None and time.monotonic() - recent[1] < RECENT_WINDOW_SECONDS:
            return recent[0]
        return self._call(lambda storage: storage.get_moving_window(key, limit, expiry))  # type: ignore[attr-defined]

    def close(self) -> None:
        """Disconnect the pooled Redis connections; log instead of raising."""
        try:
            self.pool.disconnect()
        except Exception as exc:  # teardown must not raise
            log.warning("rate_limit_pool_close_failed", error=repr(exc))
