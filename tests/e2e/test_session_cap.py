"""Parallel logins to one account through a real gunicorn master with 2 gevent workers, with a session maximum."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from service.redis_store import close_client, create_client
from service.sessions import user_sessions_key
from tests.helpers import Gunicorn, bearer, probe_statuses

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
MAX_SESSIONS = 4
PARALLEL_LOGINS = 30
# Each worker learns of the other worker's revocations from the events channel, within about a second.
PROPAGATION_SECONDS = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("gunicorn"), env={"GATEHOUSE_MAX_SESSIONS_PER_USER": str(MAX_SESSIONS)},
                  workers=2) as gunicorn:
        yield gunicorn


@pytest.fixture
def redis_client(settings):
    client = create_client(settings)
    yield client
    close_client(client)


def login(url: str, email: str) -> dict:
    # A new connection for every call, so that both workers serve some of the logins.
    response = requests.post(f"{url}/v1/auth/login", json={"email": email, "password": PASSWORD},
                             headers={"Connection": "close"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_parallel_logins_never_exceed_cap(server, redis_client):
    registered = requests.post(f"{server.url}/v1/auth/register", json={"email": "finn@example.com",
                                                                      "password": PASSWORD}, timeout=30)
    assert registered.status_code == 201, registered.text
    index_key = user_sessions_key(registered.json()["id"])
    start_together = threading.Barrier(PARALLEL_LOGINS)
    observed: list[int] = []
    finished = threading.Event()

    def parallel_login(_index: int) -> dict:
        start_together.wait(timeout=60)
        return login(server.url, "finn@example.com")

    def watch() -> None:
        while not finished.is_set():
            observed.append(redis_client.zcount(index_key, time.time(), "+inf"))
            finished.wait(0.002)

    watcher = threading.Thread(target=watch, name="session-count-watcher")
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_LOGINS) as pool:
            pairs = list(pool.map(parallel_login, range(PARALLEL_LOGINS)))
    finally:
        finished.set()
        watcher.join(timeout=30)

    assert observed
    assert max(observed) <= MAX_SESSIONS
    assert redis_client.zcard(index_key) == MAX_SESSIONS

    live, ended = [], []
    for pair in pairs:
        status = requests.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]},
                               timeout=30).status_code
        assert status in (200, 401)
        (live if status == 200 else ended).append(pair)
    assert len(live) == MAX_SESSIONS
    assert len(ended) == PARALLEL_LOGINS - MAX_SESSIONS

    listed = requests.get(f"{server.url}/v1/auth/sessions", headers=bearer(live[0]["access_token"]), timeout=30)
    assert listed.status_code == 200
    assert len(listed.json()["sessions"]) == MAX_SESSIONS

    # Every worker rejects the access tokens of the ended sessions, whichever worker ended them.
    deadline = time.monotonic() + PROPAGATION_SECONDS
    for pair in ended:
        statuses = probe_statuses(server.url, "/v1/users/me", pair["access_token"])
        while set(statuses) != {401} and time.monotonic() < deadline:
            time.sleep(0.1)
            statuses = probe_statuses(server.url, "/v1/users/me", pair["access_token"])
        assert set(statuses) == {401}
    me = requests.get(f"{server.url}/v1/users/me", headers=bearer(ended[0]["access_token"]), timeout=30)
    assert me.json()["code"] == "session_revoked"
