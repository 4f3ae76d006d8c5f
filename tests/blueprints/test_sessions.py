"""The caller's own sessions and password change, on the real MariaDB and Redis."""

from __future__ import annotations

import json
import logging
import unicodedata

import pymysql
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import close_app, create_app
from service.database import connect_args
from tests.conftest import PASSWORD
from tests.helpers import bearer

NEW_PASSWORD = "a completely new passphrase"


def login(client, password: str = PASSWORD, user_agent: str = "pytest"):
    return client.post("/v1/auth/login", json={"email": "alice@example.com", "password": password},
                       headers={"User-Agent": user_agent})


def test_sessions_lists_each_login(client, tokens):
    login(client, user_agent="second-device")
    response = client.get("/v1/auth/sessions", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    sessions = response.get_json()["sessions"]
    assert len(sessions) == 2
    assert [session["current"] for session in sessions] == [False, True]
    assert sessions[0]["user_agent"] == "second-device"
    assert sessions[0]["ip"] == "127.0.0.1"
    assert set(sessions[0]) == {"id", "created_at", "last_used_at", "expires_at", "user_agent", "ip", "current"}


@pytest.mark.parametrize(("sent", "stored"), [
    ("Ué\u202e".encode(), "Ué\u202e"),
    (b"agent \xff\xfe", "agent \ufffd\ufffd"),
    ("é".encode() * 300, "é" * 256),
], ids=["utf8", "invalid_utf8", "long_utf8"])
def test_user_agent_stored_as_utf8_text(client, tokens, sent, stored):
    # A WSGI server passes the header's bytes as a Latin-1 string.
    login(client, user_agent=sent.decode("latin-1"))
    sessions = client.get("/v1/auth/sessions", headers=bearer(tokens["access_token"])).get_json()["sessions"]
    assert sessions[0]["user_agent"] == stored


def test_delete_session_ends_it(client, tokens):
    other = login(client).get_json()
    sessions = client.get("/v1/auth/sessions", headers=bearer(tokens["access_token"])).get_json()["sessions"]
    other_id = next(session["id"] for session in sessions if not session["current"])

    response = client.delete(f"/v1/auth/sessions/{other_id}", headers=bearer(tokens["access_token"]))
    assert response.status_code == 204
    assert client.get("/v1/users/me", headers=bearer(other["access_token"])).status_code == 401
    assert client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 401
    assert client.get("/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 200


def test_delete_foreign_session_gets_404(client, tokens):
    client.post("/v1/auth/register", json={"email": "mallory@example.com", "password": PASSWORD})
    mallory = client.post("/v1/auth/login", json={"email": "mallory@example.com", "password": PASSWORD}).get_json()
    victim_id = client.get("/v1/auth/sessions", headers=bearer(tokens["access_token"])).get_json()["sessions"][0]["id"]

    response = client.delete(f"/v1/auth/sessions/{victim_id}", headers=bearer(mallory["access_token"]))
    assert response.status_code == 404
    assert client.get("/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 200


def test_logout_all_ends_every_session(client, tokens):
    other = login(client).get_json()
    response = client.post("/v1/auth/logout-all", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.get_json() == {"sessions_ended": 2}
    for pair in (tokens, other):
        assert client.get("/v1/users/me", headers=bearer(pair["access_token"])).status_code == 401
        assert client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401


def test_password_change_ends_other_sessions(client, tokens):
    other = login(client).get_json()
    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert response.status_code == 200
    assert response.get_json() == {"sessions_ended": 1}

    assert client.get("/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 200
    assert client.get("/v1/users/me", headers=bearer(other["access_token"])).status_code == 401
    assert client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 401
    assert login(client).status_code == 401
    assert login(client, NEW_PASSWORD).status_code == 200


def test_password_change_wrong_current_rejected(client, tokens):
    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": "not my password", "new_password": NEW_PASSWORD})
    assert response.status_code == 403
    assert response.get_json()["code"] == "invalid_current_password"
    assert response.get_json()["field"] == "current_password"
    assert login(client).status_code == 200


def password_row(settings) -> dict:
    """Return alice's stored password hash and update time."""
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT password_hash, updated_at FROM users WHERE email = %s", ("alice@example.com",))
            return cursor.fetchone()
    finally:
        connection.close()


@pytest.mark.parametrize("new_password", [
    PASSWORD,
    # Fullwidth letters, which NFKC turns into the ASCII ones of PASSWORD.
    "ｃｏｒｒｅｃｔ horse battery staple",
], ids=["same_text", "fullwidth_spelling"])
def test_password_change_same_password_rejected(client, tokens, settings, new_password):
    other = login(client).get_json()
    stored_before = password_row(settings)

    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": PASSWORD, "new_password": new_password})

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "password_unchanged"
    assert response.get_json()["field"] == "new_password"
    assert password_row(settings) == stored_before
    assert client.get("/v1/users/me", headers=bearer(other["access_token"])).status_code == 200
    assert client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 200
    sessions = client.get("/v1/auth/sessions", headers=bearer(tokens["access_token"])).get_json()["sessions"]
    assert len(sessions) == 2


def test_new_password_short_once_normalized_rejected(client, tokens):
    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": PASSWORD, "new_password": "e\u0301" * 4})

    assert response.status_code == 400
    assert response.get_json()["field"] == "new_password"
    assert login(client, PASSWORD).status_code == 200


def test_password_change_decomposed_spelling_rejected(client):
    composed = "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    client.post("/v1/auth/register", json={"email": "alice@example.com", "password": composed})
    pair = login(client, composed).get_json()

    response = client.post("/v1/users/me/password", headers=bearer(pair["access_token"]),
                           json={"current_password": composed, "new_password": decomposed})

    assert response.status_code == 422
    assert response.get_json()["code"] == "password_unchanged"
    assert login(client, composed).status_code == 200


def test_password_change_wrong_current_checked_first(client, tokens):
    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": "not my password", "new_password": "not my password"})

    assert response.status_code == 403
    assert response.get_json()["code"] == "invalid_current_password"
    assert response.get_json()["field"] == "current_password"


def test_password_change_documents_422(client):
    operation = client.get("/openapi.json").get_json()["paths"]["/v1/users/me/password"]["post"]

    assert "422" in operation["responses"]
    assert "password_unchanged" in operation["description"]
    assert "invalid_current_password" in operation["description"]


def test_password_change_weak_new_rejected(client, tokens):
    response = client.post("/v1/users/me/password", headers=bearer(tokens["access_token"]),
                           json={"current_password": PASSWORD, "new_password": "short"})
    assert response.status_code == 400
    assert response.get_json()["field"] == "new_password"


def test_refresh_reuse_ends_session_everywhere(client, tokens):
    # Reuse is detected only after the grace interval, which the refresh tests cover;
    # here the session ends through logout and its access token is refused at once.
    assert client.post("/v1/auth/logout", headers=bearer(tokens["access_token"])).status_code == 204
    response = client.get("/v1/auth/sessions", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert response.get_json()["code"] == "session_revoked"


def test_superseded_sibling_ends_session(client, tokens, caplog):
    other = login(client).get_json()
    rotated = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).get_json()
    sibling = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).get_json()
    assert client.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}).status_code == 200

    with caplog.at_level(logging.INFO):
        response = client.post("/v1/auth/refresh", json={"refresh_token": sibling["refresh_token"]})
    assert response.status_code == 401
    events = [json.loads(record.getMessage()) for record in caplog.records if record.getMessage().startswith("{")]
    reused = [event for event in events if event["event"] == "refresh_token_reused"]
    assert len(reused) == 1
    assert reused[0]["reason"] == "superseded"
    assert reused[0]["level"] == "error"

    sessions = client.get("/v1/auth/sessions", headers=bearer(other["access_token"])).get_json()["sessions"]
    assert len(sessions) == 1
    assert sessions[0]["current"] is True
    assert client.get("/v1/users/me", headers=bearer(sibling["access_token"])).status_code == 401


def evicted_total(client) -> float:
    """Return gatehouse_sessions_evicted_total as /metrics reports it."""
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gatehouse_sessions_evicted_total":
                return sample.value
    raise AssertionError("gatehouse_sessions_evicted_total is missing from /metrics")


@pytest.fixture
def capped_client(user):
    """A test client of an app that keeps at most 3 live sessions per account."""
    app = create_app({"max_sessions_per_user": 3})
    yield app.test_client()
    close_app(app)


def test_login_beyond_cap_ends_oldest(capped_client, user, caplog):
    pairs = [login(capped_client, user_agent=f"device-{index}").get_json() for index in range(3)]
    evicted_before = evicted_total(capped_client)

    with caplog.at_level(logging.INFO):
        pairs.append(login(capped_client, user_agent="device-3").get_json())

    oldest, *kept = pairs
    refresh = capped_client.post("/v1/auth/refresh", json={"refresh_token": oldest["refresh_token"]})
    assert refresh.status_code == 401
    assert refresh.get_json()["code"] == "invalid_refresh_token"
    me = capped_client.get("/v1/users/me", headers=bearer(oldest["access_token"]))
    assert me.status_code == 401
    assert me.get_json()["code"] == "session_revoked"
    for pair in kept:
        assert capped_client.get("/v1/users/me", headers=bearer(pair["access_token"])).status_code == 200

    sessions = capped_client.get("/v1/auth/sessions", headers=bearer(kept[-1]["access_token"])).get_json()["sessions"]
    assert [session["user_agent"] for session in sessions] == ["device-3", "device-2", "device-1"]

    events = [json.loads(record.getMessage()) for record in caplog.records if record.getMessage().startswith("{")]
    evicted = [event for event in events if event["event"] == "sessions_evicted"]
    assert len(evicted) == 1
    assert evicted[0]["user_id"] == user["id"]
    assert evicted[0]["count"] == 1
    assert evicted[0]["max_sessions"] == 3
    assert evicted[0]["level"] == "info"
    assert len(evicted[0]["session_ids"]) == 1
    assert evicted_total(capped_client) == evicted_before + 1


def test_login_within_cap_ends_nothing(capped_client, user):
    pairs = [login(capped_client).get_json() for _ in range(3)]

    for pair in pairs:
        assert capped_client.get("/v1/users/me", headers=bearer(pair["access_token"])).status_code == 200
        assert capped_client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 200


def test_evicted_refreshed_session_rejected(capped_client, user):
    # Eviction ends the whole session, so the token that a refresh issued stops working too.
    first = login(capped_client).get_json()
    rotated = capped_client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).get_json()
    for _ in range(3):
        login(capped_client)

    response = capped_client.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_refresh_token"
    me = capped_client.get("/v1/users/me", headers=bearer(rotated["access_token"]))
    assert me.status_code == 401
    assert me.get_json()["code"] == "session_revoked"


def test_admin_user_view_bounded_by_cap(capped_client, user, admin_tokens):
    for _ in range(5):
        login(capped_client)
    headers = bearer(admin_tokens["access_token"])

    detail = capped_client.get(f"/v1/admin/users/{user['id']}", headers=headers)
    listing = capped_client.get(f"/v1/admin/users/{user['id']}/sessions", headers=headers)

    assert detail.status_code == 200
    assert len(detail.get_json()["sessions"]) == 3
    assert listing.status_code == 200
    assert len(listing.get_json()["sessions"]) == 3
