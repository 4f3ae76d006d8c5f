"""Three instances (gunicorn masters with 2 workers each) behind a round-robin client, sharing one MariaDB and Redis.

Each instance trusts one proxy hop, so every test sets its own client address in
X-Forwarded-For and the per-address counters of one test do not touch another's.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter

import pytest
import requests

from tests.conftest import PASSWORD
from tests.helpers import (
    PROBES,
    bearer,
    create_user,
    login,
    probe_statuses,
    register,
    running_replicas,
    scrape,
)

pytestmark = pytest.mark.e2e

INSTANCES = 3
# Per client address and minute on the refresh route, counted in Redis.
REFRESH_LIMIT = 12
FAILED_LOGINS_BAN = 6
# How soon a change made through one instance must be enforced by every worker of every instance.
PROPAGATION_SECONDS = 1.0


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    with running_replicas(tmp_path_factory, INSTANCES, env={
        "GATEHOUSE_TRUSTED_PROXY_COUNT": "1",
        "GATEHOUSE_RATE_LIMIT_REFRESH": f"{REFRESH_LIMIT}/minute",
        "GATEHOUSE_BAN_FAILED_LOGINS": str(FAILED_LOGINS_BAN),
    }) as started:
        yield started


def round_robin(instances) -> itertools.cycle:
    """Cycle over the instances' base URLs, as a load balancer without stickiness would."""
    return itertools.cycle([instance.url for instance in instances])


def as_client(ip: str) -> dict[str, str]:
    """Headers of a request that the trusted proxy forwarded for `ip`, on a new connection."""
    return {"X-Forwarded-For": ip, "Connection": "close"}


def admin_token(instances, settings) -> str:
    create_user(settings, "root@example.com", PASSWORD, roles=("admin",))
    return login(instances[0].url, "root@example.com", PASSWORD, headers=as_client("192.0.2.200"))["access_token"]


def probe_every_instance(instances, path: str, token: str | None = None, client_ip: str | None = None) -> list[int]:
    return [status for instance in instances for status in probe_statuses(instance.url, path, token,
                                                                          client_ip=client_ip)]


def test_refresh_limit_shared_across_instances(instances):
    urls = round_robin(instances)
    statuses = [requests.post(f"{next(urls)}/v1/auth/refresh", json={"refresh_token": "not-a-real-token"},
                              headers=as_client("192.0.2.10"), timeout=10).status_code
                for _ in range(3 * REFRESH_LIMIT)]

    # The limit counts in Redis, so three instances allow it once between them, not three times.
    assert statuses == [401] * REFRESH_LIMIT + [429] * (2 * REFRESH_LIMIT)
    # Another address has its own count.
    other = requests.post(f"{instances[1].url}/v1/auth/refresh", json={"refresh_token": "not-a-real-token"},
                          headers=as_client("192.0.2.11"), timeout=10)
    assert other.status_code == 401


def test_manual_ban_reaches_every_instance(instances, settings):
    token = admin_token(instances, settings)
    assert probe_every_instance(instances, "/v1/users/me", client_ip="192.0.2.20") == [401] * (INSTANCES * PROBES)

    banned = requests.post(f"{instances[2].url}/v1/admin/bans", json={"ip": "192.0.2.20", "reason": "scale-out test"},
                           headers={**bearer(token), **as_client("192.0.2.200")}, timeout=10)
    assert banned.status_code == 201
    time.sleep(PROPAGATION_SECONDS)

    assert probe_every_instance(instances, "/v1/users/me", client_ip="192.0.2.20") == [403] * (INSTANCES * PROBES)
    assert probe_every_instance(instances, "/v1/users/me", client_ip="192.0.2.21") == [401] * (INSTANCES * PROBES)


def test_failures_across_instances_ban(instances):
    urls = round_robin(instances)
    failures = [requests.post(f"{next(urls)}/v1/auth/login",
                              json={"email": "nobody@example.com", "password": "wrong password"},
                              headers=as_client("192.0.2.30"), timeout=10).status_code
                for _ in range(FAILED_LOGINS_BAN)]
    time.sleep(PROPAGATION_SECONDS)

    # Each instance saw a third of the failures, and the count in Redis banned the address.
    assert failures == [401] * FAILED_LOGINS_BAN
    assert probe_every_instance(instances, "/v1/users/me", client_ip="192.0.2.30") == [403] * (INSTANCES * PROBES)


def test_logout_reaches_every_instance(instances):
    register(instances[0].url, "bob@example.com", PASSWORD)
    pair = login(instances[0].url, "bob@example.com", PASSWORD, headers=as_client("192.0.2.40"))
    assert probe_every_instance(instances, "/v1/users/me", pair["access_token"], "192.0.2.40") == [200] * (
        INSTANCES * PROBES)

    logout = requests.post(f"{instances[1].url}/v1/auth/logout",
                           headers={**bearer(pair["access_token"]), **as_client("192.0.2.40")}, timeout=10)
    assert logout.status_code == 204
    time.sleep(PROPAGATION_SECONDS)

    assert probe_every_instance(instances, "/v1/users/me", pair["access_token"], "192.0.2.40") == [401] * (
        INSTANCES * PROBES)


def requests_by_status(instances) -> Counter[str]:
    """Sum http_request_total over the instances' /metrics, by status."""
    totals: Counter[str] = Counter()
    for instance in instances:
        for name, value in scrape(instance.url).items():
            if name.startswith("http_request_total{"):
                totals[re.search(r'status="(\d+)"', name).group(1)] += value
    return totals


def test_metrics_sum_to_requests_sent(instances):
    before = requests_by_status(instances)
    urls = round_robin(instances)
    sent: Counter[str] = Counter()
    for index in range(60):
        # 200, 401 and 404 in turn, each on a new connection so every worker serves some.
        path = ("/.well-known/jwks.json", "/v1/users/me", "/no-such-path")[index % 3]
        status = requests.get(f"{next(urls)}{path}", headers=as_client("192.0.2.50"), timeout=10).status_code
        sent[str(status)] += 1

    after = requests_by_status(instances)

    assert sent == Counter({"200": 20, "401": 20, "404": 20})
    assert after - before == sent
