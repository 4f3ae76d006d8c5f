"""/v1/admin on the real MariaDB and Redis: role checks, every action, and its audit row."""

from __future__ import annotations

import json

import pymysql
import pytest
import redis

from service.app import close_app, create_app
from service.database import connect_args
from service.limit_storage import RATE_LIMIT_KEY_PREFIX
from service.login_guard import account_key
from service.sessions import user_sessions_key
from tests.blueprints.test_auth import run_sql
from tests.conftest import PASSWORD
from tests.helpers import bearer, create_user, wait_until

# Client addresses of the login-guard tests: the account owner's, and any other.
OWNER = "198.51.100.10"
# A second address the owner logs in from: an IPv6 address, which the login guard keys by its /64.
OWNER_PHONE = "2001:db8:7::20"
OTHER = "203.0.113.66"


def register(client, email: str) -> str:
    response = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201
    return response.get_json()["id"]


def login(client, email: str) -> dict:
    response = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def assert_session_ended(client, pair: dict) -> None:
    """Assert that a login's access token gets 401 session_revoked and its refresh token 401 invalid_refresh_token."""
    me = client.get("/v1/users/me", headers=bearer(pair["access_token"]))
    refresh = client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert me.status_code == 401
    assert me.get_json()["code"] == "session_revoked"
    assert refresh.status_code == 401
    assert refresh.get_json()["code"] == "invalid_refresh_token"


def audit_actions(client, admin_tokens) -> list[tuple[str, str]]:
    entries = client.get("/v1/admin/audit", headers=bearer(admin_tokens["access_token"])).get_json()["entries"]
    return [(entry["action"], entry["target_id"]) for entry in entries]


def test_every_admin_route_requires_admin_role(app):
    admin_rules = [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1/admin")]
    assert len(admin_rules) >= 10
    for rule in admin_rules:
        spec = app.view_functions[rule.endpoint].openapi_operation
        assert spec.roles == ("admin",), rule.rule


def test_non_admin_gets_403(client, tokens):
    response = client.get("/v1/admin/users", headers=bearer(tokens["access_token"]))
    assert response.status_code == 403
    assert response.get_json()["code"] == "missing_role"


def test_admin_route_without_token_gets_401(client):
    response = client.get("/v1/admin/users")
    assert response.status_code == 401
    assert response.get_json()["code"] == "missing_token"


def test_list_users_paginates_and_searches(client, admin_tokens):
    for index in range(5):
        register(client, f"user{index}@example.com")
    headers = bearer(admin_tokens["access_token"])

    first = client.get("/v1/admin/users?limit=2", headers=headers).get_json()
    assert [item["email"] for item in first["items"]] == ["root@example.com", "user0@example.com"]
    assert first["items"][0]["roles"] == ["admin"]
    second = client.get(f"/v1/admin/users?limit=2&cursor={first['next_cursor']}", headers=headers).get_json()
    assert [item["email"] for item in second["items"]] == ["user1@example.com", "user2@example.com"]
    last = client.get(f"/v1/admin/users?limit=2&cursor={second['next_cursor']}", headers=headers).get_json()
    assert [item["email"] for item in last["items"]] == ["user3@example.com", "user4@example.com"]
    assert last["next_cursor"] is None

    found = client.get("/v1/admin/users?query=USER3", headers=headers).get_json()["items"]
    assert [item["email"] for item in found] == ["user3@example.com"]
    wildcard = client.get("/v1/admin/users?query=%25", headers=headers).get_json()["items"]
    assert wildcard == []


def search(client, admin_tokens, query: str) -> list[str]:
    response = client.get("/v1/admin/users", query_string={"query": query},
                          headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 200, response.get_json()
    return [item["email"] for item in response.get_json()["items"]]


@pytest.mark.parametrize("query", [
    "\uff41\uff4c\uff49\uff43\uff45",
    "\uff21\uff2c\uff29\uff23\uff25@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25",
    "AlIcE@Example.COM",
    "LICE@EX",
], ids=["fullwidth", "fullwidth_upper_case", "mixed_case", "upper_case_part"])
def test_list_users_search_folds_query(client, admin_tokens, query):
    register(client, "alice@example.com")
    register(client, "bob@example.com")

    assert search(client, admin_tokens, query) == ["alice@example.com"]


def test_list_users_search_escapes_folded_wildcards(client, admin_tokens):
    register(client, "a_b@example.com")
    register(client, "axb@example.com")

    # Fullwidth percent sign and low line, which NFKC turns into % and _.
    assert search(client, admin_tokens, "\uff05") == []
    assert search(client, admin_tokens, "a\uff3fb") == ["a_b@example.com"]


def test_list_users_search_finds_older_spelling(client, admin_tokens, settings):
    register(client, "alice@example.com")
    older_id = register(client, "placeholder@example.com")
    # An account from before local parts had to be ASCII, stored as it was registered.
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE users SET email = %s WHERE id = %s", ("\uff41lice@example.com", older_id))
    finally:
        connection.close()

    assert search(client, admin_tokens, "\uff41lice") == ["alice@example.com", "\uff41lice@example.com"]
    assert search(client, admin_tokens, "\uff21LICE@") == ["alice@example.com", "\uff41lice@example.com"]


@pytest.mark.parametrize(("query", "field"), [("limit=0", "limit"), ("limit=abc", "limit"), ("status=gone", "status"),
                                              ("unknown=1", "unknown"), ("query[]=a", "query[]"), ("f(x)=1", "f(x)"),
                                              ("limit=%201", "limit"), ("limit=+5", "limit"), ("limit=1_0", "limit"),
                                              ("limit=%D9%A1", "limit")])
def test_list_users_rejects_bad_query(client, admin_tokens, query, field):
    response = client.get(f"/v1/admin/users?{query}", headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert [error["field"] for error in response.get_json()["errors"]] == [field]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/admin/roles"), ("GET", "/v1/admin/bans"), ("GET", "/v1/users/me"), ("GET", "/v1/auth/sessions"),
    ("GET", "/v1/admin/users/{user_id}"), ("POST", "/v1/auth/refresh"), ("POST", "/v1/auth/logout"),
])
def test_route_without_parameters_rejects_query(client, admin_tokens, method, path):
    """A route that takes no query parameters rejects one as unknown, as bodies reject unknown fields."""
    me = client.get("/v1/users/me", headers=bearer(admin_tokens["access_token"])).get_json()
    target = path.format(user_id=me["id"]) + "?ip=203.0.113.7"

    response = client.open(target, method=method, headers=bearer(admin_tokens["access_token"]),
                           json={"refresh_token": admin_tokens["refresh_token"]} if method == "POST" else None)

    assert response.status_code == 400, response.get_json()
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "ip"
    assert response.get_json()["errors"] == [{"field": "ip", "message": "unknown query parameter"}]
    # Nothing happened: the session still refreshes.
    assert client.post("/v1/auth/refresh", json={"refresh_token": admin_tokens["refresh_token"]}).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/.well-known/jwks.json", "/openapi.json"])
def test_probes_and_documents_ignore_query(client, path):
    assert client.get(f"{path}?cache_buster=1").status_code == 200


@pytest.mark.parametrize("query", ["limit=1&limit=2", "status=active&status=active", "unknown=1&unknown=2"])
def test_list_users_rejects_repeated_parameter(client, admin_tokens, query):
    response = client.get(f"/v1/admin/users?{query}", headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == query.partition("=")[0]
    assert "once" in response.get_json()["detail"]
    assert response.get_json()["errors"] == [{"field": query.partition("=")[0],
                                              "message": "given 2 times; give each query parameter once"}]


@pytest.mark.parametrize("cursor", ["garbage", "", "alice", "alice@", "@example.com", "a" * 300 + "@example.com"],
                         ids=["word", "empty", "no_at", "no_domain", "no_local_part", "too_long"])
def test_list_users_rejects_invalid_cursor(client, admin_tokens, cursor):
    response = client.get("/v1/admin/users", query_string={"cursor": cursor},
                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "cursor"
    if len(cursor) <= 254:
        assert "URL-encoded" in response.get_json()["detail"]


def test_list_users_cursor_accepts_long_local_part(client, admin_tokens):
    # A cursor follows the login rules, so the email of an account from before the
    # 64-octet limit on local parts can end a page.
    register(client, "zed@example.com")

    response = client.get("/v1/admin/users", query_string={"cursor": "a" * 65 + "@example.com"},
                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 200
    assert [item["email"] for item in response.get_json()["items"]] == ["root@example.com", "zed@example.com"]


def test_list_users_cursor_with_plus_pages_on(client, admin_tokens):
    register(client, "kate+tag@example.com")
    register(client, "zoe@example.com")
    headers = bearer(admin_tokens["access_token"])
    first = client.get("/v1/admin/users", query_string={"limit": 1}, headers=headers).get_json()
    assert first["next_cursor"] == "kate+tag@example.com"

    response = client.get("/v1/admin/users", query_string={"cursor": first["next_cursor"]}, headers=headers)

    assert response.status_code == 200
    assert [item["email"] for item in response.get_json()["items"]] == ["root@example.com", "zoe@example.com"]


def test_list_users_cursor_compared_normalized(client, admin_tokens):
    for index in range(3):
        register(client, f"user{index}@example.com")

    response = client.get("/v1/admin/users", query_string={"cursor": "User0@Example.COM"},
                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 200
    assert [item["email"] for item in response.get_json()["items"]] == ["user1@example.com", "user2@example.com"]


def test_get_user_shows_roles_and_sessions(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    login(client, "bob@example.com")
    response = client.get(f"/v1/admin/users/{user_id}", headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 200
    body = response.get_json()
    assert body["email"] == "bob@example.com"
    assert body["roles"] == []
    assert len(body["sessions"]) == 1


def test_unknown_user_gets_404(client, admin_tokens):
    response = client.get("/v1/admin/users/nobody", headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("POST", "/disable"), ("POST", "/enable"),
                                                ("DELETE", "/sessions"), ("DELETE", "/sessions/" + "ab" * 16),
                                                ("DELETE", "")])
def test_unknown_user_id_named_on_every_user_route(client, admin_tokens, method, suffix):
    """A well-formed id of no user is 404 with field user_id, whatever the route does with it."""
    response = client.open(f"/v1/admin/users/{'0' * 32}{suffix}", method=method,
                           headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 404
    assert response.get_json()["detail"] == "No such user."
    assert response.get_json()["field"] == "user_id"


def test_disable_answers_session_revoked(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    bob = login(client, "bob@example.com")

    disabled = client.post(f"/v1/admin/users/{user_id}/disable", headers=bearer(admin_tokens["access_token"]))
    assert disabled.status_code == 200

    # Disabling ends the sessions first, and a bearer request checks its session before its account.
    assert_session_ended(client, bob)


def test_disable_in_database_answers_invalid_token(client, settings):
    # Without an administrator, the sessions live on, but the account check rejects the token.
    user_id = register(client, "bob@example.com")
    bob = login(client, "bob@example.com")
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE users SET status = 'disabled' WHERE id = %s", (user_id,))
    finally:
        connection.close()

    me = client.get("/v1/users/me", headers=bearer(bob["access_token"]))

    assert me.status_code == 401
    assert me.get_json()["code"] == "invalid_token"


def test_disable_ends_sessions_and_login(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    bob = login(client, "bob@example.com")
    headers = bearer(admin_tokens["access_token"])

    response = client.post(f"/v1/admin/users/{user_id}/disable", headers=headers)
    assert response.status_code == 200
    assert response.get_json()["status"] == "disabled"
    assert client.get("/v1/users/me", headers=bearer(bob["access_token"])).status_code == 401
    assert client.post("/v1/auth/refresh", json={"refresh_token": bob["refresh_token"]}).status_code == 401
    assert client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).status_code == 403

    assert client.post(f"/v1/admin/users/{user_id}/enable", headers=headers).status_code == 200
    assert client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).status_code == 200
    actions = audit_actions(client, admin_tokens)
    assert ("user_disabled", user_id) in actions
    assert ("user_enabled", user_id) in actions


def test_grant_and_revoke_role_apply_at_once(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    bob = login(client, "bob@example.com")
    headers = bearer(admin_tokens["access_token"])
    # Warm the cached user of bob before the change.
    assert client.get("/v1/admin/users", headers=bearer(bob["access_token"])).status_code == 403

    assert client.put(f"/v1/admin/users/{user_id}/roles/admin", headers=headers).get_json()["roles"] == ["admin"]
    assert client.get("/v1/admin/users", headers=bearer(bob["access_token"])).status_code == 200

    assert client.delete(f"/v1/admin/users/{user_id}/roles/admin", headers=headers).get_json()["roles"] == []
    assert client.get("/v1/admin/users", headers=bearer(bob["access_token"])).status_code == 403
    actions = audit_actions(client, admin_tokens)
    assert ("role_granted", user_id) in actions
    assert ("role_revoked", user_id) in actions


def test_grant_unknown_role_gets_404(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    response = client.put(f"/v1/admin/users/{user_id}/roles/wizard", headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 404
    assert response.get_json()["field"] == "role"


def test_admin_cannot_lock_self_out(client, admin_tokens):
    headers = bearer(admin_tokens["access_token"])
    own_id = admin_tokens["user_id"]
    assert client.post(f"/v1/admin/users/{own_id}/disable", headers=headers).status_code == 409
    assert client.delete(f"/v1/admin/users/{own_id}/roles/admin", headers=headers).status_code == 409


@pytest.mark.parametrize("description", ["two\nlines", "\u202ereversed", "nul\u0000"])
def test_create_role_rejects_control_and_bidi_characters(client, admin_tokens, description):
    response = client.post("/v1/admin/roles", json={"name": "auditor", "description": description},
                           headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 400
    assert response.get_json()["field"] == "description"
    roles = client.get("/v1/admin/roles", headers=bearer(admin_tokens["access_token"])).get_json()["roles"]
    assert "auditor" not in [role["name"] for role in roles]


def test_create_role_then_grant(client, admin_tokens):
    headers = bearer(admin_tokens["access_token"])
    created = client.post("/v1/admin/roles", json={"name": "auditor", "description": "Reads the audit log"},
                          headers=headers)
    assert created.status_code == 201
    duplicate = client.post("/v1/admin/roles", json={"name": "auditor"}, headers=headers)
    assert duplicate.status_code == 409
    bad_name = client.post("/v1/admin/roles", json={"name": "Bad Name"}, headers=headers)
    assert bad_name.status_code == 400
    names = [role["name"] for role in client.get("/v1/admin/roles", headers=headers).get_json()["roles"]]
    assert names == ["admin", "auditor"]
    assert ("role_created", "auditor") in audit_actions(client, admin_tokens)


def test_revoke_user_sessions(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    first = login(client, "bob@example.com")
    second = login(client, "bob@example.com")
    headers = bearer(admin_tokens["access_token"])
    sessions = client.get(f"/v1/admin/users/{user_id}/sessions", headers=headers).get_json()["sessions"]
    assert len(sessions) == 2

    one = sessions[0]["id"]
    assert client.delete(f"/v1/admin/users/{user_id}/sessions/{one}", headers=headers).status_code == 204
    assert client.delete(f"/v1/admin/users/{user_id}/sessions/{one}", headers=headers).status_code == 404
    remaining = client.get(f"/v1/admin/users/{user_id}/sessions", headers=headers).get_json()["sessions"]
    assert [session["id"] for session in remaining] != [one]
    assert len(remaining) == 1

    ended = client.delete(f"/v1/admin/users/{user_id}/sessions", headers=headers).get_json()
    assert ended == {"sessions_ended": 1}
    for pair in (first, second):
        assert client.get("/v1/users/me", headers=bearer(pair["access_token"])).status_code == 401
    actions = audit_actions(client, admin_tokens)
    assert ("session_revoked", one) in actions
    assert ("sessions_revoked", user_id) in actions


def test_admin_session_of_other_user_gets_404(client, admin_tokens):
    bob_id = register(client, "bob@example.com")
    register(client, "carol@example.com")
    carol = login(client, "carol@example.com")
    carol_session = client.get("/v1/auth/sessions", headers=bearer(carol["access_token"])).get_json()["sessions"][0]
    response = client.delete(f"/v1/admin/users/{bob_id}/sessions/{carol_session['id']}",
                             headers=bearer(admin_tokens["access_token"]))
    assert response.status_code == 404
    assert client.get("/v1/users/me", headers=bearer(carol["access_token"])).status_code == 200


def test_audit_row_records_actor_and_ip(client, admin_tokens, settings):
    user_id = register(client, "bob@example.com")
    client.post(f"/v1/admin/users/{user_id}/disable", headers=bearer(admin_tokens["access_token"]),
                environ_base={"REMOTE_ADDR": "192.0.2.7"})
    entries = client.get("/v1/admin/audit", headers=bearer(admin_tokens["access_token"])).get_json()["entries"]
    [entry] = [entry for entry in entries if entry["action"] == "user_disabled"]
    assert entry["actor_id"] == admin_tokens["user_id"]
    assert entry["target_type"] == "user"
    assert entry["client_ip"] == "192.0.2.7"


def test_audit_detail_is_object(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    headers = bearer(admin_tokens["access_token"])
    client.put(f"/v1/admin/users/{user_id}/roles/admin", headers=headers)

    entries = client.get("/v1/admin/audit", headers=headers).get_json()["entries"]

    [entry] = [entry for entry in entries if entry["action"] == "role_granted" and entry["target_id"] == user_id]
    assert entry["detail"] == {"role": "admin", "changed": True}


def test_cli_grant_is_audited(client, admin_tokens):
    actions = audit_actions(client, admin_tokens)
    assert ("role_granted", admin_tokens["user_id"]) in actions


def test_role_change_reaches_other_app(client, admin_tokens, settings):
    # A second app in this process stands for another worker: it learns the change from pub/sub.
    other = create_app()
    other_client = other.test_client()
    user_id = register(client, "bob@example.com")
    bob = login(client, "bob@example.com")
    assert other_client.get("/v1/admin/users", headers=bearer(bob["access_token"])).status_code == 403

    client.put(f"/v1/admin/users/{user_id}/roles/admin", headers=bearer(admin_tokens["access_token"]))

    import time

    deadline = time.monotonic() + 1.0
    status = 403
    while time.monotonic() < deadline and status != 200:
        status = other_client.get("/v1/admin/users", headers=bearer(bob["access_token"])).status_code
        time.sleep(0.05)
    assert status == 200


NEW_PASSWORD = "a new password for bob"


def set_password(client, admin_tokens, user_id: str, password: str = NEW_PASSWORD, **kwargs):
    return client.put(f"/v1/admin/users/{user_id}/password", json={"password": password},
                      headers=bearer(admin_tokens["access_token"]), **kwargs)


def audit_entries(client, admin_tokens, action: str) -> list[dict]:
    entries = client.get("/v1/admin/audit", headers=bearer(admin_tokens["access_token"])).get_json()["entries"]
    return [entry for entry in entries if entry["action"] == action]


def log_events(text: str, event: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


def test_set_password_ends_sessions(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    first = login(client, "bob@example.com")
    second = login(client, "bob@example.com")

    response = set_password(client, admin_tokens, user_id)

    assert response.status_code == 200
    assert response.get_json() == {"sessions_ended": 2}
    for pair in (first, second):
        assert_session_ended(client, pair)


def test_set_password_replaces_old_one(client, admin_tokens):
    user_id = register(client, "bob@example.com")

    assert set_password(client, admin_tokens, user_id).status_code == 200

    old = client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD})
    new = client.post("/v1/auth/login", json={"email": "bob@example.com", "password": NEW_PASSWORD})
    assert old.status_code == 401
    assert old.get_json()["code"] == "invalid_credentials"
    assert new.status_code == 200


def test_set_password_is_audited_without_password(client, admin_tokens, capsys):
    user_id = register(client, "bob@example.com")
    login(client, "bob@example.com")
    capsys.readouterr()

    set_password(client, admin_tokens, user_id, environ_base={"REMOTE_ADDR": "192.0.2.7"})

    output = capsys.readouterr().out
    [entry] = audit_entries(client, admin_tokens, "password_reset")
    assert entry["target_type"] == "user"
    assert entry["target_id"] == user_id
    assert entry["actor_id"] == admin_tokens["user_id"]
    assert entry["client_ip"] == "192.0.2.7"
    assert entry["detail"] == {"sessions_ended": 1}
    [logged] = log_events(output, "admin_action")
    assert logged["action"] == "password_reset"
    assert logged["target_id"] == user_id
    assert NEW_PASSWORD not in output


def test_set_password_keeps_disabled_account_disabled(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    client.post(f"/v1/admin/users/{user_id}/disable", headers=bearer(admin_tokens["access_token"]))

    assert set_password(client, admin_tokens, user_id).status_code == 200

    refused = client.post("/v1/auth/login", json={"email": "bob@example.com", "password": NEW_PASSWORD})
    assert refused.status_code == 403
    assert refused.get_json()["code"] == "account_disabled"


@pytest.mark.parametrize("body", [
    {"password": "short"},
    {"password": "e\u0301" * 4},
    {"password": "x" * 257},
    {"password": 12345678},
    {},
    {"password": NEW_PASSWORD, "current_password": PASSWORD},
], ids=["too_short", "short_once_normalized", "too_long", "not_a_string", "missing", "unknown_field"])
def test_set_password_validates_like_registration(client, admin_tokens, body):
    user_id = register(client, "bob@example.com")

    response = client.put(f"/v1/admin/users/{user_id}/password", json=body,
                          headers=bearer(admin_tokens["access_token"]))

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).status_code == 200


def test_set_password_of_unknown_user_gets_404(client, admin_tokens):
    response = set_password(client, admin_tokens, "0" * 32)

    assert response.status_code == 404
    assert response.get_json()["field"] == "user_id"


def test_set_own_password_gets_409(client, admin_tokens):
    response = set_password(client, admin_tokens, admin_tokens["user_id"])

    assert response.status_code == 409
    assert response.get_json()["code"] == "conflict"
    assert "/v1/users/me/password" in response.get_json()["detail"]
    assert client.get("/v1/users/me", headers=bearer(admin_tokens["access_token"])).status_code == 200


def test_set_password_needs_admin_role(client, tokens):
    bob_id = register(client, "bob@example.com")

    response = client.put(f"/v1/admin/users/{bob_id}/password", json={"password": NEW_PASSWORD},
                          headers=bearer(tokens["access_token"]))

    assert response.status_code == 403
    assert response.get_json()["code"] == "missing_role"
    assert client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD}).status_code == 200


@pytest.fixture
def delayed_client(settings):
    """A client whose login delay starts after two failures and lasts a minute, longer than any test."""
    app = create_app({"login_delay_after_failures": 2, "login_delay_base_seconds": 60,
                      "login_delay_max_seconds": 60, "rate_limit_login_account": "1000/minute"})
    yield app.test_client()
    close_app(app)


def delay_login(client, address: str, password: str):
    return client.post("/v1/auth/login", json={"email": "bob@example.com", "password": password},
                       environ_base={"REMOTE_ADDR": address})


def admin_login(client, settings) -> dict:
    """Create an administrator, log in through `client`, and return the token pair with the user id."""
    user_id = create_user(settings, "root@example.com", PASSWORD, roles=("admin",))
    response = client.post("/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return {**response.get_json(), "user_id": user_id}


def guard_keys(settings, email: str) -> list[str]:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    return sorted(client.scan_iter(match=f"{RATE_LIMIT_KEY_PREFIX}:*{account_key(email)}*"))


def test_set_password_clears_login_delay(delayed_client, settings):
    admin_pair = admin_login(delayed_client, settings)
    user_id = register(delayed_client, "bob@example.com")
    # The owner's addresses become known, so their failures count apart from the shared ones.
    for address in (OWNER, OWNER_PHONE):
        assert delay_login(delayed_client, address, PASSWORD).status_code == 200
    for address in (OWNER, OWNER_PHONE, OTHER):
        statuses = [delay_login(delayed_client, address, "wrong password").status_code for _ in range(4)]
        assert statuses[-1] == 429, address

    assert set_password(delayed_client, admin_pair, user_id).status_code == 200

    for address in (OWNER, OWNER_PHONE, OTHER):
        assert delay_login(delayed_client, address, NEW_PASSWORD).status_code == 200, address


def test_set_password_keeps_known_addresses(delayed_client, settings):
    admin_pair = admin_login(delayed_client, settings)
    user_id = register(delayed_client, "bob@example.com")
    assert delay_login(delayed_client, OWNER, PASSWORD).status_code == 200
    for _ in range(4):
        delay_login(delayed_client, OWNER, "wrong password")

    set_password(delayed_client, admin_pair, user_id)

    keys = guard_keys(settings, "bob@example.com")
    assert [key for key in keys if "/known/" in key] != []
    assert [key for key in keys if "/failures/" in key or "/gate/" in key] == []


def delete_user(client, admin_tokens, user_id: str, **kwargs):
    return client.delete(f"/v1/admin/users/{user_id}", headers=bearer(admin_tokens["access_token"]), **kwargs)


def test_delete_user_ends_tokens(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    first = login(client, "bob@example.com")
    second = login(client, "bob@example.com")
    # Warm this worker's cached copy of bob, which the deletion must drop.
    assert client.get("/v1/users/me", headers=bearer(first["access_token"])).status_code == 200

    response = delete_user(client, admin_tokens, user_id)

    assert response.status_code == 204
    assert response.data == b""
    for pair in (first, second):
        assert_session_ended(client, pair)


def test_delete_user_removes_row_and_roles(client, admin_tokens, settings):
    user_id = register(client, "bob@example.com")
    headers = bearer(admin_tokens["access_token"])
    client.put(f"/v1/admin/users/{user_id}/roles/admin", headers=headers)
    login(client, "bob@example.com")

    assert delete_user(client, admin_tokens, user_id).status_code == 204

    assert list(run_sql(settings, "SELECT id FROM users WHERE id = %s", (user_id,))) == []
    assert list(run_sql(settings, "SELECT role_id FROM user_roles WHERE user_id = %s", (user_id,))) == []
    assert client.get(f"/v1/admin/users/{user_id}", headers=headers).status_code == 404
    refused = client.post("/v1/auth/login", json={"email": "bob@example.com", "password": PASSWORD})
    assert refused.status_code == 401
    assert refused.get_json()["code"] == "invalid_credentials"
    sessions_index = redis.Redis.from_url(settings.redis_url.get_secret_value()).exists(user_sessions_key(user_id))
    assert sessions_index == 0


def test_delete_user_keeps_audit_trail_without_email(client, admin_tokens, capsys):
    user_id = register(client, "bob@example.com")
    login(client, "bob@example.com")
    client.put(f"/v1/admin/users/{user_id}/roles/admin", headers=bearer(admin_tokens["access_token"]))
    capsys.readouterr()

    delete_user(client, admin_tokens, user_id, environ_base={"REMOTE_ADDR": "192.0.2.7"})

    output = capsys.readouterr().out
    entries = client.get("/v1/admin/audit", headers=bearer(admin_tokens["access_token"])).get_json()["entries"]
    [deleted] = [entry for entry in entries if entry["action"] == "user_deleted"]
    assert deleted["target_type"] == "user"
    assert deleted["target_id"] == user_id
    assert deleted["actor_id"] == admin_tokens["user_id"]
    assert deleted["client_ip"] == "192.0.2.7"
    assert deleted["detail"] == {"sessions_ended": 1}
    assert ("role_granted", user_id) in [(entry["action"], entry["target_id"]) for entry in entries]
    assert "bob" not in json.dumps(entries)
    [logged] = log_events(output, "admin_action")
    assert logged["action"] == "user_deleted"
    assert "bob" not in json.dumps(logged)


def test_deleted_email_registers_again(client, admin_tokens):
    old_id = register(client, "bob@example.com")
    delete_user(client, admin_tokens, old_id)

    new_id = register(client, "bob@example.com")

    assert new_id != old_id
    assert login(client, "bob@example.com")["access_token"]


def test_delete_user_erases_login_guard_state(delayed_client, settings):
    admin_pair = admin_login(delayed_client, settings)
    user_id = register(delayed_client, "bob@example.com")
    for address in (OWNER, OWNER_PHONE):
        assert delay_login(delayed_client, address, PASSWORD).status_code == 200
    for address in (OWNER, OWNER_PHONE, OTHER):
        for _ in range(4):
            delay_login(delayed_client, address, "wrong password")
    keys = guard_keys(settings, "bob@example.com")
    kinds = {key.split(":", 2)[2].split("/")[1] for key in keys}
    assert {"known", "failures", "gate", "index", "login-account"} <= kinds
    assert len([key for key in keys if "/known/" in key]) == 2
    admin_keys = guard_keys(settings, "root@example.com")
    assert admin_keys != []

    assert delete_user(delayed_client, admin_pair, user_id).status_code == 204

    assert guard_keys(settings, "bob@example.com") == []
    assert guard_keys(settings, "root@example.com") == admin_keys
    # A new account with the email starts without the old one's delay or known addresses.
    register(delayed_client, "bob@example.com")
    assert delay_login(delayed_client, OTHER, PASSWORD).status_code == 200


def test_delete_own_account_gets_409(client, admin_tokens):
    own_id = admin_tokens["user_id"]

    response = delete_user(client, admin_tokens, own_id)

    assert response.status_code == 409
    assert response.get_json()["code"] == "conflict"
    assert response.get_json()["field"] == "user_id"
    assert client.get("/v1/users/me", headers=bearer(admin_tokens["access_token"])).status_code == 200


def test_delete_needs_admin_role(client, tokens, admin_tokens):
    bob_id = register(client, "bob@example.com")

    response = client.delete(f"/v1/admin/users/{bob_id}", headers=bearer(tokens["access_token"]))

    assert response.status_code == 403
    assert response.get_json()["code"] == "missing_role"
    assert client.get(f"/v1/admin/users/{bob_id}", headers=bearer(admin_tokens["access_token"])).status_code == 200


def test_delete_unknown_user_gets_404(client, admin_tokens):
    user_id = register(client, "bob@example.com")
    assert delete_user(client, admin_tokens, user_id).status_code == 204

    again = delete_user(client, admin_tokens, user_id)
    unknown = delete_user(client, admin_tokens, "0" * 32)

    for response in (again, unknown):
        assert response.status_code == 404
        assert response.get_json()["code"] == "not_found"
        assert response.get_json()["field"] == "user_id"


def test_delete_reaches_other_app(client, admin_tokens):
    # A second app in this process stands for another worker: it learns the deletion from pub/sub.
    other = create_app()
    other_client = other.test_client()
    user_id = register(client, "bob@example.com")
    bob = login(client, "bob@example.com")
    assert other_client.get("/v1/users/me", headers=bearer(bob["access_token"])).status_code == 200

    delete_user(client, admin_tokens, user_id)

    def rejected() -> bool:
        return other_client.get("/v1/users/me", headers=bearer(bob["access_token"])).status_code == 401

    try:
        wait_until(rejected, 1.0, "the other app still accepts the deleted account's access token")
        me = other_client.get("/v1/users/me", headers=bearer(bob["access_token"]))
        assert me.get_json()["code"] == "session_revoked"
    finally:
        close_app(other)
