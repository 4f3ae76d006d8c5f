"""Per-account login protection through the Flask test client, on the real MariaDB and Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from service import metrics
from service.app import close_app, create_app
from service.config import load_settings
from service.login_guard import delay_seconds
from tests.blueprints.test_auth import run_sql
from tests.conftest import PASSWORD
from tests.helpers import free_port

OWNER = "198.51.100.10"
ATTACKER = "203.0.113.66"
EMAIL = "alice@example.com"
ACCOUNT_LIMIT = 4
# High enough that the per-address login limit never returns 429 in these tests.
NO_ADDRESS_LIMIT = "1000/minute"


@pytest.fixture
def make_client():
    """Build a test client of an app with the given settings, and a registered user in the database."""
    apps = []

    def make(**overrides):
        app = create_app({"rate_limit_login": NO_ADDRESS_LIMIT, **overrides})
        apps.append(app)
        client = app.test_client()
        if not run_sql(load_settings(), "SELECT id FROM users WHERE email = %s", (EMAIL,)):
            response = client.post("/v1/auth/register", json={"email": EMAIL, "password": PASSWORD})
            assert response.status_code == 201, response.get_json()
        return client

    yield make
    for app in apps:
        close_app(app)


@pytest.fixture
def account_limited(make_client):
    """Only the account rate limit can return 429, because the delay needs 100 failures."""
    return make_client(rate_limit_login_account=f"{ACCOUNT_LIMIT}/minute", login_delay_after_failures=100)


@pytest.fixture
def delayed(make_client):
    """Only the login delay can return 429: from the second failure on, 1 s, then 2 s."""
    return make_client(rate_limit_login_account="1000/minute", login_delay_after_failures=2,
                       login_delay_base_seconds=1, login_delay_max_seconds=2)


def login(client, address, password=PASSWORD, email=EMAIL):
    return client.post("/v1/auth/login", json={"email": email, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def wrong_login(client, address, email=EMAIL):
    return login(client, address, password="wrong password", email=email)


def hits(limit: str) -> float:
    return metrics.RATE_LIMIT_HITS.labels(route="/v1/auth/login", limit=limit)._value.get()


@pytest.mark.parametrize(("failures", "delay"), [(0, 0), (4, 0), (5, 1), (6, 2), (7, 4), (13, 256), (14, 300),
                                                 (10_000, 300)])
def test_delay_doubles_up_to_max(failures, delay):
    # The defaults: 5 free failures, then 1 s doubling up to 300 s.
    assert delay_seconds(failures, load_settings()) == delay


def test_account_limit_counts_every_address(account_limited):
    before = hits("account")
    statuses = [wrong_login(account_limited, f"192.0.2.{n}").status_code for n in range(ACCOUNT_LIMIT)]
    refused = wrong_login(account_limited, "192.0.2.200")

    assert statuses == [401] * ACCOUNT_LIMIT
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert hits("account") == before + 1


def test_account_limit_applies_to_unknown_email(account_limited):
    email = "nobody-here@example.com"
    statuses = [wrong_login(account_limited, f"192.0.2.{n}", email=email).status_code
                for n in range(ACCOUNT_LIMIT + 1)]

    # The same answers as for a registered account, so a 429 does not reveal one.
    assert statuses == [401] * ACCOUNT_LIMIT + [429]


def test_account_limit_skips_known_address(account_limited):
    assert login(account_limited, OWNER).status_code == 200
    attacker = [wrong_login(account_limited, f"203.0.113.{n}").status_code for n in range(ACCOUNT_LIMIT + 2)]

    owner = login(account_limited, OWNER)

    assert attacker[-1] == 429
    assert owner.status_code == 200


def test_delay_refuses_without_checking_password(delayed):
    before = hits("login_delay")
    statuses = [wrong_login(delayed, ATTACKER).status_code for _ in range(3)]

    refused = login(delayed, ATTACKER)

    # The third attempt used the one admission the 1 s delay allows. The right password
    # is refused too, so a 429 reveals nothing about it to a guesser.
    assert statuses == [401, 401, 401]
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert hits("login_delay") == before + 1


def test_delay_counts_every_address(delayed):
    statuses = [wrong_login(delayed, f"192.0.2.{n}").status_code for n in range(4)]

    assert statuses == [401, 401, 401, 429]


def test_delay_admits_after_retry_after(delayed):
    for _ in range(3):
        wrong_login(delayed, ATTACKER)
    refused = login(delayed, ATTACKER)
    assert refused.status_code == 429

    time.sleep(int(refused.headers["Retry-After"]))

    assert login(delayed, ATTACKER).status_code == 200


def test_delay_logged_with_client_ip(delayed, capsys):
    for _ in range(3):
        wrong_login(delayed, ATTACKER)
    capsys.readouterr()

    wrong_login(delayed, ATTACKER)

    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    limited = [event for event in events if event["event"] == "rate_limited"]
    assert len(limited) == 1
    assert limited[0]["limit"] == "login_delay"
    assert limited[0]["client_ip"] == ATTACKER
    assert limited[0]["route"] == "/v1/auth/login"


def test_known_address_passes_while_account_attacked(delayed):
    assert login(delayed, OWNER).status_code == 200
    attacker = [wrong_login(delayed, f"203.0.113.{n}").status_code for n in range(6)]

    owner = login(delayed, OWNER)

    assert 429 in attacker
    assert owner.status_code == 200


def test_known_address_has_own_delay(delayed):
    assert login(delayed, OWNER).status_code == 200
    for _ in range(3):
        wrong_login(delayed, OWNER)

    # The owner's own failures delay only the owner's address.
    assert login(delayed, OWNER).status_code == 429
    assert wrong_login(delayed, ATTACKER).status_code == 401


def test_success_forgets_failures(make_client):
    # With known addresses off, the owner's attempts all count against one key.
    client = make_client(rate_limit_login_account="1000/minute", login_delay_after_failures=2,
                         login_delay_base_seconds=1, login_delay_max_seconds=2, login_known_client_ttl_seconds=0)
    wrong_login(client, OWNER)
    assert login(client, OWNER).status_code == 200

    statuses = [wrong_login(client, OWNER).status_code for _ in range(3)]

    # Counting the failure before the success, the third attempt would wait for the 2 s delay.
    assert statuses == [401, 401, 401]


def test_disabled_account_is_not_a_failure(delayed, settings):
    run_sql(settings, "UPDATE users SET status = 'disabled' WHERE email = %s", (EMAIL,))

    statuses = [login(delayed, OWNER).status_code for _ in range(4)]

    # Counted as failures, the fourth attempt would wait for the 2 s delay.
    assert statuses == [403, 403, 403, 403]


def test_redis_keys_hold_no_email(delayed, settings):
    wrong_login(delayed, ATTACKER)
    login(delayed, OWNER)

    keys = redis.Redis.from_url(settings.redis_url.get_secret_value()).keys("*")
    assert keys
    assert [key for key in keys if b"alice" in key] == []


def test_guard_works_from_memory_without_redis(make_client):
    client = make_client(redis_url=f"redis://:password@127.0.0.1:{free_port()}/0", login_delay_after_failures=1,
                         login_delay_base_seconds=30, login_delay_max_seconds=30)

    statuses = [wrong_login(client, ATTACKER).status_code for _ in range(2)]
    refused = wrong_login(client, ATTACKER)

    assert statuses == [401, 401]
    assert refused.status_code == 429
    assert 29 <= int(refused.headers["Retry-After"]) <= 30
