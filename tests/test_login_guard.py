"""Per-account login protection through the Flask test client, on the real MariaDB and Redis."""

from __future__ import annotations

import ast
import json
import secrets
import time

import pytest
import redis
import redis.connection

from service import metrics
from service.app import close_app, create_app
from service.config import load_settings
from service.errors import RateLimited
from service.limit_storage import RATE_LIMIT_KEY_PREFIX, FailoverStorage
from service.login_guard import LoginGuard, account_key, delay_seconds
from tests.blueprints.test_auth import run_sql
from tests.conftest import PASSWORD
from tests.helpers import ROOT, free_port

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


def test_account_limit_counts_fullwidth_spellings(account_limited):
    # Fullwidth spellings reach the same account, so they count as its email.
    spellings = ["\uff41lice@example.com", "\uff21LICE@example.com", "a\uff4cice@example.com", EMAIL]
    statuses = [wrong_login(account_limited, f"192.0.2.{n}", email=email).status_code
                for n, email in enumerate(spellings[:ACCOUNT_LIMIT])]

    refused = wrong_login(account_limited, "192.0.2.200")

    assert statuses == [401] * ACCOUNT_LIMIT
    assert refused.status_code == 429


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
    limited = [event for event in events if event["event"] == "request_completed" and event["status"] == 429]
    assert len(limited) == 1
    assert limited[0]["rate_limit"] == "login_delay"
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


# Settings of the guard tests below that use LoginGuard directly: two account limits,
# the second failure in a row starts the delay, and a known address stays known for an hour.
GUARD_SETTINGS = {"rate_limit_login_account": "10/minute;60/hour", "login_delay_after_failures": 2,
                  "login_delay_base_seconds": 30, "login_delay_max_seconds": 30,
                  "login_known_client_ttl_seconds": 3600}


def guard_key(key: str) -> bytes:
    """Return a login guard key as the rate-limit storage stores it in Redis."""
    return f"{RATE_LIMIT_KEY_PREFIX}:{key}".encode()


@pytest.fixture
def guard_on(settings):
    """Build a LoginGuard with GUARD_SETTINGS on its own FailoverStorage for a Redis URL."""
    storages = []

    def make(url: str) -> LoginGuard:
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=2, timeout=0.5, socket_connect_timeout=0.5,
                                                     socket_timeout=0.5)
        storage = FailoverStorage(connection_pool=pool, retry_seconds=60)
        storages.append(storage)
        return LoginGuard(storage, load_settings(GUARD_SETTINGS))

    yield make
    for storage in storages:
        storage.close()


@pytest.fixture
def round_trips(monkeypatch):
    """Count the requests that redis-py writes to a Redis connection: one per command, one per pipeline."""
    counter = {"sent": 0}
    send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(connection, command, check_health=True):
        counter["sent"] += 1
        return send(connection, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
    return counter


def test_success_clears_failures_and_marks_address(guard_on, settings):
    guard = guard_on(settings.redis_url.get_secret_value())
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    account = account_key(EMAIL)
    for _ in range(3):
        attempt = guard.admit(EMAIL, OWNER)
        guard.record_failure(attempt)
    # The third attempt passed the delay's gate, so both keys of the delay exist.
    assert client.exists(guard_key(f"login/failures/{account}")) == 1
    assert client.exists(guard_key(f"login/gate/{account}")) == 1

    guard.record_success(attempt)

    assert client.exists(guard_key(f"login/failures/{account}")) == 0
    assert client.exists(guard_key(f"login/gate/{account}")) == 0
    known = guard_key(f"login/known/{account}/{OWNER}")
    assert client.get(known) == b"1"
    assert 3590 <= client.ttl(known) <= 3600


def test_success_renews_known_address(guard_on, settings):
    guard = guard_on(settings.redis_url.get_secret_value())
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    known = guard_key(f"login/known/{account_key(EMAIL)}/{OWNER}")
    guard.record_success(guard.admit(EMAIL, OWNER))
    client.expire(known, 10)

    attempt = guard.admit(EMAIL, OWNER)
    guard.record_success(attempt)

    assert attempt.known_client
    assert client.get(known) == b"1"
    assert client.ttl(known) >= 3590


def test_known_address_counts_own_failures(guard_on, settings):
    guard = guard_on(settings.redis_url.get_secret_value())
    guard.record_success(guard.admit(EMAIL, OWNER))
    for _ in range(3):
        guard.record_failure(guard.admit(EMAIL, ATTACKER))

    # The other address's failures started the delay for the account, but not for the known address.
    owner = guard.admit(EMAIL, OWNER)

    assert owner.known_client
    with pytest.raises(RateLimited):
        guard.admit(EMAIL, ATTACKER)


def test_guard_round_trips_per_call(guard_on, settings, round_trips):
    guard = guard_on(settings.redis_url.get_secret_value())
    # Opens the pooled connection, whose handshake would be counted too.
    guard.record_success(guard.admit(EMAIL, OWNER))

    round_trips["sent"] = 0
    known = guard.admit(EMAIL, OWNER)
    admit_known = round_trips["sent"]
    round_trips["sent"] = 0
    guard.record_success(known)
    success = round_trips["sent"]
    round_trips["sent"] = 0
    guard.record_failure(known)
    failure_known = round_trips["sent"]
    round_trips["sent"] = 0
    guard.admit(EMAIL, ATTACKER)
    admit_unknown = round_trips["sent"]

    # The known address's keys are indexed in the same round trips that write them.
    assert admit_known == 1
    assert success == 1
    assert failure_known == 1
    # For an unknown address, each of the two account limits is counted in a round trip of its own.
    assert admit_unknown == 3


def test_success_recorded_in_memory_without_redis(guard_on):
    guard = guard_on(f"redis://:password@127.0.0.1:{free_port()}/0")
    for _ in range(2):
        guard.record_failure(guard.admit(EMAIL, OWNER))
    # The delay admits this attempt and rejects every other one for 30 s.
    attempt = guard.admit(EMAIL, OWNER)
    with pytest.raises(RateLimited):
        guard.admit(EMAIL, ATTACKER)

    guard.record_success(attempt)

    # Admitted without RateLimited: the success cleared the failures and the delay.
    assert not guard.admit(EMAIL, ATTACKER).known_client
    assert guard.admit(EMAIL, OWNER).known_client


NEW_PASSWORD = "a completely new passphrase"


def change_password(client, access_token, address, current):
    return client.post("/v1/users/me/password", json={"current_password": current, "new_password": NEW_PASSWORD},
                       headers={"Authorization": f"Bearer {access_token}"}, environ_base={"REMOTE_ADDR": address})


def access_token(client, address=OWNER):
    response = login(client, address)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


def test_password_change_delayed_after_failures(delayed):
    token = access_token(delayed)
    statuses = [change_password(delayed, token, ATTACKER, "wrong password").status_code for _ in range(3)]

    refused = change_password(delayed, token, ATTACKER, PASSWORD)

    # As on login, the right password is refused during the delay, so a 429 reveals nothing.
    assert statuses == [403, 403, 403]
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert login(delayed, OWNER, NEW_PASSWORD).status_code == 401


def test_password_change_admitted_after_retry_after(delayed):
    token = access_token(delayed)
    for _ in range(3):
        change_password(delayed, token, ATTACKER, "wrong password")
    refused = change_password(delayed, token, ATTACKER, PASSWORD)
    assert refused.status_code == 429

    time.sleep(int(refused.headers["Retry-After"]))

    assert change_password(delayed, token, ATTACKER, PASSWORD).status_code == 200
    assert login(delayed, OWNER, NEW_PASSWORD).status_code == 200


def test_password_change_failures_delay_login(delayed):
    # Logins and password changes count failures for the account together.
    token = access_token(delayed)
    for _ in range(3):
        change_password(delayed, token, ATTACKER, "wrong password")

    assert login(delayed, "192.0.2.77").status_code == 429


def test_password_change_burst_from_known_address_limited(make_client):
    # The owner's own address is known to the account, so neither the account limit nor
    # the delay (which starts after recorded failures) applies to a concurrent burst. The
    # route's limit, the login's per-address limit counted in Redis, still does.
    client = make_client(rate_limit_login="5/minute", rate_limit_login_account="1000/minute",
                         login_delay_after_failures=100)
    # An address of its own, so that the Redis window of an earlier run cannot count here.
    owner_address = f"2001:db8:{secrets.randbelow(0xffff):x}:{secrets.randbelow(0xffff):x}::1"
    token = access_token(client, owner_address)

    statuses = [change_password(client, token, owner_address, "wrong password").status_code for _ in range(8)]

    # The login above counted toward the login route's own counter, not this one.
    assert statuses == [403] * 5 + [429] * 3
    assert metrics.RATE_LIMIT_HITS.labels(route="/v1/users/me/password", limit="client_ip")._value.get() >= 3


def test_password_change_counts_account_limit(account_limited):
    # The owner's first login counts too, because the address was not known to the account yet.
    token = access_token(account_limited)
    statuses = [change_password(account_limited, token, ATTACKER, "wrong password").status_code
                for _ in range(ACCOUNT_LIMIT)]

    assert statuses == [403] * (ACCOUNT_LIMIT - 1) + [429]


def test_password_change_success_recorded(delayed, settings):
    store = redis.Redis.from_url(settings.redis_url.get_secret_value())
    account = account_key(EMAIL)
    token = access_token(delayed)
    change_password(delayed, token, ATTACKER, "wrong password")
    assert store.exists(guard_key(f"login/failures/{account}")) == 1

    assert change_password(delayed, token, ATTACKER, PASSWORD).status_code == 200

    # As a successful login does, the change cleared the failures and made the address known.
    assert store.exists(guard_key(f"login/failures/{account}")) == 0
    assert store.get(guard_key(f"login/known/{account}/{ATTACKER}")) == b"1"


def test_password_change_failures_count_toward_ban(make_client, settings):
    client = make_client(rate_limit_login_account="1000/minute", login_delay_after_failures=100, ban_failed_logins=3,
                         ban_allowlist="198.51.100.0/24")
    token = access_token(client)
    store = redis.Redis.from_url(settings.redis_url.get_secret_value())

    first = change_password(client, token, ATTACKER, "wrong password")
    assert first.status_code == 403
    assert store.get(f"gh:abuse:logins:{ATTACKER}") == b"1"

    statuses = [change_password(client, token, ATTACKER, "wrong password").status_code for _ in range(2)]
    banned = change_password(client, token, ATTACKER, PASSWORD)

    assert statuses == [403, 403]
    assert banned.status_code == 403
    assert banned.get_json()["code"] == "ip_banned"
    assert change_password(client, token, OWNER, PASSWORD).status_code == 200


PASSWORD_CHECKS = {"authenticate", "current_password_hash"}


def password_check_calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in PASSWORD_CHECKS]


def test_every_password_check_is_guarded():
    # A new route that checks a password outside guarded_password_check would give
    # guesses without the login delay and the ban counters.
    unguarded = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = {id(call) for node in ast.walk(tree) if isinstance(node, ast.With)
                   and any(getattr(item.context_expr.func, "id", None) == "guarded_password_check"
                           for item in node.items if isinstance(item.context_expr, ast.Call))
                   for call in password_check_calls(node)}
        unguarded += [f"{path.relative_to(ROOT)}:{call.lineno}" for call in password_check_calls(tree)
                      if id(call) not in guarded]

    assert unguarded == []
