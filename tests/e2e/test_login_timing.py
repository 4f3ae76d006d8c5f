"""Login timing through gunicorn: an unknown email and a wrong password cost the same time.

users.authenticate verifies the password against a dummy argon2id hash made with
the configured parameters when the email is unknown, so both failures do the same work.
"""

from __future__ import annotations

import random
import statistics
import time

import pytest
import requests

from tests.conftest import PASSWORD
from tests.helpers import Gunicorn

pytestmark = pytest.mark.e2e

ATTEMPTS = 200
WARMUP_ATTEMPTS = 10
# Failures per known account stay below the login delay threshold of RELAXED_LIMITS (100).
KNOWN_ACCOUNTS = 4
MAX_MEDIAN_DIFFERENCE = 0.05


@pytest.fixture
def server(tmp_path):
    # No bans: 400 failed logins from one address would otherwise ban it.
    with Gunicorn(tmp_path, env={"GATEHOUSE_BAN_ENABLED": "false"}) as gunicorn:
        yield gunicorn


def timed_login(session: requests.Session, url: str, email: str) -> float:
    started = time.perf_counter()
    response = session.post(f"{url}/v1/auth/login", json={"email": email, "password": "wrong " + PASSWORD},
                            timeout=10)
    elapsed = time.perf_counter() - started
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_credentials"
    return elapsed


def test_unknown_email_as_slow_as_wrong_password(server):
    known = [f"known{index}@example.com" for index in range(KNOWN_ACCOUNTS)]
    for email in known:
        response = requests.post(f"{server.url}/v1/auth/register", json={"email": email, "password": PASSWORD},
                                 timeout=10)
        assert response.status_code == 201, response.text

    session = requests.Session()
    for index in range(WARMUP_ATTEMPTS):
        timed_login(session, server.url, known[index % KNOWN_ACCOUNTS])
        timed_login(session, server.url, f"warmup{index}@example.com")

    # Each pair sends one attempt of each kind in a random order, so drift in the
    # machine's load affects both kinds alike.
    order = random.Random(20240601)
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    for index in range(ATTEMPTS):
        pair = [("known", known[index % KNOWN_ACCOUNTS]), ("unknown", f"nobody{index}@example.com")]
        order.shuffle(pair)
        for kind, email in pair:
            times[kind].append(timed_login(session, server.url, email))

    known_median = statistics.median(times["known"])
    unknown_median = statistics.median(times["unknown"])
    difference = abs(known_median - unknown_median) / min(known_median, unknown_median)
    print(f"\nlogin medians over {ATTEMPTS} attempts each: wrong password {known_median * 1000:.1f} ms, "
          f"unknown email {unknown_median * 1000:.1f} ms, difference {difference:.1%}")
    assert len(times["known"]) == ATTEMPTS
    assert len(times["unknown"]) == ATTEMPTS
    assert difference < MAX_MEDIAN_DIFFERENCE
