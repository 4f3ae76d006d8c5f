"""Rate limits through a real gunicorn master with 2 gevent workers behind one trusted proxy.

The tests play the proxy: each request carries the X-Forwarded-For header that a
proxy appending the client's address would send. Every request opens a new
connection, so both workers serve each sequence and the counts prove that the
workers share their counters in Redis.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.helpers import Gunicorn

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
LOGIN_LIMIT = 20  # the default GATEHOUSE_RATE_LIMIT_LOGIN, 20/minute;200/hour
ACCOUNT_LIMIT = 10  # the default GATEHOUSE_RATE_LIMIT_LOGIN_ACCOUNT, 10/minute;60/hour
DEFAULT_LIMIT, DEFAULT_PERIOD = 5, 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("gunicorn"), env={
        "GATEHOUSE_TRUSTED_PROXY_COUNT": "1",
        "GATEHOUSE_RATE_LIMIT_DEFAULT": f"{DEFAULT_LIMIT}/{DEFAULT_PERIOD}second",
        # The service's defaults, stated because the test helper relaxes every limit otherwise.
        "GATEHOUSE_RATE_LIMIT_LOGIN": "20/minute;200/hour",
        "GATEHOUSE_RATE_LIMIT_LOGIN_ACCOUNT": "10/minute;60/hour",
        "GATEHOUSE_RATE_LIMIT_REGISTER": "10/minute;50/hour",
        "GATEHOUSE_RATE_LIMIT_REFRESH": "60/minute",
        "GATEHOUSE_LOGIN_DELAY_AFTER_FAILURES": "5",
        # Failed logins and 429s would otherwise ban the test clients before the limits show.
        "GATEHOUSE_BAN_ENABLED": "false",
    }) as gunicorn:
        yield gunicorn


def via_proxy(client_address: str, forged: str | None = None) -> dict[str, str]:
    """Headers as the trusted proxy sends them: whatever the client sent, then the address it saw."""
    forwarded = f"{forged}, {client_address}" if forged else client_address
    return {"X-Forwarded-For": forwarded, "Connection": "close"}


def login(url: str, email: str, password: str, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{url}/v1/auth/login", json={"email": email, "password": password}, headers=headers,
                         timeout=30)


def log_records(server: Gunicorn, event: str) -> list[dict]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def test_login_limited_per_client_ip(server):
    client = "198.51.100.7"
    statuses = [login(server.url, f"user{n}@example.com", "wrong password", via_proxy(client)).status_code
                for n in range(LOGIN_LIMIT)]
    refused = login(server.url, "another@example.com", "wrong password", via_proxy(client))

    assert statuses == [401] * LOGIN_LIMIT
    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Limit"] == str(LOGIN_LIMIT)
    assert refused.headers["X-RateLimit-Remaining"] == "0"


def test_forged_forwarded_for_cannot_pick_key(server):
    client = "198.51.100.20"
    statuses = []
    for n in range(30):
        # A new forged first entry every time: only the entry the proxy appended counts.
        forged = f"10.{n}.{n}.{n}"
        statuses.append(login(server.url, f"user{n}@example.com", "wrong password", via_proxy(client, forged))
                        .status_code)

    assert statuses == [401] * LOGIN_LIMIT + [429] * (30 - LOGIN_LIMIT)


def test_clients_behind_same_proxy_limited_separately(server):
    for n in range(LOGIN_LIMIT + 1):
        login(server.url, f"user{n}@example.com", "wrong password", via_proxy("198.51.100.31"))

    neighbour = login(server.url, "user0@example.com", "wrong password", via_proxy("198.51.100.32"))

    assert neighbour.status_code == 401


def test_rate_limit_hit_logged_with_route_and_client(server):
    client = "198.51.100.40"
    for n in range(LOGIN_LIMIT + 1):
        login(server.url, f"user{n}@example.com", "wrong password", via_proxy(client, forged="10.9.9.9"))
    time.sleep(0.5)

    hits = [record for record in log_records(server, "request_completed")
            if record.get("client_ip") == client and record["status"] == 429]
    assert len(hits) == 1
    assert hits[0]["level"] == "warning"
    assert hits[0]["route"] == "/v1/auth/login"
    assert hits[0]["rate_limit"] == "client_ip"
    assert log_records(server, "rate_limited") == []
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'gatehouse_rate_limit_hits_total{limit="client_ip",route="/v1/auth/login"}' in metrics


def test_login_limited_per_account(server):
    email = "erin@example.com"
    registered = requests.post(f"{server.url}/v1/auth/register", json={"email": email, "password": PASSWORD},
                               headers=via_proxy("198.51.100.50"), timeout=30)
    assert registered.status_code == 201, registered.text

    # Right passwords from ten new addresses: the account limit counts every attempt.
    statuses = [login(server.url, email, PASSWORD, via_proxy(f"192.0.2.{n}")).status_code
                for n in range(ACCOUNT_LIMIT)]
    refused = login(server.url, email, PASSWORD, via_proxy("192.0.2.200"))
    known = login(server.url, email, PASSWORD, via_proxy("192.0.2.0"))

    assert statuses == [200] * ACCOUNT_LIMIT
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # An address that logged in before is not held back by the account limit.
    assert known.status_code == 200


def test_retry_after_matches_window(server):
    # One keep-alive connection, so one worker counts every request: the JWKS counts in worker memory.
    headers = {"X-Forwarded-For": "198.51.100.60"}
    url = f"{server.url}/.well-known/jwks.json"
    session = requests.Session()
    statuses = [session.get(url, headers=headers, timeout=10).status_code for _ in range(DEFAULT_LIMIT)]
    refused = session.get(url, headers=headers, timeout=10)
    refused_at = time.time()

    assert statuses == [200] * DEFAULT_LIMIT
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= DEFAULT_PERIOD
    assert abs(int(refused.headers["X-RateLimit-Reset"]) - (refused_at + retry_after)) <= 1.5

    time.sleep(max(0.0, refused_at + retry_after - time.time()))
    after = session.get(url, headers=headers, timeout=10)
    session.close()

    assert after.status_code == 200


def burst(server: Gunicorn, client_address: str, paths: list[str]) -> list[requests.Response]:
    """Send GET requests on one keep-alive connection, so one worker and its memory counters see them all."""
    with requests.Session() as session:
        return [session.get(f"{server.url}{path}", headers={"X-Forwarded-For": client_address}, timeout=10)
                for path in paths]


def test_not_found_burst_limited(server):
    *responses, refused = burst(server, "198.51.100.70", [f"/scan/{n}.php" for n in range(DEFAULT_LIMIT + 1)])

    assert [response.status_code for response in responses] == [404] * DEFAULT_LIMIT
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= DEFAULT_PERIOD
    assert refused.headers["X-RateLimit-Limit"] == str(DEFAULT_LIMIT)
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert "X-RateLimit-Reset" in refused.headers


def test_encoded_separator_burst_limited(server):
    *responses, refused = burst(server, "198.51.100.71",
                                [f"/v1%2Fadmin%2Fusers%2F{n}" for n in range(DEFAULT_LIMIT + 1)])

    assert [response.status_code for response in responses] == [400] * DEFAULT_LIMIT
    assert {response.json()["code"] for response in responses} == {"encoded_path_separator"}
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert "Retry-After" in refused.headers


def test_probes_never_limited(server):
    paths = [f"/scan/{n}" for n in range(DEFAULT_LIMIT + 1)] + ["/health", "/ready", "/metrics"] * 4
    responses = burst(server, "198.51.100.72", paths)
    probes = responses[DEFAULT_LIMIT + 1:]

    assert responses[DEFAULT_LIMIT].status_code == 429
    assert [response.status_code for response in probes] == [200] * len(probes)
    assert all("X-RateLimit-Limit" not in response.headers for response in probes)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'gatehouse_rate_limit_hits_total{limit="client_ip",route="unmatched"}' in metrics
    assert "/scan/" not in metrics
