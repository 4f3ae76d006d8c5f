"""Redis or MariaDB stopped for OUTAGE_SECONDS and started again under a steady mixed load.

A gunicorn master with 2 workers serves logins, refreshes and authenticated reads
from a few client threads while /ready and /health are probed. The test stops the
real test server with SIGTERM and starts it with scripts/services.sh, as `make test`
did. A fixture starts it again whatever happens, so later tests find it running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import PASSWORD
from tests.e2e.load import MixedLoad, Recorder, StatusProbe
from tests.helpers import (
    Gunicorn,
    bearer,
    mariadb_answers,
    redis_answers,
    start_services,
    start_test_mariadb,
    start_test_redis,
    stop_test_mariadb,
    stop_test_redis,
)

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 10.0
# /ready must turn 503 within this many seconds of the stop, and 200 within as many of the start.
READY_SECONDS = 2.0
LOAD_ACCOUNTS = 3
# Sessions started before the outage and left alone until it is over.
HELD_ACCOUNTS = 3
STEADY_SECONDS = 2.0
AFTER_SECONDS = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("gunicorn"), env={"GATEHOUSE_BAN_ENABLED": "false"}) as gunicorn:
        yield gunicorn


@pytest.fixture
def services_restarted_afterwards():
    yield
    if not redis_answers() or not mariadb_answers():
        start_services()


@dataclass
class Outage:
    stopping_at: float  # the signal is sent
    stopped_at: float  # the server no longer accepts connections
    starting_at: float  # scripts/services.sh start begins
    started_at: float  # the server accepts connections again
    traffic: Recorder
    probes: Recorder

    def first_probe(self, path: str, status: int, after: float) -> float:
        """Return the seconds from `after` to the first probe of path with status."""
        for outcome in self.probes.outcomes(after, kind=path):
            if outcome.status == status:
                return outcome.at - after
        raise AssertionError(f"no {status} from {path} after the event: {self.probes.statuses(after, kind=path)}")


def register(url: str, email: str) -> None:
    response = requests.post(f"{url}/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=10)
    assert response.status_code == 201, response.text


def login(url: str, email: str) -> dict:
    response = requests.post(f"{url}/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def run_outage(server: Gunicorn, stop: Callable[[], None], start: Callable[[], None]) -> tuple[Outage, list[dict]]:
    """Run the load, stop a server for OUTAGE_SECONDS, start it, and return the outage and the held sessions."""
    load_emails = [f"load{index}@example.com" for index in range(LOAD_ACCOUNTS)]
    held_emails = [f"held{index}@example.com" for index in range(HELD_ACCOUNTS)]
    for email in load_emails + held_emails:
        register(server.url, email)
    held_sessions = [login(server.url, email) for email in held_emails]

    load = MixedLoad(server.url, load_emails, PASSWORD, max_seconds=OUTAGE_SECONDS + 60)
    probe_recorder = Recorder()
    probes = [StatusProbe(server.url, path, probe_recorder, max_seconds=OUTAGE_SECONDS + 60)
              for path in ("/ready", "/health")]
    load.start()
    for probe in probes:
        probe.start()
    try:
        time.sleep(STEADY_SECONDS)
        stopping_at = time.monotonic()
        stop()
        stopped_at = time.monotonic()
        time.sleep(max(0.0, OUTAGE_SECONDS - (stopped_at - stopping_at)))
        starting_at = time.monotonic()
        start()
        started_at = time.monotonic()
        time.sleep(AFTER_SECONDS)
    finally:
        load.stop()
        for probe in probes:
            probe.stop()

    return Outage(stopping_at, stopped_at, starting_at, started_at, load.recorder, probe_recorder), held_sessions


def check_outage(server: Gunicorn, outage: Outage, held_sessions: list[dict], workers_before: set[int]) -> None:
    traffic = outage.traffic
    before = traffic.statuses(end=outage.stopping_at)
    during = traffic.statuses(outage.stopping_at, outage.starting_at + READY_SECONDS)
    after = traffic.statuses(outage.starting_at + READY_SECONDS)
    ready_down = outage.first_probe("/ready", 503, outage.stopping_at)
    ready_up = outage.first_probe("/ready", 200, outage.starting_at)
    print(f"\nstopped in {outage.stopped_at - outage.stopping_at:.2f} s, started in "
          f"{outage.started_at - outage.starting_at:.2f} s, outage {outage.started_at - outage.stopping_at:.1f} s; "
          f"/ready 503 {ready_down:.2f} s after the stop began, 200 {ready_up:.2f} s after the start began; "
          f"traffic before {dict(before)}, "
          f"during {dict(during)} (" + ", ".join(
              f"{kind} {dict(traffic.statuses(outage.stopping_at, outage.starting_at + READY_SECONDS, kind))}"
              for kind in ("login", "refresh", "me")) + f"), after {dict(after)}")

    assert set(before) == {200}
    # Every client-facing failure is a 503 with Retry-After: no 500, no dropped connection.
    assert set(during) <= {200, 503}
    assert during[503] > 0, "the load never met the outage"
    unavailable = [o for o in traffic.outcomes() if o.status == 503]
    assert all(outcome.retry_after for outcome in unavailable)
    assert set(after) == {200}

    assert ready_down < READY_SECONDS
    assert ready_up < READY_SECONDS
    between = outage.probes.statuses(outage.stopping_at + READY_SECONDS, outage.starting_at, kind="/ready")
    assert set(between) == {503}
    settled = outage.probes.statuses(outage.starting_at + READY_SECONDS, kind="/ready")
    assert set(settled) == {200}
    assert set(outage.probes.statuses(kind="/health")) == {200}

    # The same workers served throughout: none was killed or restarted.
    assert server.worker_pids() == workers_before

    for pair in held_sessions:
        me = requests.get(f"{server.url}/v1/users/me", headers=bearer(pair["access_token"]), timeout=10)
        assert me.status_code == 200, me.text
        refreshed = requests.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]},
                                  timeout=10)
        assert refreshed.status_code == 200, refreshed.text
        me = requests.get(f"{server.url}/v1/users/me", headers=bearer(refreshed.json()["access_token"]), timeout=10)
        assert me.status_code == 200, me.text


def test_redis_outage_under_load(server, services_restarted_afterwards):
    workers = server.worker_pids()

    outage, held_sessions = run_outage(server, stop_test_redis, start_test_redis)

    check_outage(server, outage, held_sessions, workers)


def test_mariadb_outage_under_load(server, services_restarted_afterwards):
    workers = server.worker_pids()

    outage, held_sessions = run_outage(server, stop_test_mariadb, start_test_mariadb)

    check_outage(server, outage, held_sessions, workers)
