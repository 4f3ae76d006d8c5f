"""Bounded background traffic for end-to-end tests: a mixed client load and status probes.

Every thread stops by itself after its request or time budget, and stop() ends it earlier.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import requests

from tests.helpers import bearer

# Out of every 10 requests of a load thread: one login, two refreshes, seven authenticated reads.
_CYCLE = ("login", "me", "refresh", "me", "me", "me", "refresh", "me", "me", "me")
_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when the response or the error arrived
    kind: str  # login, refresh, me, or the probed path
    status: int | str  # the HTTP status, or the exception's class name when no response arrived
    retry_after: str | None = None


class Recorder:
    """Outcomes collected from several threads, with counts by status for a time window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)

    def outcomes(self, start: float = float("-inf"), end: float = float("inf"), kind: str | None = None) -> list[Outcome]:
        """Return the outcomes that arrived in [start, end), of one kind or of every kind, in arrival order."""
        with self._lock:
            selected = [o for o in self._outcomes if start <= o.at < end and (kind is None or o.kind == kind)]
        return sorted(selected, key=lambda outcome: outcome.at)

    def statuses(self, start: float = float("-inf"), end: float = float("inf"), kind: str | None = None) -> Counter:
        return Counter(outcome.status for outcome in self.outcomes(start, end, kind))


def _send(method: str, url: str, **kwargs) -> requests.Response:
    # A new connection per request, so that both workers of the master serve the load.
    headers = {"Connection": "close", **kwargs.pop("headers", {})}
    return requests.request(method, url, headers=headers, timeout=_TIMEOUT_SECONDS, **kwargs)


class _Worker(threading.Thread):
    """One client: logs in, refreshes and reads /v1/users/me in a fixed cycle, keeping its latest token pair."""

    def __init__(self, load: MixedLoad, email: str) -> None:
        super().__init__(name=f"load-{email}", daemon=True)
        self.load = load
        self.email = email
        self.pair: dict | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.load.max_seconds
        for index in range(self.load.max_requests):
            if self.load.stopping.is_set() or time.monotonic() > deadline:
                return
            kind = _CYCLE[index % len(_CYCLE)]
            if self.pair is None:
                kind = "login"
            try:
                response = self._request(kind)
            except requests.RequestException as exc:
                self.load.recorder.add(Outcome(time.monotonic(), kind, type(exc).__name__))
            else:
                self.load.recorder.add(Outcome(time.monotonic(), kind, response.status_code,
                                               response.headers.get("Retry-After")))
                if kind in ("login", "refresh") and response.status_code == 200:
                    self.pair = response.json()
            self.load.stopping.wait(self.load.pause_seconds)

    def _request(self, kind: str) -> requests.Response:
        url = self.load.url
        if kind == "login":
            return _send("POST", f"{url}/v1/auth/login", json={"email": self.email, "password": self.load.password})
        assert self.pair is not None
        if kind == "refresh":
            # After a 503 the client keeps its refresh token and presents it again later.
            return _send("POST", f"{url}/v1/auth/refresh", json={"refresh_token": self.pair["refresh_token"]})
        return _send("GET", f"{url}/v1/users/me", headers=bearer(self.pair["access_token"]))


class MixedLoad:
    """A steady mix of logins, refreshes and authenticated reads: one thread per account.

    Each thread sends at most max_requests requests within max_seconds, pausing
    pause_seconds after each response.
    """

    def __init__(self, url: str, emails: list[str], password: str, *, max_requests: int = 5000,
                 max_seconds: float = 120, pause_seconds: float = 0.02) -> None:
        self.url = url
        self.password = password
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.pause_seconds = pause_seconds
        self.recorder = Recorder()
        self.stopping = threading.Event()
        self._threads = [_Worker(self, email) for email in emails]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=2 * _TIMEOUT_SECONDS)


class StatusProbe(threading.Thread):
    """GET url every interval seconds, at most max_seconds, recording each status in recorder."""

    def __init__(self, url: str, path: str, recorder: Recorder, *, interval: float = 0.1,
                 max_seconds: float = 120) -> None:
        super().__init__(name=f"probe-{path}", daemon=True)
        self.url = url
        self.path = path
        self.recorder = recorder
        self.interval = interval
        self.max_seconds = max_seconds
        self.stopping = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                status: int | str = _send("GET", f"{self.url}{self.path}").status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.recorder.add(Outcome(time.monotonic(), self.path, status))
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=2 * _TIMEOUT_SECONDS)
