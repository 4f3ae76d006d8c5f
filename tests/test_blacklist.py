"""IP bans on the real Redis: thresholds, escalation, allowlist, manual bans and rotation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest
import redis

from service import metrics
from service.app import close_app, create_app
from service.blacklist import BANS_KEY, InvalidBanLength, parse_networks
from service.networks import UNPARSABLE_CLIENT, parse_network_key
from service.redis_store import KEY_PREFIX
from tests.conftest import PASSWORD
from tests.helpers import ROOT, bearer, wait_until

ATTACKER = "192.0.2.10"
# The login delay is pushed out of reach, so repeated failed logins reach the ban thresholds.
SETTINGS = {"ban_failed_logins": 3, "ban_distinct_accounts": 4, "ban_base_seconds": 60, "ban_multiplier": 4,
            "ban_max_seconds": 600, "ban_allowlist": "198.51.100.0/24,2001:db8:aa::1/128",
            "login_delay_after_failures": 100}


@pytest.fixture
def ban_app():
    app = create_app(SETTINGS)
    yield app
    close_app(app)


def fail_login(client, ip: str, email: str = "alice@example.com"):
    return client.post("/v1/auth/login", json={"email": email, "password": "wrong password"},
                       environ_base={"REMOTE_ADDR": ip})


def test_failed_logins_ban_address(ban_app, user):
    client = ban_app.test_client()
    assert [fail_login(client, ATTACKER).status_code for _ in range(3)] == [401, 401, 401]

    refused = client.get("/v1/users/me", environ_base={"REMOTE_ADDR": ATTACKER})
    assert refused.status_code == 403
    assert refused.get_json()["code"] == "ip_banned"
    assert 55 <= int(refused.headers["Retry-After"]) <= 60
    assert client.get("/health", environ_base={"REMOTE_ADDR": ATTACKER}).status_code == 200
    assert client.head("/ready", environ_base={"REMOTE_ADDR": ATTACKER}).status_code in (200, 503)
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": ATTACKER}).status_code == 200
    # Probes send GET: another method on their paths is refused like any other request.
    for path in ("/health", "/ready", "/metrics"):
        probe_post = client.post(path, environ_base={"REMOTE_ADDR": ATTACKER})
        assert probe_post.status_code == 403, path
        assert probe_post.get_json()["code"] == "ip_banned"
    other = client.post("/v1/auth/login", json={"email": "alice@example.com", "password": PASSWORD},
                        environ_base={"REMOTE_ADDR": "192.0.2.11"})
    assert other.status_code == 200


def test_many_accounts_ban_as_stuffing(ban_app):
    app = create_app({**SETTINGS, "ban_failed_logins": 100})
    client = app.test_client()
    statuses = [fail_login(client, ATTACKER, f"victim{index}@example.com").status_code for index in range(4)]
    assert statuses == [401] * 4
    [ban] = app.extensions["gatehouse"].blacklist.list()
    assert ban.cause == "credential_stuffing"
    assert fail_login(client, ATTACKER).status_code == 403
    close_app(app)


def test_repeat_offender_banned_longer(ban_app, user):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    client = ban_app.test_client()
    for _ in range(3):
        fail_login(client, ATTACKER)
    first = blacklist.get(ATTACKER)
    assert first.offences == 1
    assert first.expires_at - first.created_at == pytest.approx(60, abs=1)

    blacklist.unban(ATTACKER, actor="test")
    bans = ban_app.extensions["gatehouse"].bans
    bans.apply_event({"kind": "ip_unbanned", "ip": ATTACKER})
    # The ban's own event may still arrive from the listener; the unban's event follows it.
    wait_until(lambda: bans.banned_until(ATTACKER) is None, 5, "the unban did not reach the worker")
    for _ in range(3):
        fail_login(client, ATTACKER)
    second = blacklist.get(ATTACKER)
    assert second.offences == 2
    assert second.expires_at - second.created_at == pytest.approx(240, abs=1)


def test_escalation_capped_at_maximum(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    for round_number in range(4):
        blacklist.unban(ATTACKER, actor="test")
        for _ in range(3):
            blacklist.record_failed_login(ATTACKER, "alice@example.com")
    ban = blacklist.get(ATTACKER)
    assert ban.offences == 4
    assert ban.expires_at - ban.created_at == pytest.approx(600, abs=1)


def test_automatic_ban_records_when_it_began(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    before = time.time()
    for _ in range(3):
        blacklist.record_failed_login(ATTACKER, "alice@example.com")
    after = time.time()

    ban = blacklist.get(ATTACKER)

    # To the fraction of a second, as a manual ban's: whole seconds put it before the offence.
    assert before <= ban.created_at <= after
    assert ban.expires_at == int(ban.created_at + 60)


def test_allowlisted_network_never_banned(ban_app, user):
    client = ban_app.test_client()
    statuses = [fail_login(client, "198.51.100.20").status_code for _ in range(10)]
    assert statuses == [401] * 10
    assert ban_app.extensions["gatehouse"].blacklist.list() == []


def test_unban_of_expired_ban_not_found(ban_app, admin_tokens, settings):
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])
    assert client.post("/v1/admin/bans", json={"ip": "203.0.113.50", "reason": "expiry", "duration_seconds": 60},
                       headers=headers).status_code == 201
    # What Redis contains once the ban has expired: its hash is gone and its set entry stays until a rotation.
    store = redis.Redis.from_url(settings.redis_url.get_secret_value())
    store.delete(f"{KEY_PREFIX}ban:203.0.113.50")
    store.zadd(BANS_KEY, {"203.0.113.50": time.time() - 1})
    store.close()
    audit_before = client.get("/v1/admin/audit", headers=headers).get_json()["entries"]

    response = client.delete("/v1/admin/bans/203.0.113.50", headers=headers)

    assert response.status_code == 404
    assert client.get("/v1/admin/audit", headers=headers).get_json()["entries"] == audit_before


def test_manual_ban_list_and_unban(ban_app, admin_tokens):
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])
    created = client.post("/v1/admin/bans", json={"ip": "2001:db8::0:1", "reason": "scanner"}, headers=headers)
    assert created.status_code == 201
    body = created.get_json()
    assert body["ip"] == "2001:db8::/64"
    assert body["expires_at"] is None
    assert body["actor"] == admin_tokens["user_id"]

    listed = client.get("/v1/admin/bans", headers=headers).get_json()["bans"]
    assert [ban["ip"] for ban in listed] == ["2001:db8::/64"]
    refused = client.get("/v1/users/me", environ_base={"REMOTE_ADDR": "2001:db8::1"})
    assert refused.status_code == 403
    assert "Retry-After" not in refused.headers

    assert client.delete("/v1/admin/bans/2001:db8::/64", headers=headers).status_code == 204
    assert client.get("/v1/users/me", environ_base={"REMOTE_ADDR": "2001:db8::1"}).status_code == 401
    assert client.delete("/v1/admin/bans/2001:db8::1", headers=headers).status_code == 404
    actions = [entry["action"] for entry in client.get("/v1/admin/audit", headers=headers).get_json()["entries"]]
    assert "ip_banned" in actions
    assert "ip_unbanned" in actions


def test_manual_ban_duration_seconds(ban_app, admin_tokens):
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])
    before = time.time()

    created = client.post("/v1/admin/bans", json={"ip": "192.0.2.93", "reason": "scraping", "duration_seconds": 3600},
                          headers=headers)

    assert created.status_code == 201
    expires_at = datetime.fromisoformat(created.get_json()["expires_at"]).timestamp()
    assert before + 3600 - 1 <= expires_at <= time.time() + 3600 + 1
    entries = client.get("/v1/admin/audit", headers=headers).get_json()["entries"]
    details = [entry["detail"] for entry in entries if entry["action"] == "ip_banned"]
    assert details == [{"reason": "scraping", "seconds": 3600}]


def test_manual_ban_rejects_seconds_field(ban_app, admin_tokens):
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])

    response = client.post("/v1/admin/bans", json={"ip": "192.0.2.94", "reason": "scraping", "seconds": 3600},
                           headers=headers)

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "seconds"
    assert client.get("/v1/admin/bans", headers=headers).get_json()["bans"] == []


@pytest.mark.parametrize("duration", ["3600", True, 3600.5], ids=["string", "boolean", "fraction"])
def test_manual_ban_duration_must_be_a_whole_number(ban_app, admin_tokens, duration):
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])

    response = client.post("/v1/admin/bans", json={"ip": "192.0.2.95", "reason": "scraping",
                                                   "duration_seconds": duration}, headers=headers)

    assert response.status_code == 400
    assert response.get_json()["field"] == "duration_seconds"
    assert client.get("/v1/admin/bans", headers=headers).get_json()["bans"] == []


def test_manual_ban_duration_accepts_whole_float(ban_app, admin_tokens):
    response = ban_app.test_client().post("/v1/admin/bans", json={
        "ip": "192.0.2.96", "reason": "scraping", "duration_seconds": 3600.0}, headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 201


@pytest.mark.parametrize(("ip", "status", "code"), [("not-an-ip", 400, "invalid_request"),
                                                    ("2001:db8::/64", 400, "invalid_request"),
                                                    ("198.51.100.7", 409, "conflict"),
                                                    ("::ffff:198.51.100.7", 409, "conflict"),
                                                    ("2001:db8:aa::9", 409, "conflict")])
def test_manual_ban_rejects_bad_address(ban_app, admin_tokens, ip, status, code):
    response = ban_app.test_client().post("/v1/admin/bans", json={"ip": ip, "reason": "x"},
                                          headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == status
    assert response.get_json()["code"] == code
    assert response.get_json()["field"] == "ip"
    if status == 400:
        assert "IPv4 or IPv6 address" in response.get_json()["detail"]


@pytest.mark.parametrize(("ip", "key"), [("[2001:db8:77::2]:443", "2001:db8:77::/64"), ("[2001:db8:78::2]", "2001:db8:78::/64"),
                                       ("192.0.2.81:8080", "192.0.2.81")])
def test_manual_ban_takes_address_forms_of_log_lines(ban_app, admin_tokens, ip, key):
    """The ban takes the forms with port and brackets that the unban takes, as log lines show addresses."""
    response = ban_app.test_client().post("/v1/admin/bans", json={"ip": ip, "reason": "from a log line"},
                                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["ip"] == key


@pytest.mark.parametrize("ip", ["192.0.2.84:99999", "192.0.2.85:\u00b2", "192.0.2.86:\u0663", "[192.0.2.87]",
                                "192.0.2.88:123456", "[2001:db8::1]:65536", " 192.0.2.82 "])
def test_manual_ban_rejects_address_with_invalid_port(ban_app, admin_tokens, ip):
    """A port is 1 to 5 ASCII digits up to 65535, and brackets enclose IPv6 addresses only."""
    response = ban_app.test_client().post("/v1/admin/bans", json={"ip": ip, "reason": "x"},
                                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 400
    assert response.get_json()["field"] == "ip"


@pytest.mark.parametrize(("duration", "expected"), [("1e308", "less than or equal to 31536000"),
                                                    ("-1e308", "greater than or equal to 60")])
def test_manual_ban_states_bounds_of_huge_duration(ban_app, admin_tokens, duration, expected):
    response = ban_app.test_client().post(
        "/v1/admin/bans", data=f'{{"ip": "192.0.2.83", "reason": "x", "duration_seconds": {duration}}}',
        content_type="application/json", headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 400
    assert response.get_json()["field"] == "duration_seconds"
    assert expected in response.get_json()["detail"]


@pytest.mark.parametrize("reason", ["line\nbreak", "nul\u0000", "tab\tbed", "\u202eesrever", "isolate\u2066x\u2069",
                                    "c1\u0085", "line\u2028separator", "paragraph\u2029separator"])
def test_manual_ban_rejects_control_and_bidi_characters(ban_app, admin_tokens, reason):
    response = ban_app.test_client().post("/v1/admin/bans", json={"ip": "192.0.2.97", "reason": reason},
                                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "reason"
    assert "bidirectional" in response.get_json()["detail"]
    assert ban_app.extensions["gatehouse"].blacklist.list() == []


def test_manual_ban_keeps_other_scripts_and_marks(ban_app, admin_tokens):
    reason = "scanner \u05e1\u05d5\u05e8\u05e7 \u200f(RTL mark) \u00e9t\u00e9 \u2014 \U0001f6ab"
    response = ban_app.test_client().post("/v1/admin/bans", json={"ip": "192.0.2.98", "reason": reason},
                                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["reason"] == reason


def test_rotate_drops_expired_and_is_idempotent(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    blacklist.ban("192.0.2.50", reason="short", seconds=60, actor="test")
    blacklist.ban("192.0.2.51", reason="forever", seconds=None, actor="test")
    later = time.time() + 120

    first = blacklist.rotate(now=later)
    second = blacklist.rotate(now=later)

    assert first["expired_bans_removed"] == 1
    assert first["live_bans"] == 1
    assert second["expired_bans_removed"] == 0
    assert [ban.ip for ban in blacklist.list(now=later)] == ["192.0.2.51"]


def test_ban_reaches_other_worker(ban_app):
    other = create_app(SETTINGS)
    try:
        ban_app.extensions["gatehouse"].blacklist.ban("192.0.2.60", reason="x", seconds=300, actor="test")
        deadline = time.monotonic() + 1.0
        status = None
        while time.monotonic() < deadline and status != 403:
            status = other.test_client().get("/v1/users/me", environ_base={"REMOTE_ADDR": "192.0.2.60"}).status_code
            time.sleep(0.05)
        assert status == 403
    finally:
        close_app(other)


def test_ban_of_locally_allowlisted_address_not_enforced(ban_app):
    # An instance with a narrower allowlist bans an address that this one's allowlist covers.
    narrower = create_app({**SETTINGS, "ban_allowlist": ""})
    try:
        narrower.extensions["gatehouse"].blacklist.ban("198.51.100.7", reason="x", seconds=300, actor="test")
        wait_until(lambda: narrower.test_client().get(
            "/v1/users/me", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 403,
            timeout=2, failure="the narrower instance did not enforce its own ban")
        bans = ban_app.extensions["gatehouse"].bans
        bans.resync()

        response = ban_app.test_client().get("/v1/users/me", environ_base={"REMOTE_ADDR": "198.51.100.7"})

        assert response.status_code == 401
        assert bans.banned_until("198.51.100.7") is None
        assert bans.apply_event({"kind": "ip_banned", "ip": "198.51.100.8", "until": 253402300799})
        assert bans.banned_until("198.51.100.8") is None
    finally:
        close_app(narrower)


def test_rotate_command_records_success(ban_app, settings):
    import subprocess
    import sys

    import redis

    from tests.helpers import ROOT

    ban_app.extensions["gatehouse"].blacklist.ban("192.0.2.70", reason="x", seconds=60, actor="test")
    runs = [subprocess.run([sys.executable, "-m", "service.cli", "blacklist", "rotate"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0]
    record = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True).hgetall(
        "gh:job:blacklist_rotate")
    assert float(record["last_success_at"]) > time.time() - 60
    assert '"live_bans": 1' in record["last_result"]


@pytest.mark.parametrize(("text", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("::FFFF:cb00:7107", "203.0.113.7"),
    ("203.0.113.7/32", "203.0.113.7"),
    ("2001:db8:5::5", "2001:db8:5::/64"),
    ("2001:DB8:5::5", "2001:db8:5::/64"),
    ("2001:db8:5:0:0:0:0:5", "2001:db8:5::/64"),
    ("2001:0db8:0005::0005", "2001:db8:5::/64"),
    ("2001:db8:5::ffff:1", "2001:db8:5::/64"),
    ("2001:db8:5::/64", "2001:db8:5::/64"),
    ("2001:DB8:5::7/64", "2001:db8:5::/64"),
    (" 2001:db8:5::5 ", "2001:db8:5::/64"),
    ("203.0.113.7:443", "203.0.113.7"),
    ("[2001:db8:5::5]:443", "2001:db8:5::/64"),
    ("[2001:db8:5::5]", "2001:db8:5::/64"),
])
def test_network_key_of_spellings(text, key):
    assert parse_network_key(text) == key


@pytest.mark.parametrize("text", ["not-an-ip", "", UNPARSABLE_CLIENT, "2001:db8::/48", "2001:db8::/96",
                                  "203.0.113.0/24", "2001:db8::1::2", "203.0.113.07", "host.example:443",
                                  "[2001:db8::1::2]:443", "203.0.113.7:"])
def test_network_key_rejects_other_text(text):
    with pytest.raises(ValueError):
        parse_network_key(text)


@pytest.mark.parametrize("spelling", ["192.0.2.90:40123", "[::ffff:192.0.2.90]:443"])
def test_ban_covers_address_with_port(ban_app, spelling):
    client = ban_app.test_client()
    ban_app.extensions["gatehouse"].blacklist.ban("192.0.2.90", reason="test", seconds=60, actor="test")
    bans = ban_app.extensions["gatehouse"].bans
    wait_until(lambda: bans.banned_until("192.0.2.90") is not None, 5, "the ban did not reach the worker")

    response = client.get("/v1/users/me", environ_base={"REMOTE_ADDR": spelling})
    assert response.status_code == 403
    assert response.get_json()["code"] == "ip_banned"


def test_allowlist_reads_ipv4_mapped_networks():
    assert parse_networks("::ffff:198.51.100.0/120, 10.0.0.0/8") == parse_networks("198.51.100.0/24,10.0.0.0/8")


def test_allowlist_covers_ipv4_mapped_and_overlapping_64(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    for _ in range(3):
        assert blacklist.record_failed_login("::ffff:198.51.100.20", "alice@example.com") is None
        assert blacklist.record_failed_login("2001:db8:aa::2", "alice@example.com") is None
    assert blacklist.list() == []


def test_failed_logins_across_64_share_one_count(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    assert blacklist.record_failed_login("2001:db8::1", "alice@example.com") is None
    assert blacklist.record_failed_login("2001:DB8::2", "alice@example.com") is None
    ban = blacklist.record_failed_login("2001:db8::1:2", "alice@example.com")
    assert ban is not None
    assert ban.ip == "2001:db8::/64"


def test_failed_logins_ipv4_mapped_share_count(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    blacklist.record_failed_login(ATTACKER, "alice@example.com")
    blacklist.record_failed_login(f"::ffff:{ATTACKER}", "alice@example.com")
    ban = blacklist.record_failed_login(ATTACKER, "alice@example.com")
    assert ban is not None
    assert ban.ip == ATTACKER


def test_unparsable_address_never_banned(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    results = [blacklist.record_failed_login("unknown", "alice@example.com") for _ in range(5)]
    assert results == [None] * 5
    assert blacklist.list() == []


def test_automatic_ban_covers_64_neighbours(ban_app, user):
    client = ban_app.test_client()
    assert [fail_login(client, "2001:db8::1").status_code for _ in range(3)] == [401, 401, 401]
    for neighbour in ("2001:db8::1", "2001:db8::2", "2001:db8::1:2", "2001:DB8:0:0:ffff::9"):
        refused = client.get("/v1/users/me", environ_base={"REMOTE_ADDR": neighbour})
        assert refused.status_code == 403, neighbour
    assert client.get("/v1/users/me", environ_base={"REMOTE_ADDR": "2001:db8:0:1::1"}).status_code == 401


@pytest.mark.parametrize(("banned", "spellings"), [
    ("2001:db8:5::5", ["2001:DB8:5::5", "2001:db8:5:0:0:0:0:5", "2001:0db8:0005::0005", "2001:db8:5::6"]),
    ("203.0.113.7", ["203.0.113.7", "::ffff:203.0.113.7", "::FFFF:CB00:7107"]),
    ("::ffff:203.0.113.8", ["203.0.113.8"]),
])
def test_manual_ban_blocks_every_spelling(ban_app, admin_tokens, banned, spellings):
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])
    assert client.post("/v1/admin/bans", json={"ip": banned, "reason": "x"}, headers=headers).status_code == 201
    for spelling in spellings:
        status = client.get("/v1/users/me", environ_base={"REMOTE_ADDR": spelling}).status_code
        assert status == 403, spelling


def test_unban_with_port_from_log_line(ban_app, admin_tokens):
    # Behind a proxy that writes ports, the log shows "client_ip": "192.0.2.91:8443".
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])
    created = client.post("/v1/admin/bans", json={"ip": "192.0.2.91", "reason": "scanner"}, headers=headers)
    assert created.status_code == 201

    assert client.delete("/v1/admin/bans/192.0.2.91:443", headers=headers).status_code == 204
    assert client.get("/v1/admin/bans", headers=headers).get_json()["bans"] == []


@pytest.mark.parametrize(("banned", "path"), [
    ("2001:db8:9:9::5", "[2001:db8:9:9::5]:443"),
    ("2001:db8:9:9::5", "[2001:db8:9:9::5]"),
    ("2001:db8:9:9::5", "%5B2001:db8:9:9::5%5D:443"),
    ("2001:db8:9:9::5", "%5b2001:db8:9:9::5%5d"),
    # A ban of a scoped address is stored under its /64; the same spelling lifts it.
    ("fe80::1%eth0", "fe80::1%25eth0"),
    ("fe80::1%eth0", "fe80::1%25en0"),
    ("fe80::1%eth0", "%5Bfe80::1%25eth0%5D:443"),
    ("fe80::1%eth0", "fe80::1"),
], ids=["brackets_port", "brackets", "encoded_port", "encoded_lower_case", "zone", "other_zone",
        "brackets_zone_port", "no_zone"])
def test_unban_bracketed_or_zoned_ipv6(ban_app, admin_tokens, banned, path):
    # curl -g sends the brackets raw, and most HTTP clients percent-encode them.
    client = ban_app.test_client()
    headers = bearer(admin_tokens["access_token"])
    created = client.post("/v1/admin/bans", json={"ip": banned, "reason": "scanner"}, headers=headers)
    assert created.status_code == 201

    assert client.delete(f"/v1/admin/bans/{path}", headers=headers).status_code == 204
    assert client.get("/v1/admin/bans", headers=headers).get_json()["bans"] == []


@pytest.mark.parametrize("path", ["[2001:db8:9:9::5]:x", "[2001:db8:9:9::5", "2001:db8:9:9::5]:443",
                                  "[203.0.113.7]]"],
                         ids=["port_not_number", "no_closing_bracket", "no_opening_bracket", "two_brackets"])
def test_unban_malformed_brackets_not_found(ban_app, admin_tokens, path):
    response = ban_app.test_client().delete(f"/v1/admin/bans/{path}", headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["1.2.3.4/33", "1.2.3.4:", "...", "2001:db8::/129"],
                         ids=["prefix_too_long", "empty_port", "dots", "ipv6_prefix_too_long"])
def test_unban_invalid_address_says_so(ban_app, admin_tokens, path):
    # The path has the documented form but names no address, and the 404 detail states that.
    response = ban_app.test_client().delete(f"/v1/admin/bans/{path}", headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"
    assert response.get_json()["field"] == "ip"
    assert "not an IPv4 or IPv6 address" in response.get_json()["detail"]


def test_unban_any_spelling_lifts_ban(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist
    bans = ban_app.extensions["gatehouse"].bans
    ban = blacklist.ban("2001:0DB8:0005::0005", reason="x", seconds=None, actor="test")
    bans.apply_event({"kind": "ip_banned", "ip": ban.ip, "until": 253402300799})
    assert ban.ip == "2001:db8:5::/64"
    assert blacklist.get("2001:db8:5::9") is not None

    assert blacklist.unban("2001:db8:5:0:0:0:0:7", actor="test") is True
    bans.apply_event({"kind": "ip_unbanned", "ip": "2001:db8:5::7"})
    assert blacklist.list() == []
    # The listener may still deliver the ban's own event after the unban applied above.
    # The unban's event follows it, so the worker ends up without the ban.
    wait_until(lambda: bans.banned_until("2001:db8:5::5") is None, 5, "the unban did not reach the worker")


def test_raw_stored_ban_read_as_64_and_unbanned(ban_app):
    """A ban that an older release stored under a raw IPv6 address covers its /64 and goes on unban."""
    from service.blacklist import BANS_KEY, PERMANENT_SCORE
    from service.redis_store import KEY_PREFIX

    blacklist = ban_app.extensions["gatehouse"].blacklist
    bans = ban_app.extensions["gatehouse"].bans
    redis_client = blacklist.client
    redis_client.hset(f"{KEY_PREFIX}ban:2001:db8:7::1", mapping={
        "cause": "manual", "reason": "old", "created_at": time.time(), "expires_at": 0, "offences": 1, "actor": "x"})
    redis_client.zadd(BANS_KEY, {"2001:db8:7::1": PERMANENT_SCORE})
    bans.resync()
    assert bans.banned_until("2001:db8:7::2") == PERMANENT_SCORE
    assert [ban.ip for ban in blacklist.list()] == ["2001:db8:7::/64"]
    assert bans.apply_event(json.loads('{"kind": "ip_banned", "ip": "2001:db8:8::1", "until": 253402300799}'))
    assert bans.banned_until("2001:db8:8::2") == PERMANENT_SCORE

    assert blacklist.unban("2001:db8:7::/64", actor="test") is True
    assert redis_client.zcard(BANS_KEY) == 0
    assert redis_client.exists(f"{KEY_PREFIX}ban:2001:db8:7::1") == 0


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `gatehouse blacklist ARGS` as the operator would."""
    return subprocess.run([sys.executable, "-m", "service.cli", "blacklist", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_cli_shows_network_key(ban_app):
    banned = cli("ban", "2001:DB8:9::1", "--reason", "scanner", "--seconds", "600")
    assert banned.returncode == 0, banned.stderr
    # Log lines go to stderr, so stdout holds only the command's output.
    assert banned.stdout.splitlines() == ["banned 2001:db8:9::/64"]
    records = [json.loads(line) for line in cli("list").stdout.splitlines()]
    assert [record["ip"] for record in records] == ["2001:db8:9::/64"]
    # The same document as GET /v1/admin/bans: times in ISO 8601.
    assert set(records[0]) == {"ip", "cause", "reason", "created_at", "expires_at", "offences", "actor"}
    lifetime = datetime.fromisoformat(records[0]["expires_at"]) - datetime.fromisoformat(records[0]["created_at"])
    assert abs(lifetime.total_seconds() - 600) < 2
    unbanned = cli("unban", "2001:db8:9:0:0:0:0:2")
    assert unbanned.returncode == 0, unbanned.stderr
    assert unbanned.stdout.splitlines() == ["unbanned 2001:db8:9::/64"]
    assert cli("ban", "2001:db8::/48", "--reason", "x").returncode == 2


@pytest.mark.parametrize("seconds", ["0", "-5", "59", "31536001", "99999999999999", "1.5"])
def test_cli_rejects_ban_length_outside_range(ban_app, seconds):
    result = cli("ban", "198.51.100.9", "--reason", "typo", f"--seconds={seconds}")

    assert result.returncode == 2
    assert "--seconds" in result.stderr
    assert cli("list").stdout == ""


@pytest.mark.parametrize("reason", ["two\nlines", "\u202eesrever"])
def test_cli_rejects_reason_with_control_or_bidi_characters(ban_app, reason):
    result = cli("ban", "198.51.100.9", "--reason", reason)

    assert result.returncode == 2
    assert "--reason" in result.stderr
    assert "bidirectional formatting characters" in result.stderr
    assert cli("list").stdout == ""


def test_ban_rejects_zero_seconds(ban_app):
    blacklist = ban_app.extensions["gatehouse"].blacklist

    with pytest.raises(InvalidBanLength):
        blacklist.ban("198.51.100.9", reason="typo", seconds=0, actor="test")
    assert blacklist.list() == []


def test_cli_reports_redis_failure_in_one_line(ban_app):
    url = "redis://:not-the-password@127.0.0.1:1/0"

    result = cli("list", env={"GATEHOUSE_REDIS_URL": url})

    assert result.returncode == 1
    assert result.stderr.startswith("gatehouse: Redis command failed")
    assert "Traceback" not in result.stderr
    assert "not-the-password" not in result.stderr


def test_refused_requests_leave_in_flight_gauge(ban_app, user):
    client = ban_app.test_client()
    for _ in range(3):
        fail_login(client, ATTACKER)
    before = metrics.IN_FLIGHT._value.get()

    statuses = [client.get("/v1/users/me", environ_base={"REMOTE_ADDR": ATTACKER}).status_code for _ in range(5)]

    assert statuses == [403] * 5
    assert metrics.IN_FLIGHT._value.get() == before
