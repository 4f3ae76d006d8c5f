"""The login guard's per-account index of per-address keys, on the real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis

from service import login_guard_index
from service.config import load_settings
from service.limit_storage import RATE_LIMIT_KEY_PREFIX, FailoverStorage
from service.login_guard import LoginGuard, account_key, clear_failures, erase_account
from service.login_guard_index import index_key, reindex_all
from service.maintenance.jobs import read_record
from service.networks import client_network
from tests.helpers import ROOT
from tests.test_login_guard import EMAIL, GUARD_SETTINGS, guard_key

ACCOUNT = account_key(EMAIL)
OTHER_EMAIL = "bob@example.com"
# Three addresses known to the account. The guard keys an IPv6 address by its /64
# network, whose name contains "/" itself.
KNOWN = ("198.51.100.10", "198.51.100.20", "2001:db8:1::5")
NETWORKS = [client_network(address) for address in KNOWN]
STRANGER = "203.0.113.66"


@pytest.fixture
def store(settings):
    """A Redis client of the test database, returning strings."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make_guard(settings):
    """Build a LoginGuard with GUARD_SETTINGS and the given overrides on the test Redis."""
    storages = []

    def make(**overrides) -> LoginGuard:
        pool = redis.BlockingConnectionPool.from_url(settings.redis_url.get_secret_value(), max_connections=2,
                                                     timeout=0.5, socket_timeout=0.5)
        storage = FailoverStorage(connection_pool=pool, retry_seconds=60)
        storages.append(storage)
        return LoginGuard(storage, load_settings({**GUARD_SETTINGS, **overrides}))

    yield make
    for storage in storages:
        storage.close()


@pytest.fixture
def guard(make_guard):
    return make_guard()


def know_address(guard: LoginGuard, address: str, email: str = EMAIL) -> None:
    guard.record_success(guard.admit(email, address))


def fail_three_times(guard: LoginGuard, address: str, email: str = EMAIL) -> None:
    """Record three failures; the third attempt passes the delay's gate, so the address gets a gate key too."""
    for _ in range(3):
        guard.record_failure(guard.admit(email, address))


def guard_state(store: redis.Redis, email: str = EMAIL) -> list[str]:
    """Return the names of every key of the login guard that names the account, found by SCAN."""
    return sorted(store.scan_iter(match=f"{RATE_LIMIT_KEY_PREFIX}:*{account_key(email)}*"))


def attacked_account(guard: LoginGuard) -> None:
    """Give the account known addresses, each with failures and a delay, and shared failures from a stranger."""
    for address in KNOWN:
        know_address(guard, address)
        fail_three_times(guard, address)
    fail_three_times(guard, STRANGER)


def scan_calls(store: redis.Redis) -> int:
    return int(store.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def expiry_ms(store: redis.Redis, key: str | bytes) -> int:
    return store.pexpiretime(key)


def write_pre_index_keys(store: redis.Redis, account: str, client: str) -> list[str]:
    """Write a known marker and a failure window as the login guard did before the index, and return their keys."""
    known = guard_key(f"login/known/{account}/{client}").decode()
    failures = guard_key(f"login/failures/{account}/{client}").decode()
    store.set(known, 1, ex=3600)
    store.lpush(failures, time.time())
    store.expire(failures, 600)
    return [known, failures]


def test_index_lists_known_addresses(guard, store):
    attacked_account(guard)

    members = store.zrange(index_key(ACCOUNT), 0, -1)

    # The stranger's failures count in the shared keys, which the index does not list.
    assert sorted(members) == sorted(NETWORKS)


def test_index_scores_last_expiry_of_client(guard, store):
    know_address(guard, KNOWN[0])
    # Shorter than the failure window, so the failure key outlives the marker.
    store.pexpire(guard_key(f"login/known/{ACCOUNT}/{NETWORKS[0]}"), 5000)

    guard.record_failure(guard.admit(EMAIL, KNOWN[0]))

    failures_expiry = expiry_ms(store, guard_key(f"login/failures/{ACCOUNT}/{NETWORKS[0]}"))
    assert store.zscore(index_key(ACCOUNT), NETWORKS[0]) == failures_expiry
    assert expiry_ms(store, index_key(ACCOUNT)) == failures_expiry


def test_index_expires_with_longest_key(make_guard, store):
    short_lived = make_guard(login_known_client_ttl_seconds=1)
    for address in KNOWN:
        know_address(short_lived, address)
    last_marker = guard_key(f"login/known/{ACCOUNT}/{NETWORKS[-1]}")

    assert expiry_ms(store, index_key(ACCOUNT)) == expiry_ms(store, last_marker)
    time.sleep(1.1)

    assert store.exists(index_key(ACCOUNT)) == 0
    # Only the account rate limit's windows remain, which the index does not list.
    assert [key for key in guard_state(store) if "/login-account/" not in key] == []


def test_index_drops_expired_members(make_guard, store):
    know_address(make_guard(login_known_client_ttl_seconds=1), KNOWN[0])
    time.sleep(1.1)

    know_address(make_guard(), KNOWN[1])

    assert store.zrange(index_key(ACCOUNT), 0, -1) == [NETWORKS[1]]


def test_index_keeps_max_clients(guard, store, monkeypatch):
    monkeypatch.setattr(login_guard_index, "MAX_INDEXED_CLIENTS", 2)
    for address in KNOWN:
        know_address(guard, address)
        # Scores in milliseconds: a pause keeps the order of the three logins.
        time.sleep(0.01)

    members = store.zrange(index_key(ACCOUNT), 0, -1)
    oldest = guard_key(f"login/known/{ACCOUNT}/{NETWORKS[0]}")

    # The address whose marker expires first gave way, and it is no longer known.
    assert members == NETWORKS[1:]
    assert store.exists(oldest) == 0
    assert not guard.admit(EMAIL, KNOWN[0]).known_client


def test_index_update_survives_script_flush(guard, store):
    know_address(guard, KNOWN[0])
    # Shorter than the failure window, so the index must take its score from the failure key.
    store.pexpire(guard_key(f"login/known/{ACCOUNT}/{NETWORKS[0]}"), 5000)
    # The limits library's scripts are gone, so the failure is recorded by a second call.
    store.script_flush()

    guard.record_failure(guard.admit(EMAIL, KNOWN[0]))

    failures_expiry = expiry_ms(store, guard_key(f"login/failures/{ACCOUNT}/{NETWORKS[0]}"))
    assert failures_expiry > 0
    assert store.zscore(index_key(ACCOUNT), NETWORKS[0]) == failures_expiry


def test_clear_failures_reaches_every_address(guard, store):
    attacked_account(guard)
    know_address(guard, KNOWN[0], email=OTHER_EMAIL)
    fail_three_times(guard, KNOWN[0], email=OTHER_EMAIL)
    other_before = guard_state(store, OTHER_EMAIL)

    cleared = clear_failures(store, EMAIL)

    # Failures and gates: three known addresses and the shared keys.
    assert cleared == 2 * len(KNOWN) + 2
    left = guard_state(store)
    assert [key for key in left if "/failures/" in key or "/gate/" in key] == []
    assert sorted(key for key in left if "/known/" in key) == sorted(
        guard_key(f"login/known/{ACCOUNT}/{network}").decode() for network in NETWORKS)
    markers = [expiry_ms(store, key) for key in left if "/known/" in key]
    assert expiry_ms(store, index_key(ACCOUNT)) == max(markers)
    assert guard_state(store, OTHER_EMAIL) == other_before
    for address in (*KNOWN, STRANGER):
        guard.admit(EMAIL, address)


def test_erase_account_deletes_every_key(guard, store):
    attacked_account(guard)
    know_address(guard, KNOWN[0], email=OTHER_EMAIL)
    other_before = guard_state(store, OTHER_EMAIL)
    assert {key.split("/")[1] for key in guard_state(store)} == {"known", "failures", "gate", "index",
                                                                 "login-account"}

    erased = erase_account(store, EMAIL, GUARD_SETTINGS["rate_limit_login_account"])

    assert erased > 3 * len(KNOWN)
    assert guard_state(store) == []
    assert guard_state(store, OTHER_EMAIL) == other_before


def test_reset_and_erase_issue_no_scan(guard, store):
    attacked_account(guard)
    before = scan_calls(store)

    clear_failures(store, EMAIL)
    erase_account(store, EMAIL, GUARD_SETTINGS["rate_limit_login_account"])

    assert scan_calls(store) == before


def test_pre_index_keys_missed_until_reindex(store):
    pre_index = write_pre_index_keys(store, ACCOUNT, NETWORKS[0])
    write_pre_index_keys(store, ACCOUNT, NETWORKS[2])

    assert erase_account(store, EMAIL, GUARD_SETTINGS["rate_limit_login_account"]) == 0
    assert sorted(store.exists(key) for key in pre_index) == [1, 1]

    counts = reindex_all(store)

    assert counts["index_updates"] == 2
    assert counts["clients_evicted"] == 0
    assert sorted(store.zrange(index_key(ACCOUNT), 0, -1)) == sorted([NETWORKS[0], NETWORKS[2]])
    assert erase_account(store, EMAIL, GUARD_SETTINGS["rate_limit_login_account"]) == 5
    assert guard_state(store) == []


def test_reindex_keeps_indexed_state(guard, store):
    attacked_account(guard)
    before = store.zrange(index_key(ACCOUNT), 0, -1, withscores=True)
    index_expiry = expiry_ms(store, index_key(ACCOUNT))

    reindex_all(store)

    assert store.zrange(index_key(ACCOUNT), 0, -1, withscores=True) == before
    assert expiry_ms(store, index_key(ACCOUNT)) == index_expiry


def test_reindex_command_records_job(store):
    write_pre_index_keys(store, ACCOUNT, NETWORKS[1])

    result = subprocess.run([sys.executable, "-m", "service.cli", "login-guard", "reindex"], cwd=ROOT,
                            env=dict(os.environ), capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    succeeded = [event for event in events if event["event"] == "job_succeeded"]
    assert len(succeeded) == 1
    assert succeeded[0]["index_updates"] == 1
    assert read_record(store, "login_guard_reindex").last_result["index_updates"] == 1
    assert store.zrange(index_key(ACCOUNT), 0, -1) == [NETWORKS[1]]
