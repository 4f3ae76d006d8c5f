"""IP bans through a real gunicorn with 2 workers behind one trusted proxy hop."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import requests

from tests.conftest import PASSWORD
from tests.helpers import Gunicorn, bearer, create_user, reset_state, wait_until

pytestmark = pytest.mark.e2e

PROBES = 16
# The other worker applies a ban from the events channel, within about a second.
BAN_PROPAGATION_SECONDS = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory, settings):
    # Workers load the bans from Redis at start and keep them in memory, where the flush
    # before each test does not reach. A ban left by an earlier run must not be among them.
    reset_state(settings)
    with Gunicorn(tmp_path_factory.mktemp("bans"), env={
        "GATEHOUSE_TRUSTED_PROXY_COUNT": "1",
        "GATEHOUSE_BAN_FAILED_LOGINS": "5",
        "GATEHOUSE_BAN_ALLOWLIST": "198.51.100.0/24",
        # Out of reach, so repeated failed logins get 401 until the ban, not 429.
        "GATEHOUSE_LOGIN_DELAY_AFTER_FAILURES": "100",
        "GATEHOUSE_RATE_LIMIT_LOGIN_ACCOUNT": "1000/minute",
    }) as gunicorn:
        yield gunicorn


def as_client(ip: str) -> dict[str, str]:
    """Headers of a request that the trusted proxy forwarded for `ip`, on a new connection."""
    return {"X-Forwarded-For": ip, "Connection": "close"}


def fail_logins(url: str, ip: str, count: int) -> list[int]:
    return [requests.post(f"{url}/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong password"},
                          headers=as_client(ip), timeout=10).status_code for _ in range(count)]


def probe(url: str, ip: str) -> list[int]:
    return [requests.get(f"{url}/v1/users/me", headers=as_client(ip), timeout=10).status_code for _ in range(PROBES)]


def wait_until_banned_everywhere(url: str, ip: str) -> None:
    """Wait until every probe from ip gets 403, on new connections and so from both workers.

    The worker that records the ban applies it at once, and the other one learns it from
    the events channel a moment later.
    """
    wait_until(lambda: probe(url, ip) == [403] * PROBES, BAN_PROPAGATION_SECONDS,
               f"not every worker bans {ip}")


def test_ban_enforced_by_every_worker_and_lifted(server, settings):
    assert fail_logins(server.url, "203.0.113.5", 5) == [401] * 5
    wait_until_banned_everywhere(server.url, "203.0.113.5")
    assert probe(server.url, "203.0.113.6") == [401] * PROBES
    assert requests.get(f"{server.url}/health", headers=as_client("203.0.113.5"), timeout=10).status_code == 200

    create_user(settings, "root@example.com", PASSWORD, roles=("admin",))
    admin = requests.post(f"{server.url}/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD},
                          headers=as_client("203.0.113.99"), timeout=10).json()
    lifted = requests.delete(f"{server.url}/v1/admin/bans/203.0.113.5",
                             headers={**bearer(admin["access_token"]), **as_client("203.0.113.99")}, timeout=10)
    assert lifted.status_code == 204
    time.sleep(1.0)

    assert probe(server.url, "203.0.113.5") == [401] * PROBES


def test_forged_first_entry_does_not_escape_ban(server):
    assert fail_logins(server.url, "203.0.113.7", 5) == [401] * 5
    wait_until_banned_everywhere(server.url, "203.0.113.7")
    # The client prepends its own entries; only the one the proxy added counts.
    forged = [requests.get(f"{server.url}/v1/users/me", timeout=10,
                           headers={"X-Forwarded-For": f"10.9.9.{index}, 203.0.113.7", "Connection": "close"}
                           ).status_code for index in range(PROBES)]
    assert forged == [403] * PROBES


def test_allowlisted_network_never_banned(server):
    assert fail_logins(server.url, "198.51.100.9", 12) == [401] * 12
    assert probe(server.url, "198.51.100.9") == [401] * PROBES


def test_second_offence_banned_longer(server, settings):
    assert fail_logins(server.url, "203.0.113.8", 5) == [401] * 5
    create_user(settings, "root2@example.com", PASSWORD, roles=("admin",))
    admin = requests.post(f"{server.url}/v1/auth/login", json={"email": "root2@example.com", "password": PASSWORD},
                          headers=as_client("203.0.113.98"), timeout=10).json()
    headers = {**bearer(admin["access_token"]), **as_client("203.0.113.98")}

    def ban_of(ip: str) -> dict:
        bans = requests.get(f"{server.url}/v1/admin/bans", headers=headers, timeout=10).json()["bans"]
        [ban] = [ban for ban in bans if ban["ip"] == ip]
        return ban

    first = ban_of("203.0.113.8")
    assert requests.delete(f"{server.url}/v1/admin/bans/203.0.113.8", headers=headers, timeout=10).status_code == 204
    time.sleep(1.0)
    assert fail_logins(server.url, "203.0.113.8", 5) == [401] * 5
    second = ban_of("203.0.113.8")

    def length(ban: dict) -> float:
        return datetime.fromisoformat(ban["expires_at"]).timestamp() - datetime.fromisoformat(ban["created_at"]).timestamp()

    assert first["offences"] == 1
    assert second["offences"] == 2
    # Defaults: 900 s, then four times that.
    assert length(first) == pytest.approx(900, abs=2)
    assert length(second) == pytest.approx(3600, abs=2)


def test_ban_of_one_spelling_blocks_the_others(server, settings):
    create_user(settings, "root3@example.com", PASSWORD, roles=("admin",))
    admin = requests.post(f"{server.url}/v1/auth/login", json={"email": "root3@example.com", "password": PASSWORD},
                          headers=as_client("203.0.113.97"), timeout=10).json()
    headers = {**bearer(admin["access_token"]), **as_client("203.0.113.97")}

    created = requests.post(f"{server.url}/v1/admin/bans", json={"ip": "2001:db8:5::5", "reason": "scanner"},
                            headers=headers, timeout=10)
    assert created.status_code == 201
    assert created.json()["ip"] == "2001:db8:5::/64"
    assert requests.post(f"{server.url}/v1/admin/bans", json={"ip": "203.0.113.20", "reason": "scanner"},
                         headers=headers, timeout=10).status_code == 201
    time.sleep(1.0)

    for spelling in ("2001:DB8:5::5", "2001:db8:5:0:0:0:0:5", "2001:0db8:0005::0005", "2001:db8:5::1:2",
                     "::ffff:203.0.113.20"):
        assert probe(server.url, spelling) == [403] * PROBES, spelling
    assert probe(server.url, "2001:db8:6::5") == [401] * PROBES


def test_failed_logins_across_64_ban_it(server):
    neighbours = ["2001:db8:7::1", "2001:db8:7::2", "2001:DB8:7::1:2", "2001:db8:7::3", "2001:db8:7::4"]
    statuses = [fail_logins(server.url, ip, 1)[0] for ip in neighbours]
    assert statuses == [401] * 5
    wait_until_banned_everywhere(server.url, "2001:db8:7::ffff")
