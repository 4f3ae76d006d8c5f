"""Per-route rate limits through the Flask test client, counted in the real test Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from service import metrics
from service.app import close_app, create_app
from service.limit_storage import RATE_LIMIT_KEY_PREFIX
from service import networks
from service.limits import client_network, limit_storage
from tests.conftest import PASSWORD

LOGIN_LIMIT = 3


@pytest.fixture
def limited_app():
    app = create_app({"rate_limit_login": f"{LOGIN_LIMIT}/minute", "rate_limit_default": "4/minute",
                      "rate_limit_login_account": "100/minute"})
    yield app
    close_app(app)


def failed_login(client, email="nobody@example.com", address="127.0.0.1"):
    return client.post("/v1/auth/login", json={"email": email, "password": "wrong password"},
                       environ_base={"REMOTE_ADDR": address})


def log_events(text: str, event: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


@pytest.mark.parametrize(("address", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("203.0.113.7:443", "203.0.113.7"),
    ("[2001:db8:1:2::5]:443", "2001:db8:1:2::/64"),
    ("[2001:db8:1:2::5]", "2001:db8:1:2::/64"),
    ("not an address", "unparsable"),
    (None, "unparsable"),
    ("203.0.113.07", "unparsable"),
    ("203.0.113.7:", "unparsable"),
    ("203.0.113.7:http", "unparsable"),
    ("host.example:443", "unparsable"),
    ("[2001:db8::5", "unparsable"),
    ("[2001:db8::5]x", "unparsable"),
    ("[203.0.113.7]:443x", "unparsable"),
], ids=["ipv4", "ipv6", "ipv6_same_network", "ipv4_mapped", "ipv6_scoped", "ipv4_port", "ipv6_port",
        "ipv6_brackets", "garbage", "missing", "leading_zero", "empty_port", "named_port", "host_name",
        "open_bracket", "text_after_bracket", "text_after_port"])
def test_client_network_keys(address, key):
    assert client_network(address) == key


def test_unparsable_address_logged_once(app, monkeypatch, capsys):
    monkeypatch.setattr(networks, "_unparsable_logged", False)
    client_network.cache_clear()
    capsys.readouterr()

    for address in ("proxy-copied-value", "another value", "proxy-copied-value"):
        assert client_network(address) == "unparsable"

    logged = log_events(capsys.readouterr().out, "client_address_unparsable")
    assert len(logged) == 1
    assert logged[0]["client_address"] == "proxy-copied-value"
    assert "GATEHOUSE_TRUSTED_PROXY_COUNT" in logged[0]["hint"]


def test_login_limited_per_client_address(limited_app):
    client = limited_app.test_client()
    statuses = [failed_login(client, f"user{n}@example.com").status_code for n in range(LOGIN_LIMIT)]
    refused = failed_login(client, "another@example.com")

    assert statuses == [401] * LOGIN_LIMIT
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    problem = refused.get_json()
    assert problem["code"] == "rate_limited"
    assert problem["status"] == 429
    assert problem["request_id"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Limit"] == str(LOGIN_LIMIT)
    assert refused.headers["X-RateLimit-Remaining"] == "0"


def test_other_address_has_own_limit(limited_app):
    client = limited_app.test_client()
    for n in range(LOGIN_LIMIT + 1):
        failed_login(client, f"user{n}@example.com", address="198.51.100.1")

    assert failed_login(client, address="198.51.100.2").status_code == 401


def test_headers_count_down(limited_app):
    client = limited_app.test_client()
    before = time.time()
    responses = [failed_login(client, f"user{n}@example.com") for n in range(LOGIN_LIMIT)]

    assert [response.headers["X-RateLimit-Remaining"] for response in responses] == ["2", "1", "0"]
    assert {response.headers["X-RateLimit-Limit"] for response in responses} == {"3"}
    reset = int(responses[0].headers["X-RateLimit-Reset"])
    assert before + 59 <= reset <= time.time() + 61


def test_routes_count_separately(limited_app):
    client = limited_app.test_client()
    for n in range(LOGIN_LIMIT + 1):
        failed_login(client, f"user{n}@example.com")

    response = client.get("/.well-known/jwks.json")

    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "4"


def test_default_limit_applies_to_unlisted_routes(limited_app):
    client = limited_app.test_client()
    statuses = [client.get("/.well-known/jwks.json").status_code for _ in range(5)]

    assert statuses == [200, 200, 200, 200, 429]


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_exempt(limited_app, path):
    client = limited_app.test_client()
    responses = [client.get(path) for _ in range(10)]

    assert [response.status_code for response in responses] == [200] * 10
    assert all("X-RateLimit-Limit" not in response.headers for response in responses)


def test_hit_logged_and_counted(limited_app, capsys):
    client = limited_app.test_client()
    counter = metrics.RATE_LIMIT_HITS.labels(route="/v1/auth/login", limit="client_ip")
    hits_before = counter._value.get()
    for n in range(LOGIN_LIMIT):
        failed_login(client, f"user{n}@example.com", address="192.0.2.44")
    capsys.readouterr()

    failed_login(client, address="192.0.2.44")

    output = capsys.readouterr().out
    # One line for the refused request: its request_completed names the limit.
    assert log_events(output, "rate_limited") == []
    events = [event for event in log_events(output, "request_completed") if event["status"] == 429]
    assert len(events) == 1
    assert events[0]["level"] == "warning"
    assert events[0]["error_code"] == "rate_limited"
    assert events[0]["route"] == "/v1/auth/login"
    assert events[0]["client_ip"] == "192.0.2.44"
    assert events[0]["rate_limit"] == "client_ip"
    assert events[0]["retry_after"] >= 1
    assert counter._value.get() == hits_before + 1


def test_rate_limit_hits_ban_address(settings):
    app = create_app({"rate_limit_default": "1/minute", "ban_rate_limit_hits": 5})
    try:
        client = app.test_client()
        address = {"REMOTE_ADDR": "192.0.2.77"}
        statuses = [client.get("/.well-known/jwks.json", environ_base=address).status_code for _ in range(6)]
        banned = client.get("/.well-known/jwks.json", environ_base=address)

        # The fifth 429 reaches the ban threshold.
        assert statuses == [200, 429, 429, 429, 429, 429]
        assert banned.status_code == 403
        assert banned.get_json()["code"] == "ip_banned"
        [ban] = app.extensions["gatehouse"].blacklist.list()
        assert ban.cause == "rate_limit"
    finally:
        close_app(app)


def test_counters_live_in_redis(limited_app, settings):
    client = limited_app.test_client()
    failed_login(client)

    # The URL carries the test Redis password, so keys here prove the limits library
    # authenticated through the installed redis-py.
    keys = redis.Redis.from_url(settings.redis_url.get_secret_value()).keys(f"{RATE_LIMIT_KEY_PREFIX}:*")
    assert any(b"127.0.0.1/auth.login" in key for key in keys), keys
    assert not limit_storage(limited_app).using_memory


def test_counting_survives_script_flush(limited_app, settings):
    client = limited_app.test_client()
    failed_login(client)
    redis.Redis.from_url(settings.redis_url.get_secret_value()).script_flush()

    second = failed_login(client)

    # redis-py reloads the Lua scripts on NOSCRIPT, as after a Redis restart.
    assert second.headers["X-RateLimit-Remaining"] == str(LOGIN_LIMIT - 2)
    assert not limit_storage(limited_app).using_memory


def test_bearer_routes_count_in_memory(limited_app, settings):
    client = limited_app.test_client()
    client.post("/v1/auth/register", json={"email": "alice@example.com", "password": PASSWORD})
    token = client.post("/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD}).get_json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}

    statuses = [client.get("/v1/users/me", headers=headers).status_code for _ in range(5)]

    assert statuses == [200, 200, 200, 200, 429]
    # Counted in this worker's memory, so the authenticated hot path makes no Redis call.
    keys = redis.Redis.from_url(settings.redis_url.get_secret_value()).keys(f"{RATE_LIMIT_KEY_PREFIX}:*")
    assert [key for key in keys if b"users.me" in key] == []


@pytest.mark.parametrize("path", ["/.well-known/jwks.json", "/openapi.json"])
def test_static_documents_count_in_memory(limited_app, settings, path):
    client = limited_app.test_client()

    statuses = [client.get(path, environ_base={"REMOTE_ADDR": "192.0.2.81"}).status_code for _ in range(5)]

    assert statuses == [200, 200, 200, 200, 429]
    # Counted in this worker's memory, so a stalled Redis does not hold up key discovery.
    keys = redis.Redis.from_url(settings.redis_url.get_secret_value()).keys(f"{RATE_LIMIT_KEY_PREFIX}:*")
    assert [key for key in keys if b"192.0.2.81" in key] == []


def test_openapi_lists_429_except_exempt(client):
    paths = client.get("/openapi.json").get_json()["paths"]

    assert "429" in paths["/v1/auth/login"]["post"]["responses"]
    assert "429" in paths["/.well-known/jwks.json"]["get"]["responses"]
    assert "429" not in paths["/health"]["get"]["responses"]


def test_route_limits_count_shortest_first():
    app = create_app({"rate_limit_login": "100/minute;3/hour", "rate_limit_login_account": "100/minute"})
    try:
        client = app.test_client()
        allowed = [failed_login(client, f"user{n}@example.com") for n in range(3)]
        refused = failed_login(client, "another@example.com")
    finally:
        close_app(app)

    assert [response.status_code for response in allowed] == [401] * 3
    assert [response.headers["X-RateLimit-Limit"] for response in allowed] == ["100"] * 3
    assert [response.headers["X-RateLimit-Remaining"] for response in allowed] == ["99", "98", "97"]
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["Retry-After"]) > 60


def test_route_limits_cannot_be_declared_with_decorators(limited_app):
    limiter = limited_app.extensions["gatehouse.limiter"]
    with pytest.raises(TypeError, match="ROUTE_LIMIT_SETTINGS"):
        limiter.limit("1/second")


# Requests that match no route: two unknown paths, a known path with a method it does
# not serve, and an encoded separator.
UNMATCHED_REQUESTS = [
    ("GET", "/wp-login.php"),
    ("DELETE", "/.well-known/jwks.json"),
    ("GET", "/v1%2Fadmin%2Fusers"),
    ("GET", "/admin/.env"),
]


def send(client, method: str, path: str, address: str = "192.0.2.60"):
    return client.open(path, method=method, environ_base={"REMOTE_ADDR": address})


def test_unmatched_requests_share_one_limit(limited_app):
    client = limited_app.test_client()
    responses = [send(client, method, path) for method, path in UNMATCHED_REQUESTS]
    refused = send(client, "GET", "/yet/another/path")

    assert [response.status_code for response in responses] == [404, 405, 400, 404]
    assert [response.headers["X-RateLimit-Remaining"] for response in responses] == ["3", "2", "1", "0"]
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Limit"] == "4"
    assert refused.headers["X-RateLimit-Remaining"] == "0"


def test_encoded_separator_burst_limited(limited_app):
    client = limited_app.test_client()
    responses = [send(client, "GET", f"/v1%2Fadmin%2Fusers%2F{n}") for n in range(4)]
    refused = send(client, "GET", "/v1/admin%5Cusers")

    assert [response.status_code for response in responses] == [400] * 4
    assert {response.get_json()["code"] for response in responses} == {"encoded_path_separator"}
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "rate_limited"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert "Retry-After" in refused.headers


def test_unmatched_limit_per_client(limited_app):
    client = limited_app.test_client()
    for _ in range(5):
        send(client, "GET", "/wp-login.php", address="192.0.2.61")

    assert send(client, "GET", "/wp-login.php", address="192.0.2.62").status_code == 404


def test_unmatched_limit_spares_routes(limited_app):
    client = limited_app.test_client()
    for _ in range(5):
        send(client, "GET", "/wp-login.php")

    response = send(client, "GET", "/.well-known/jwks.json")

    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "3"


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_exempt_after_unmatched_burst(limited_app, path):
    client = limited_app.test_client()
    for _ in range(5):
        send(client, "GET", "/wp-login.php")

    responses = [send(client, "GET", path) for _ in range(10)]

    assert [response.status_code for response in responses] == [200] * 10
    assert all("X-RateLimit-Limit" not in response.headers for response in responses)


def test_unmatched_counted_in_memory(limited_app, settings):
    client = limited_app.test_client()
    for method, path in UNMATCHED_REQUESTS:
        send(client, method, path)

    keys = redis.Redis.from_url(settings.redis_url.get_secret_value()).keys(f"{RATE_LIMIT_KEY_PREFIX}:*")
    assert [key for key in keys if b"unmatched" in key or b"192.0.2.60" in key] == []


def test_unmatched_hits_share_one_label(limited_app, capsys):
    client = limited_app.test_client()
    counter = metrics.RATE_LIMIT_HITS.labels(route="unmatched", limit="client_ip")
    hits_before = counter._value.get()
    for _ in range(4):
        send(client, "GET", "/wp-login.php", address="192.0.2.63")
    capsys.readouterr()

    for path in ("/a", "/b", "/v1%2Fc", "/d/e/f"):
        assert send(client, "GET", path, address="192.0.2.63").status_code == 429

    assert counter._value.get() == hits_before + 4
    routes = {sample.labels["route"] for family in metrics.RATE_LIMIT_HITS.collect() for sample in family.samples}
    assert not routes & {"/a", "/b", "/v1%2Fc", "/d/e/f", "None"}
    events = [event for event in log_events(capsys.readouterr().out, "request_completed") if event["status"] == 429]
    assert len(events) == 4
    assert {event["client_ip"] for event in events} == {"192.0.2.63"}
    assert {event["rate_limit"] for event in events} == {"client_ip"}


def test_unmatched_hits_ban_address(settings):
    app = create_app({"rate_limit_default": "1/minute", "ban_rate_limit_hits": 5})
    try:
        client = app.test_client()
        statuses = [send(client, "GET", f"/scan/{n}", address="192.0.2.78").status_code for n in range(6)]
        banned = send(client, "GET", "/.well-known/jwks.json", address="192.0.2.78")
        probe = send(client, "GET", "/health", address="192.0.2.78")

        # The fifth 429 reaches the ban threshold.
        assert statuses == [404, 429, 429, 429, 429, 429]
        assert banned.status_code == 403
        assert banned.get_json()["code"] == "ip_banned"
        [ban] = app.extensions["gatehouse"].blacklist.list()
        assert ban.cause == "rate_limit"
        assert probe.status_code == 200
    finally:
        close_app(app)
