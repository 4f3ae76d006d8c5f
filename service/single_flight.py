"""One load per key at a time: callers that ask for a key already being loaded wait for that load.

When a worker's cache is cold, every request for the same account would otherwise
query MySQL at once, and under load that empties the connection pool (503s) for a
value that one query returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class LoadTimedOut(Exception):
    """The load this caller waited for did not finish in time."""


class SingleFlight(Generic[T]):
    """Share one in-flight call per key among concurrent callers, greenlets or threads.

    A waiting caller gets the leader's result or the leader's exception. It waits at
    most `wait_seconds` and then raises LoadTimedOut, so `wait_seconds` should exceed
    the longest a load can take: the pool wait plus the connect and query timeouts.
    """

    def __init__(self, wait_seconds: float) -> None:
        self._wait_seconds = wait_seconds
        self._calls: dict[Hashable, _Call[T]] = {}
        self._lock = threading.Lock()

    def run(self, key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        assert call is not None
        if not leader:
            if not call.done.wait(self._wait_seconds):
                raise LoadTimedOut(f"shared load timed out after {self._wait_seconds} s")
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[return-value]

        try:
            call.result = load()
            return call.result
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()

    def in_flight(self) -> int:
        """Return the number of keys being loaded now."""
        return len(self._calls)
