"""Two replicas (gunicorn masters with 2 workers each) sharing one MariaDB and one Redis.

Changes made through one replica must be enforced by every worker of the other within
a second, and a warm authenticated request must touch neither MySQL nor Redis.
"""

from __future__ import annotations

import time

import pytest
import redis
import requests

from tests import helpers
from tests.conftest import PASSWORD
from tests.helpers import (
    PROBES,
    bearer,
    create_user,
    probe_statuses,
    restart_redis,
    run_as_mysql_root,
    running_replicas,
    start_services,
    stop_redis,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    with running_replicas(tmp_path_factory, 2) as started:
        yield started


def login(url: str, email: str) -> dict:
    return helpers.login(url, email, PASSWORD)


def register(url: str, email: str) -> str:
    return helpers.register(url, email, PASSWORD)


@pytest.fixture
def admin(replicas, settings) -> dict:
    create_user(settings, "root@example.com", PASSWORD, roles=("admin",))
    return login(replicas[0].url, "root@example.com")


def test_logout_reaches_other_replica(replicas):
    first, second = replicas
    register(first.url, "bob@example.com")
    pair = login(first.url, "bob@example.com")
    assert probe_statuses(second.url, "/v1/users/me", pair["access_token"]) == [200] * PROBES

    assert requests.post(f"{first.url}/v1/auth/logout", headers=bearer(pair["access_token"]), timeout=10).status_code == 204
    time.sleep(1.0)

    assert probe_statuses(second.url, "/v1/users/me", pair["access_token"]) == [401] * PROBES


def test_role_revocation_reaches_other_replica(replicas, admin):
    first, second = replicas
    user_id = register(first.url, "carol@example.com")
    carol = login(first.url, "carol@example.com")
    granted = requests.put(f"{first.url}/v1/admin/users/{user_id}/roles/admin", headers=bearer(admin["access_token"]),
                           timeout=10)
    assert granted.status_code == 200
    time.sleep(1.0)
    assert probe_statuses(second.url, "/v1/admin/roles", carol["access_token"]) == [200] * PROBES

    revoked = requests.delete(f"{first.url}/v1/admin/users/{user_id}/roles/admin",
                              headers=bearer(admin["access_token"]), timeout=10)
    assert revoked.status_code == 200
    time.sleep(1.0)

    assert probe_statuses(second.url, "/v1/admin/roles", carol["access_token"]) == [403] * PROBES


def test_disable_reaches_other_replica(replicas, admin):
    first, second = replicas
    user_id = register(first.url, "dave@example.com")
    dave = login(first.url, "dave@example.com")
    assert probe_statuses(second.url, "/v1/users/me", dave["access_token"]) == [200] * PROBES

    disabled = requests.post(f"{first.url}/v1/admin/users/{user_id}/disable", headers=bearer(admin["access_token"]),
                             timeout=10)
    assert disabled.status_code == 200
    time.sleep(1.0)

    assert probe_statuses(second.url, "/v1/users/me", dave["access_token"]) == [401] * PROBES


def test_delete_reaches_other_replica(replicas, admin):
    first, second = replicas
    user_id = register(first.url, "frank@example.com")
    frank = login(first.url, "frank@example.com")
    assert probe_statuses(second.url, "/v1/users/me", frank["access_token"]) == [200] * PROBES

    deleted = requests.delete(f"{first.url}/v1/admin/users/{user_id}", headers=bearer(admin["access_token"]),
                              timeout=10)
    assert deleted.status_code == 204
    time.sleep(1.0)

    assert probe_statuses(second.url, "/v1/users/me", frank["access_token"]) == [401] * PROBES
    refresh = requests.post(f"{second.url}/v1/auth/refresh", json={"refresh_token": frank["refresh_token"]},
                            timeout=10)
    assert refresh.status_code == 401


def redis_command_calls(client: redis.Redis) -> int:
    """Count every command Redis has run, leaving out INFO (this probe) and PING (connection health checks)."""
    stats = client.info("commandstats")
    return sum(entry["calls"] for name, entry in stats.items() if name not in ("cmdstat_info", "cmdstat_ping"))


def mysql_statement_counts() -> dict[str, int]:
    rows = run_as_mysql_root(
        "SHOW GLOBAL STATUS WHERE Variable_name IN"
        " ('Com_select', 'Com_insert', 'Com_update', 'Com_delete', 'Com_replace', 'Com_admin_commands')"
    )
    return {name: int(value) for name, value in (line.split("\t") for line in rows.strip().splitlines())}


def test_warm_request_touches_neither_mysql_nor_redis(replicas, settings):
    first, _ = replicas
    register(first.url, "erin@example.com")
    pair = login(first.url, "erin@example.com")
    # Warm both workers: claims, user and roles are cached from here on. The kernel
    # spreads new connections unevenly, so probe until two whole rounds query MySQL no more.
    quiet_rounds = 0
    for _ in range(12):
        mysql_before = mysql_statement_counts()
        assert probe_statuses(first.url, "/v1/users/me", pair["access_token"]) == [200] * PROBES
        quiet_rounds = quiet_rounds + 1 if mysql_statement_counts() == mysql_before else 0
        if quiet_rounds == 2:
            break
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    redis_before = redis_command_calls(client)
    mysql_before = mysql_statement_counts()

    statuses = probe_statuses(first.url, "/v1/users/me", pair["access_token"])
    statuses += probe_statuses(first.url, "/v1/users/me", pair["access_token"])

    assert statuses == [200] * (2 * PROBES)
    assert redis_command_calls(client) == redis_before
    assert mysql_statement_counts() == mysql_before


def test_revocation_after_redis_restart_enforced(replicas, settings):
    first, second = replicas
    register(first.url, "frank@example.com")
    pair = login(first.url, "frank@example.com")
    other = login(first.url, "frank@example.com")
    assert probe_statuses(second.url, "/v1/users/me", pair["access_token"]) == [200] * PROBES

    restart_redis(settings)
    # The listeners are still reconnecting: the revocation is written to Redis while
    # no worker is subscribed, so only the resync (or the fallback) can carry it.
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline and status != 204:
        status = requests.post(f"{first.url}/v1/auth/logout", headers=bearer(pair["access_token"]),
                               timeout=10).status_code
        if status != 204:
            time.sleep(0.1)
    assert status == 204
    time.sleep(1.0)

    assert probe_statuses(second.url, "/v1/users/me", pair["access_token"]) == [401] * PROBES
    assert probe_statuses(second.url, "/v1/users/me", other["access_token"]) == [200] * PROBES
    # Sessions issued before the restart survive it (Redis persists to disk).
    refreshed = requests.post(f"{second.url}/v1/auth/refresh", json={"refresh_token": other["refresh_token"]},
                              timeout=10)
    assert refreshed.status_code == 200


def test_redis_outage_fails_closed(replicas, settings):
    first, second = replicas
    register(first.url, "grace@example.com")
    pair = login(first.url, "grace@example.com")
    assert probe_statuses(second.url, "/v1/users/me", pair["access_token"]) == [200] * PROBES

    stop_redis(settings)
    try:
        time.sleep(1.0)
        during = probe_statuses(second.url, "/v1/users/me", pair["access_token"])
        health = requests.get(f"{second.url}/health", timeout=10).status_code
        ready = requests.get(f"{second.url}/ready", timeout=10).status_code
    finally:
        start_services()

    assert during == [503] * PROBES
    assert health == 200
    assert ready == 503
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and probe_statuses(second.url, "/v1/users/me", pair["access_token"]) != [200] * PROBES:
        time.sleep(0.2)
    assert probe_statuses(second.url, "/v1/users/me", pair["access_token"]) == [200] * PROBES
