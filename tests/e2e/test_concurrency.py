"""A burst of concurrent authenticated requests through a real gunicorn master with 2 gevent workers."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import Gunicorn

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
CONCURRENT_REQUESTS = 200
# Smaller than the number of requests each worker receives, so requests queue for Redis connections.
REDIS_POOL_SIZE = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("gunicorn"),
                        env={"GATEHOUSE_REDIS_POOL_SIZE": str(REDIS_POOL_SIZE)}, workers=2) as gunicorn:
        yield gunicorn


def register_and_login(url: str, email: str) -> tuple[str, dict]:
    """Register a user, log in, and return the user id and the token pair."""
    registered = requests.post(f"{url}/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=30)
    assert registered.status_code == 201, registered.text
    login = requests.post(f"{url}/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30)
    assert login.status_code == 200, login.text
    return registered.json()["id"], login.json()


def test_concurrent_me_requests_all_succeed(server):
    user_id, pair = register_and_login(server.url, "erin@example.com")
    headers = {"Authorization": f"Bearer {pair['access_token']}", "Connection": "close"}

    # The health prober waits on the same barrier, so its first probe starts with the burst.
    start_together = threading.Barrier(CONCURRENT_REQUESTS + 1)
    burst_finished = threading.Event()
    health_results: list[int | str] = []

    def fetch_me(_: int) -> requests.Response | str:
        start_together.wait(timeout=60)
        try:
            # requests.get opens a new connection for every call.
            return requests.get(f"{server.url}/v1/users/me", headers=headers, timeout=60)
        except requests.RequestException as exc:
            return repr(exc)

    def probe_health() -> None:
        start_together.wait(timeout=60)
        while not burst_finished.is_set():
            try:
                health_results.append(requests.get(f"{server.url}/health", timeout=10).status_code)
            except requests.RequestException as exc:
                health_results.append(repr(exc))
            burst_finished.wait(0.01)

    prober = threading.Thread(target=probe_health, name="health-prober")
    prober.start()
    try:
        with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
            results = list(pool.map(fetch_me, range(CONCURRENT_REQUESTS)))
    finally:
        burst_finished.set()
        prober.join(timeout=30)

    failures = [result for result in results if isinstance(result, str)]
    assert failures == []
    statuses = Counter(result.status_code for result in results)
    assert statuses == {200: CONCURRENT_REQUESTS}, [result.text for result in results if result.status_code != 200][:5]
    assert [result for result in results if "Too many connections" in result.text] == []
    assert {result.json()["id"] for result in results} == {user_id}

    assert health_results, "no /health probe ran during the burst"
    assert set(health_results) == {200}

    assert "Too many connections" not in server.output()
