"""Crash logs and recovery under a real gunicorn master: aborted, killed and crashed workers, hung Redis."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import requests

from service.maintenance.scratch import ScratchRedis
from tests.helpers import Gunicorn, mariadb_pid, scrape

pytestmark = pytest.mark.e2e

# The smallest GATEHOUSE_TIMEOUT allowed; the master notices a silent worker within about a second more.
WORKER_TIMEOUT = 5
REDIS_SOCKET_TIMEOUT = 1.0
MYSQL_TIMEOUT = 1.0


def log_events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def wait_for_replacement(server: Gunicorn, exited_pid: int, timeout: float = 30.0) -> set[int]:
    """Wait until worker exited_pid has exited and the master runs two workers again; return their pids."""
    deadline = time.monotonic() + timeout
    while True:
        pids = server.worker_pids()
        if exited_pid not in pids and len(pids) == 2:
            return pids
        assert time.monotonic() < deadline, f"worker {exited_pid} not replaced within {timeout} s: {pids}"
        time.sleep(0.1)


def scrape_when_workers(url: str, count: int, timeout: float = 20.0) -> dict[str, float]:
    """Scrape until gatehouse_workers shows count workers serving, as after every boot."""
    deadline = time.monotonic() + timeout
    while (samples := scrape(url)).get("gatehouse_workers") != count:
        assert time.monotonic() < deadline, f"gatehouse_workers is {samples.get('gatehouse_workers')}, not {count}"
        time.sleep(0.1)
    return samples


def timed_with_health_probes(url: str, request) -> tuple[requests.Response, float, list[int]]:
    """Send request() while probing /health every 50 ms; return its response, its duration and the probe statuses."""
    health: list[int] = []
    stop_probing = threading.Event()

    def probe() -> None:
        while not stop_probing.is_set():
            health.append(requests.get(f"{url}/health", timeout=5).status_code)
            stop_probing.wait(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        started = time.monotonic()
        response = request()
        elapsed = time.monotonic() - started
    finally:
        stop_probing.set()
        prober.join(timeout=10)
    return response, elapsed, health


def request_total(samples: dict[str, float]) -> float:
    return sum(value for name, value in samples.items() if name.startswith("http_request_total{"))


@pytest.fixture
def server(tmp_path):
    with Gunicorn(tmp_path, env={"GATEHOUSE_TIMEOUT": str(WORKER_TIMEOUT)}, app="tests.e2e.hooks_app:app") as gunicorn:
        yield gunicorn


def test_blocked_worker_logs_greenlet_stacks(server):
    workers = server.worker_pids()

    def block() -> None:
        # The worker dies under this request, so the connection ends without a response.
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{server.url}/_test/block-loop?seconds=60", timeout=90)

    blocker = threading.Thread(target=block, daemon=True)
    blocker.start()

    deadline = time.monotonic() + WORKER_TIMEOUT + 15
    dumps: list[dict] = []
    while not dumps:
        assert time.monotonic() < deadline, f"no stack dump within {WORKER_TIMEOUT + 15} s:\n{server.output()[-3000:]}"
        time.sleep(0.2)
        dumps = [event for event in log_events(server.output()) if event["event"] == "worker_stacks_dumped"]

    assert len(dumps) == 1
    assert dumps[0]["worker_pid"] in workers
    assert dumps[0]["level"] == "critical"
    # The blocked request's frame is in the dump, with the greenlets waiting on the hub.
    assert "block_loop" in dumps[0]["stacks"]
    assert "Greenlets" in dumps[0]["stacks"]
    assert "WORKER TIMEOUT" in server.output()
    wait_for_replacement(server, dumps[0]["worker_pid"])
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def test_killed_worker_replaced_metrics_consistent(server):
    # A recorded route: probes are left out of the request metrics.
    for _ in range(20):
        response = requests.get(f"{server.url}/.well-known/jwks.json", timeout=5, headers={"Connection": "close"})
        assert response.status_code == 200
    before = scrape_when_workers(server.url, 2)
    assert request_total(before) >= 20
    victim = min(server.worker_pids())

    os.kill(victim, signal.SIGKILL)
    wait_for_replacement(server, victim)

    # Without child_exit marking the dead worker, its gauge file would keep counting: 3.
    after = scrape_when_workers(server.url, 2)
    # Counters of the dead worker stay in the sum: nothing goes backwards.
    assert request_total(after) >= request_total(before)
    for name, value in before.items():
        if name.endswith("_total") or "_total{" in name:
            assert after.get(name, 0) >= value, name
    killed = [event for event in log_events(server.output()) if str(victim) in event["event"]
              and "SIGKILL" in event["event"]]
    assert len(killed) == 1
    assert killed[0]["level"] == "error"


def test_crashed_worker_dumps_fatal_stack(server):
    victim = min(server.worker_pids())

    os.kill(victim, signal.SIGSEGV)
    wait_for_replacement(server, victim)

    output = server.output()
    assert "Fatal Python error: Segmentation fault" in output
    assert "most recent call first" in output
    [crash] = [event for event in log_events(output) if event["event"] == f"Worker (pid:{victim}) was sent SIGSEGV!"]
    # A crash is an error, as a worker killed by SIGKILL is.
    assert crash["level"] == "error"
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def test_stopped_redis_gives_503_health_stays(tmp_path):
    with ScratchRedis(tmp_path) as scratch:
        gunicorn = Gunicorn(tmp_path, env={
            "GATEHOUSE_REDIS_URL": scratch.url,
            "GATEHOUSE_REDIS_SOCKET_TIMEOUT": str(REDIS_SOCKET_TIMEOUT),
            "GATEHOUSE_REDIS_CONNECT_TIMEOUT": str(REDIS_SOCKET_TIMEOUT),
        })
        gunicorn.start()
        try:
            gunicorn.wait_ready()
            body = {"refresh_token": "not-a-real-refresh-token"}
            # Warm both workers' pools and script caches while Redis still responds.
            for _ in range(4):
                warm = requests.post(f"{gunicorn.url}/v1/auth/refresh", json=body, timeout=10,
                                     headers={"Connection": "close"})
                assert warm.status_code == 401

            os.kill(scratch.pid(), signal.SIGSTOP)
            try:
                response, elapsed, health = timed_with_health_probes(gunicorn.url, lambda: requests.post(
                    f"{gunicorn.url}/v1/auth/refresh", json=body, timeout=30))
            finally:
                os.kill(scratch.pid(), signal.SIGCONT)
        finally:
            gunicorn.stop()

    assert response.status_code == 503
    assert response.json()["code"] == "redis_unavailable"
    assert response.headers["Retry-After"] == "1"
    print(f"refresh with Redis stopped: 503 after {elapsed:.2f} s")
    # NOTE: the refresh waits for two Redis calls in turn, each up to the socket timeout:
    # the token rotation, then the rate limiter's lookup for its response headers.
    assert REDIS_SOCKET_TIMEOUT * 0.8 <= elapsed < 2 * REDIS_SOCKET_TIMEOUT + 1.0
    assert len(health) >= 5
    assert set(health) == {200}


def test_stopped_mysql_gives_503_health_stays(tmp_path):
    gunicorn = Gunicorn(tmp_path, env={
        "GATEHOUSE_MYSQL_CONNECT_TIMEOUT": str(MYSQL_TIMEOUT),
        "GATEHOUSE_MYSQL_READ_TIMEOUT": str(MYSQL_TIMEOUT),
        "GATEHOUSE_MYSQL_WRITE_TIMEOUT": str(MYSQL_TIMEOUT),
    })
    gunicorn.start()
    try:
        gunicorn.wait_ready()
        body = {"email": "nobody@example.com", "password": "correct horse battery staple"}
        for _ in range(4):
            warm = requests.post(f"{gunicorn.url}/v1/auth/login", json=body, timeout=10, headers={"Connection": "close"})
            assert warm.status_code == 401

        server_pid = mariadb_pid()
        os.kill(server_pid, signal.SIGSTOP)
        try:
            response, elapsed, health = timed_with_health_probes(gunicorn.url, lambda: requests.post(
                f"{gunicorn.url}/v1/auth/login", json=body, timeout=60))
        finally:
            os.kill(server_pid, signal.SIGCONT)
    finally:
        gunicorn.stop()

    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    # The warm-up used the pooled connections moments ago, so the pool lends one without a ping
    # and the SELECT's read times out: one timeout. A connection idle for 5 s or more waits for three.
    print(f"login with MariaDB stopped: 503 after {elapsed:.2f} s")
    assert elapsed < 2 * MYSQL_TIMEOUT + 1.5
    assert len(health) >= 5
    assert set(health) == {200}
