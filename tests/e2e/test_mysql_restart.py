"""The test MariaDB stopped and started again under a steady mixed load, through gunicorn with 2 workers.

The test stops the real test MariaDB with SIGTERM and starts it again with
scripts/services.sh, as `make test` did. A fixture starts it whatever happens,
so later tests find it running.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import PASSWORD
from tests.helpers import Gunicorn, bearer, mariadb_answers, start_services, stop_test_mariadb

pytestmark = pytest.mark.e2e

# Short MySQL timeouts, so a request caught by the shutdown fails within about a second.
MYSQL_TIMEOUT = 1.0
# The shortest user cache allowed: most authenticated reads load the user from MySQL.
USER_CACHE_SECONDS = 0.5
DOWN_SECONDS = 3.0
# How soon after MariaDB accepts connections again every request must succeed.
RECOVERY_SECONDS = 3.0
# Accounts registered before the load; the login and read threads use them.
USERS = 8
# Bounds of each load thread, far above what the test needs.
MAX_REQUESTS = 5000
MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Outcome:
    kind: str
    started: float
    finished: float
    status: int | str
    retry_after: str | None
    code: str | None


class Load(threading.Thread):
    """One kind of request in a loop until stopped, at most MAX_REQUESTS and MAX_SECONDS, recording each outcome."""

    def __init__(self, url: str, kind: str, users: list[dict]) -> None:
        super().__init__(name=f"load-{kind}", daemon=True)
        self.url = url
        self.kind = kind
        self.users = users
        self.outcomes: list[Outcome] = []
        self.registered: list[str] = []
        self.stopping = threading.Event()
        self.session = requests.Session()
        self.refresh_token = users[0]["refresh_token"]

    def run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for index in range(MAX_REQUESTS):
            if self.stopping.is_set() or time.monotonic() > deadline:
                return
            self.send(index)
            self.stopping.wait(0.02)

    def send(self, index: int) -> None:
        user = self.users[index % len(self.users)]
        email = f"load-{index}@example.com"
        started = time.monotonic()
        try:
            response = self.request(index, user, email)
        except requests.RequestException as exc:
            self.outcomes.append(Outcome(self.kind, started, time.monotonic(), type(exc).__name__, None, None))
            return

        finished = time.monotonic()
        code = response.json().get("code") if response.status_code >= 400 else None
        self.outcomes.append(Outcome(self.kind, started, finished, response.status_code,
                                     response.headers.get("Retry-After"), code))
        if self.kind == "register" and response.status_code == 201:
            self.registered.append(email)
        # A refresh that failed after the rotation is retried with the same token,
        # which the grace interval accepts.
        if self.kind == "refresh" and response.status_code == 200:
            self.refresh_token = response.json()["refresh_token"]

    def request(self, index: int, user: dict, email: str) -> requests.Response:
        if self.kind == "login":
            return self.session.post(f"{self.url}/v1/auth/login", json={"email": user["email"], "password": PASSWORD},
                                     timeout=10)
        if self.kind == "refresh":
            return self.session.post(f"{self.url}/v1/auth/refresh", json={"refresh_token": self.refresh_token},
                                     timeout=10)
        if self.kind == "me":
            return self.session.get(f"{self.url}/v1/users/me", headers=bearer(user["access_token"]), timeout=10)
        return self.session.post(f"{self.url}/v1/auth/register", json={"email": email, "password": PASSWORD},
                                 timeout=10)


@pytest.fixture
def mysql_started_afterwards():
    yield
    if not mariadb_answers():
        start_services()


@pytest.fixture
def server(tmp_path):
    with Gunicorn(tmp_path, env={
        "GATEHOUSE_MYSQL_CONNECT_TIMEOUT": str(MYSQL_TIMEOUT),
        "GATEHOUSE_MYSQL_READ_TIMEOUT": str(MYSQL_TIMEOUT),
        "GATEHOUSE_MYSQL_WRITE_TIMEOUT": str(MYSQL_TIMEOUT),
        "GATEHOUSE_USER_CACHE_SECONDS": str(USER_CACHE_SECONDS),
    }) as gunicorn:
        yield gunicorn


def sign_up(url: str, email: str) -> dict:
    """Register an account and log it in; return its email and token pair."""
    registered = requests.post(f"{url}/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=10)
    assert registered.status_code == 201, registered.text
    pair = requests.post(f"{url}/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=10)
    assert pair.status_code == 200, pair.text
    return {"email": email, **pair.json()}


def ready_statuses(url: str, seconds: float) -> list[int]:
    """Probe /ready every 0.2 s for `seconds`; return the statuses."""
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses.append(requests.get(f"{url}/ready", timeout=5).status_code)
        time.sleep(0.2)
    return statuses


def wait_ready(url: str, timeout: float) -> float:
    """Wait until /ready returns 200; return the seconds it took."""
    started = time.monotonic()
    while requests.get(f"{url}/ready", timeout=5).status_code != 200:
        assert time.monotonic() - started < timeout, f"/ready not 200 within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_mysql_restart_under_load(server, settings, mysql_started_afterwards):
    users = [sign_up(server.url, f"user{index}@example.com") for index in range(USERS)]
    loads = [Load(server.url, kind, users) for kind in ("login", "refresh", "me", "register")]
    workers_before = server.worker_pids()
    for load in loads:
        load.start()
    try:
        time.sleep(1.5)
        stop_test_mariadb()
        down_at = time.monotonic()
        # /ready caches its result for a second, so the first probes may still see the old one.
        during = ready_statuses(server.url, DOWN_SECONDS)
        restart_at = time.monotonic()
        start_services()
        up_at = time.monotonic()
        ready_after = wait_ready(server.url, 10)
        time.sleep(RECOVERY_SECONDS + 1.5)
    finally:
        for load in loads:
            load.stopping.set()
        for load in loads:
            load.join(timeout=30)

    outcomes = list(itertools.chain.from_iterable(load.outcomes for load in loads))
    statuses = {outcome.status for outcome in outcomes}
    first_write = min(outcome.finished for outcome in outcomes
                      if outcome.kind == "register" and outcome.status == 201 and outcome.started > restart_at)
    # services.sh returns only after it has set up the account, so MariaDB answers somewhat before up_at.
    print(f"{len(outcomes)} requests; MariaDB down {restart_at - down_at:.1f} s; services.sh start took"
          f" {up_at - restart_at:.1f} s; first registration {first_write - restart_at:.2f} s after it began,"
          f" /ready 200 {ready_after:.2f} s after it returned")

    # Only success or 503 with Retry-After: never a 500, never a dropped connection.
    assert statuses <= {200, 201, 503}, statuses
    unavailable = [outcome for outcome in outcomes if outcome.status == 503]
    assert unavailable, "no request ran into the outage"
    assert {outcome.retry_after for outcome in unavailable} == {"1"}
    assert {outcome.code for outcome in unavailable} == {"database_unavailable"}

    # While MariaDB was down, logins and registrations were refused, and reads of users
    # whose cache entry had expired too.
    outage = [outcome for outcome in outcomes if down_at < outcome.started and outcome.finished < restart_at]
    for kind in ("login", "register"):
        assert {outcome.status for outcome in outage if outcome.kind == kind} == {503}, kind
    assert 503 in {outcome.status for outcome in outage if outcome.kind == "me"}

    # /ready: 503 once its cached result expired, 200 soon after MariaDB was back.
    assert during[-1] == 503
    assert set(during[len(during) // 2:]) == {503}
    assert ready_after < RECOVERY_SECONDS

    assert first_write - up_at < RECOVERY_SECONDS
    # Every request sent a few seconds after MariaDB answered again succeeded, on the
    # same workers: the pools replaced their dead connections without a restart.
    recovered = [outcome for outcome in outcomes if outcome.started > up_at + RECOVERY_SECONDS]
    for kind in ("login", "refresh", "me", "register"):
        assert {outcome.status for outcome in recovered if outcome.kind == kind} <= {200, 201}, kind
        assert any(outcome.kind == kind for outcome in recovered), kind
    assert server.worker_pids() == workers_before
    events = [json.loads(line)["event"] for line in server.output().splitlines() if line.startswith("{")]
    assert "server_error" not in events

    # Nothing written before the outage was lost.
    registered = [user["email"] for user in users] + [email for load in loads for email in load.registered]
    for email in registered:
        login = requests.post(f"{server.url}/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=10)
        assert login.status_code == 200, email
