"""/v1/auth through the Flask test client, on the real MariaDB and Redis."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import argon2
import pymysql
import pytest
import redis

from service.app import close_app, create_app
from service.database import connect_args
from service.redis_store import KEY_PREFIX
from service.sessions import MAX_GRACE_REFRESHES, digest
from tests.conftest import PASSWORD
from tests.helpers import bearer, free_port


def login(client, email="alice@example.com", password=PASSWORD):
    return client.post("/v1/auth/login", json={"email": email, "password": password})


def without_request_id(body: dict) -> dict:
    return {name: value for name, value in body.items() if name != "request_id"}


def run_sql(settings, sql, args=()):
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()
    finally:
        connection.close()


def test_register_returns_user(client):
    response = client.post("/v1/auth/register", json={"email": " Alice@Example.COM ", "password": PASSWORD})
    assert response.status_code == 201
    body = response.get_json()
    assert body["email"] == "alice@example.com"
    assert set(body) == {"id", "email", "created_at"}


def test_register_duplicate_email_conflicts(client, user):
    response = client.post("/v1/auth/register", json={"email": "ALICE@example.com", "password": PASSWORD})
    assert response.status_code == 409
    assert response.get_json()["code"] == "email_taken"
    assert response.get_json()["field"] == "email"


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "alice@example.com", "password": "short"}, "password"),
    ({"email": "alice@example.com", "password": "x" * 257}, "password"),
    ({"email": "not-an-email", "password": PASSWORD}, "email"),
    ({"email": "alice@example.com"}, "password"),
    ({"email": 42, "password": PASSWORD}, "email"),
    ({"email": "alice@example.com", "password": PASSWORD, "role": "admin"}, "role"),
    ({"email": ["alice@example.com"], "password": PASSWORD}, "email"),
    ([], "body"),
    ("just a string", "body"),
], ids=["short_password", "long_password", "bad_email", "missing_password", "email_not_string",
        "unknown_field", "email_list", "array_body", "string_body"])
def test_register_invalid_body_names_field(client, body, field):
    response = client.post("/v1/auth/register", json=body)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["code"] == "invalid_request"
    assert problem["field"] == field
    assert problem["request_id"]


def test_register_nothing_stored_on_invalid_body(client, settings):
    client.post("/v1/auth/register", json={"email": "alice@example.com", "password": "short"})
    assert run_sql(settings, "SELECT COUNT(*) AS n FROM users")[0]["n"] == 0


def test_invalid_json_rejected(client):
    response = client.post("/v1/auth/register", data='{"email": ', content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_json"


@pytest.mark.parametrize("path", ["/v1/auth/login", "/v1/auth/register", "/v1/auth/refresh"])
def test_empty_body_named(client, path):
    response = client.post(path, data=b"", content_type="application/json")

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_json"
    assert response.get_json()["field"] == "body"
    assert "empty" in response.get_json()["detail"]


def test_wrong_content_type_rejected(client):
    response = client.post("/v1/auth/register", data="email=a@b.c&password=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.get_json()["code"] == "unsupported_media_type"


def test_oversized_body_rejected(client):
    response = client.post("/v1/auth/register", json={"email": "a@b.co", "password": "x" * 40_000})
    assert response.status_code == 413
    assert response.get_json()["code"] == "payload_too_large"


def test_login_returns_oauth_token_pair(client, user):
    response = login(client)
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert len(body["refresh_token"]) >= 43
    assert response.headers["Cache-Control"] == "no-store"


def test_login_unknown_email_and_wrong_password_look_alike(client, user):
    unknown = login(client, email="nobody@example.com")
    wrong = login(client, password="wrong password here")
    assert unknown.status_code == wrong.status_code == 401
    assert without_request_id(unknown.get_json()) == without_request_id(wrong.get_json())
    assert unknown.headers.get("WWW-Authenticate") == wrong.headers.get("WWW-Authenticate")


def test_login_disabled_user_rejected(client, user, settings):
    run_sql(settings, "UPDATE users SET status = 'disabled' WHERE id = %s", (user["id"],))
    response = login(client)
    assert response.status_code == 403
    assert response.get_json()["code"] == "account_disabled"
    assert login(client, password="wrong password here").status_code == 401


def test_login_upgrades_outdated_hash(client, user, settings):
    # The default before OWASP's 7 MiB configuration became it.
    old_hash = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(PASSWORD)
    run_sql(settings, "UPDATE users SET password_hash = %s WHERE id = %s", (old_hash, user["id"]))

    assert login(client).status_code == 200

    new_hash = run_sql(settings, "SELECT password_hash FROM users WHERE id = %s", (user["id"],))[0]["password_hash"]
    assert new_hash != old_hash
    assert f"m={settings.argon2_memory_kib},t={settings.argon2_time_cost},p=1$" in new_hash
    assert login(client).status_code == 200


def test_refresh_rotates_token(client, tokens):
    response = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200
    pair = response.get_json()
    assert pair["refresh_token"] != tokens["refresh_token"]
    assert client.get("/v1/users/me", headers={"Authorization": f"Bearer {pair['access_token']}"}).status_code == 200


def test_refresh_unknown_token_rejected(client):
    response = client.post("/v1/auth/refresh", json={"refresh_token": "made-up"})
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_refresh_token"


def test_refresh_reuse_revokes_session(user):
    app = create_app({"refresh_grace_seconds": 0.5})
    client = app.test_client()
    first = login(client).get_json()
    second = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).get_json()
    third = client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}).get_json()
    time.sleep(0.7)

    replay = client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert replay.get_json()["code"] == "invalid_refresh_token"

    newest = client.post("/v1/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert newest.status_code == 401
    me = client.get("/v1/users/me", headers={"Authorization": f"Bearer {third['access_token']}"})
    assert me.status_code == 401
    assert me.get_json()["code"] == "session_revoked"


def test_refresh_reuse_leaves_other_sessions(user):
    app = create_app({"refresh_grace_seconds": 0.2})
    client = app.test_client()
    victim = login(client).get_json()
    other = login(client).get_json()
    client.post("/v1/auth/refresh", json={"refresh_token": victim["refresh_token"]})
    time.sleep(0.4)
    assert client.post("/v1/auth/refresh", json={"refresh_token": victim["refresh_token"]}).status_code == 401
    assert client.post("/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 200


def refresh(client, refresh_token):
    return client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})


def test_refresh_within_grace_succeeds(client, tokens):
    first = refresh(client, tokens["refresh_token"])
    second = refresh(client, tokens["refresh_token"])
    assert first.status_code == 200
    assert second.status_code == 200
    assert client.get("/v1/users/me", headers=bearer(second.get_json()["access_token"])).status_code == 200


def test_refresh_retry_within_grace_keeps_session(user):
    # The client never received the response to its first refresh, retried the same token
    # and carries on with the retry's response, also after the grace interval.
    app = create_app({"refresh_grace_seconds": 0.5})
    client = app.test_client()
    first = login(client).get_json()
    refresh(client, first["refresh_token"])
    retried = refresh(client, first["refresh_token"])
    assert retried.status_code == 200
    time.sleep(0.7)

    pair = retried.get_json()
    for _ in range(3):
        response = refresh(client, pair["refresh_token"])
        assert response.status_code == 200
        pair = response.get_json()
    assert client.get("/v1/users/me", headers=bearer(pair["access_token"])).status_code == 200
    close_app(app)


@pytest.mark.parametrize("winner", [0, 1, 2])
def test_grace_siblings_continue_one_chain(user, winner):
    app = create_app({"refresh_grace_seconds": 0.5})
    client = app.test_client()
    first = login(client).get_json()
    siblings = [refresh(client, first["refresh_token"]).get_json() for _ in range(3)]
    time.sleep(0.7)

    # Whichever sibling rotates first continues the session, whether the rotation issued
    # it or a grace refresh did.
    pair = siblings[winner]
    for _ in range(3):
        response = refresh(client, pair["refresh_token"])
        assert response.status_code == 200
        pair = response.get_json()

    losers = [sibling for index, sibling in enumerate(siblings) if index != winner]
    stolen = refresh(client, losers[0]["refresh_token"])
    assert stolen.status_code == 401
    assert stolen.get_json()["code"] == "invalid_refresh_token"
    assert refresh(client, losers[1]["refresh_token"]).status_code == 401
    assert refresh(client, pair["refresh_token"]).status_code == 401
    me = client.get("/v1/users/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 401
    assert me.get_json()["code"] == "session_revoked"
    close_app(app)


def test_grace_sibling_superseded_within_grace(client, tokens):
    # No waiting: a sibling loses as soon as another token of its generation rotates.
    rotated = refresh(client, tokens["refresh_token"]).get_json()
    sibling = refresh(client, tokens["refresh_token"]).get_json()
    assert refresh(client, rotated["refresh_token"]).status_code == 200

    assert refresh(client, sibling["refresh_token"]).status_code == 401
    assert client.get("/v1/users/me", headers=bearer(rotated["access_token"])).status_code == 401


def test_replay_after_chain_advanced_revokes(client, tokens):
    # Within the grace interval, but the token that its rotation issued has rotated too.
    second = refresh(client, tokens["refresh_token"]).get_json()
    third = refresh(client, second["refresh_token"]).get_json()

    assert refresh(client, tokens["refresh_token"]).status_code == 401
    assert refresh(client, third["refresh_token"]).status_code == 401


def test_parallel_refreshes_continue_one_chain(app, user):
    tokens = login(app.test_client()).get_json()
    # One rotation and every grace refresh the cap allows, all at once.
    racers = MAX_GRACE_REFRESHES + 1
    barrier = threading.Barrier(racers, timeout=30)

    def refresh_together(refresh_token):
        client = app.test_client()
        barrier.wait()
        return refresh(client, refresh_token)

    with ThreadPoolExecutor(max_workers=racers) as pool:
        responses = list(pool.map(refresh_together, [tokens["refresh_token"]] * racers))
    assert [response.status_code for response in responses] == [200] * racers

    # The siblings race again: one rotates, the next one revokes the session.
    with ThreadPoolExecutor(max_workers=racers) as pool:
        again = list(pool.map(refresh_together, [response.get_json()["refresh_token"] for response in responses]))
    statuses = [response.status_code for response in again]
    assert statuses.count(200) == 1
    assert statuses.count(401) == racers - 1
    client = app.test_client()
    for response in again:
        if response.status_code == 200:
            assert refresh(client, response.get_json()["refresh_token"]).status_code == 401
    assert client.get("/v1/users/me", headers=bearer(responses[0].get_json()["access_token"])).status_code == 401


def strip_generations(settings, refresh_token):
    """Remove the generation fields of a session and its tokens, like records written before generations."""
    store = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    session_id = store.hget(f"{KEY_PREFIX}rt:{digest(refresh_token)}", "sid")
    store.hdel(f"{KEY_PREFIX}sess:{session_id}", "generation")
    for token_digest in store.smembers(f"{KEY_PREFIX}sess:{session_id}:tokens"):
        store.hdel(f"{KEY_PREFIX}rt:{token_digest}", "generation")
    return store, session_id


def test_refresh_session_without_generation(client, tokens, settings):
    store, session_id = strip_generations(settings, tokens["refresh_token"])

    second = refresh(client, tokens["refresh_token"])
    assert second.status_code == 200
    third = refresh(client, second.get_json()["refresh_token"])
    assert third.status_code == 200
    assert store.hget(f"{KEY_PREFIX}sess:{session_id}", "generation") == "2"
    assert store.hget(f"{KEY_PREFIX}rt:{digest(third.get_json()['refresh_token'])}", "generation") == "2"


def test_grace_in_session_without_generation(client, tokens, settings):
    # The token was spent before generations existed; a retry within the grace interval
    # still gets a sibling, and the siblings still continue only one chain.
    rotated = refresh(client, tokens["refresh_token"]).get_json()
    strip_generations(settings, tokens["refresh_token"])

    retried = refresh(client, tokens["refresh_token"])
    assert retried.status_code == 200
    assert refresh(client, rotated["refresh_token"]).status_code == 200
    assert refresh(client, retried.get_json()["refresh_token"]).status_code == 401


def test_refresh_without_mysql_keeps_token(client, tokens, settings):
    # Nothing listens on this port, so every MySQL connection is refused at once.
    app = create_app({"mysql_port": free_port(), "mysql_connect_timeout": 1.0})
    unavailable = app.test_client()

    # More attempts than the grace interval accepts: none of them may spend the token.
    statuses = [unavailable.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code
                for _ in range(MAX_GRACE_REFRESHES + 2)]
    close_app(app)

    assert statuses == [503] * (MAX_GRACE_REFRESHES + 2)
    record = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True).hgetall(
        f"{KEY_PREFIX}rt:{digest(tokens['refresh_token'])}")
    assert record["rotated_at"] == ""
    response = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 200


def test_logout_ends_only_this_session(client, tokens):
    other = login(client).get_json()
    response = client.post("/v1/auth/logout", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 204

    assert client.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401
    assert client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    assert client.get("/v1/users/me", headers={"Authorization": f"Bearer {other['access_token']}"}).status_code == 200


def test_logout_ends_session_that_redis_lost(client, tokens, settings):
    # As after a restore of an older backup: the session's keys are gone, its access token is not.
    store = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    [session_key] = store.keys(f"{KEY_PREFIX}sess:*[^s]")
    store.delete(session_key)
    assert client.get("/v1/users/me", headers=headers).status_code == 200

    response = client.post("/v1/auth/logout", headers=headers)

    assert response.status_code == 204
    me = client.get("/v1/users/me", headers=headers)
    assert me.status_code == 401
    assert me.get_json()["code"] == "session_revoked"


def test_logout_requires_token(client):
    response = client.post("/v1/auth/logout")
    assert response.status_code == 401
    assert response.get_json()["code"] == "missing_token"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gatehouse"'


@pytest.mark.parametrize("change", ["UPDATE users SET status = 'disabled' WHERE id = %s",
                                    "DELETE FROM users WHERE id = %s"], ids=["disabled", "deleted"])
def test_refresh_refused_for_inactive_account(client, user, tokens, settings, change):
    # The account changes behind the service's back, so no session was ended for it.
    run_sql(settings, change, (user["id"],))
    response = client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_refresh_token"
    assert client.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401


def register(client, email, password=PASSWORD):
    return client.post("/v1/auth/register", json={"email": email, "password": password})


@pytest.mark.parametrize(("email", "character"), [
    ("\uff41lice@example.com", "U+FF41 FULLWIDTH LATIN SMALL LETTER A"),
    ("\u0430lice@example.com", "U+0430 CYRILLIC SMALL LETTER A"),
    ("alic\u0435@example.com", "U+0435 CYRILLIC SMALL LETTER IE"),
    ("alicé@example.com", "U+00E9 LATIN SMALL LETTER E WITH ACUTE"),
    ("stra\u00dfe@example.com", "U+00DF LATIN SMALL LETTER SHARP S"),
    # NFC turns the Kelvin sign into an ASCII K, but the raw input is checked.
    ("\u212alice@example.com", "U+212A KELVIN SIGN"),
], ids=["fullwidth", "cyrillic_first", "cyrillic_last", "accented", "sharp_s", "kelvin_sign"])
def test_register_rejects_non_ascii_local_part(client, user, settings, email, character):
    response = register(client, email)

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["code"] == "invalid_request"
    assert problem["field"] == "email"
    assert "must contain only ASCII characters" in problem["detail"]
    assert character in problem["detail"]
    assert [row["email"] for row in run_sql(settings, "SELECT email FROM users")] == ["alice@example.com"]


def test_register_rejects_fullwidth_at_sign(client):
    response = register(client, "alice\uff20example.com")

    assert response.status_code == 400
    assert response.get_json()["field"] == "email"


def test_register_accepts_ascii_special_characters(client):
    response = register(client, "Bob.O'Neil+news@Example.com")

    assert response.status_code == 201
    assert response.get_json()["email"] == "bob.o'neil+news@example.com"


def test_register_fullwidth_domain_is_same_account(client, user):
    # IDNA (UTS-46) maps the fullwidth letters of a domain to ASCII.
    response = register(client, "alice@\uff45xample.com")

    assert response.status_code == 409
    assert response.get_json()["code"] == "email_taken"


@pytest.mark.parametrize(("other", "stored"), [
    ("alice@exämple.com", "alice@xn--exmple-cua.com"),
    ("alice@\u0435xample.com", "alice@xn--xample-2of.com"),
], ids=["accented_domain", "cyrillic_domain"])
def test_non_ascii_domain_stored_as_punycode(client, user, other, stored):
    response = register(client, other)

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["email"] == stored
    assert response.get_json()["id"] != user["id"]
    assert login(client, email=other).status_code == 200


def test_look_alike_address_cannot_log_in(client, user):
    assert login(client, email="ÁLICE@example.com").status_code == 401
    assert login(client, email="alicé@example.com").status_code == 401


def test_login_look_alike_as_unknown_email(client, user):
    look_alike = login(client, email="\u0430lice@example.com")
    unknown = login(client, email="nobody@example.com")

    assert look_alike.status_code == 401
    assert without_request_id(look_alike.get_json()) == without_request_id(unknown.get_json())
    assert look_alike.headers.get("WWW-Authenticate") == unknown.headers.get("WWW-Authenticate")


def current_user_id(client, tokens):
    return client.get("/v1/users/me", headers=bearer(tokens["access_token"])).get_json()["id"]


def test_login_fullwidth_spelling_reaches_account(client, user):
    response = login(client, email="\uff41\uff4c\uff49\uff43\uff45@example.com")

    assert response.status_code == 200
    assert current_user_id(client, response.get_json()) == user["id"]
    assert login(client, email="\uff21lice@example.com").status_code == 200
    assert login(client, email="\uff41lice@example.com", password="wrong password here").status_code == 401


def existing_account(client, settings, email, password):
    """Store an account under an email that registration no longer accepts, and return its id."""
    response = register(client, "placeholder@example.com", password)
    assert response.status_code == 201, response.get_json()
    user_id = response.get_json()["id"]
    run_sql(settings, "UPDATE users SET email = %s WHERE id = %s", (email, user_id))
    return user_id


def test_login_existing_non_ascii_account(client, settings):
    user_id = existing_account(client, settings, "alicé@example.com", PASSWORD)

    for email in ("alicé@example.com", "ALICÉ@example.com", "alice\u0301@example.com"):
        response = login(client, email=email)
        assert response.status_code == 200, email
        assert current_user_id(client, response.get_json()) == user_id


def test_login_existing_fullwidth_account_beside_ascii(client, user, settings):
    other_password = "another long password"
    fullwidth_id = existing_account(client, settings, "\uff41lice@example.com", other_password)

    # An exact match of the stored email wins over its ASCII lookup key.
    fullwidth = login(client, email="\uff41lice@example.com", password=other_password)
    assert fullwidth.status_code == 200
    assert current_user_id(client, fullwidth.get_json()) == fullwidth_id
    capital = login(client, email="\uff21lice@example.com", password=other_password)
    assert capital.status_code == 200
    assert current_user_id(client, capital.get_json()) == fullwidth_id
    assert login(client, email="\uff41lice@example.com").status_code == 401

    ascii_login = login(client)
    assert ascii_login.status_code == 200
    assert current_user_id(client, ascii_login.get_json()) == user["id"]
    assert login(client, password=other_password).status_code == 401


def test_unicode_domain_and_punycode_are_one_account(client):
    response = client.post("/v1/auth/register", json={"email": "bob@exämple.com", "password": PASSWORD})
    assert response.status_code == 201
    assert response.get_json()["email"] == "bob@xn--exmple-cua.com"
    duplicate = client.post("/v1/auth/register", json={"email": "bob@xn--exmple-cua.com", "password": PASSWORD})
    assert duplicate.status_code == 409


def test_password_compared_after_unicode_normalization(client):
    composed = "p\u00e4ssword and more"
    decomposed = "pa\u0308ssword and more"
    client.post("/v1/auth/register", json={"email": "carol@example.com", "password": composed})
    assert login(client, email="carol@example.com", password=decomposed).status_code == 200


# Each is under 8 characters once NFKC composes it, the form that is hashed, but 8 as sent.
@pytest.mark.parametrize("password", ["e\u0301" * 4, "a" + "\u0301" * 7, "\u1100\u1161" * 4],
                         ids=["accents", "stacked_accents", "hangul_jamo"])
def test_password_short_once_normalized_rejected(client, password):
    response = client.post("/v1/auth/register", json={"email": "carol@example.com", "password": password})

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "password"
    assert "Unicode-normalized" in response.get_json()["detail"]


def test_password_long_once_normalized_rejected(client):
    # Each U+FDFA becomes 18 characters under NFKC: 15 of them are 270, above the maximum
    # that a login accepts, so the password could never be sent in its normalized form.
    response = client.post("/v1/auth/register", json={"email": "carol@example.com", "password": "\ufdfa" * 15})

    assert response.status_code == 400
    assert response.get_json()["field"] == "password"
    assert "at most 256" in response.get_json()["detail"]


def test_grace_refreshes_capped(client, tokens):
    statuses = [client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code
                for _ in range(7)]
    # The first use rotates, five more are grace refreshes, the seventh is reuse.
    assert statuses == [200] * 6 + [401]
    assert client.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401


# RFC 5321 section 4.5.3.1.1 limits the part before the @-sign to 64 octets.
LONG_LOCAL_PART = "a" * 65


def test_register_long_local_part_rejected(client, settings):
    response = register(client, f"{LONG_LOCAL_PART}@example.com")

    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_request"
    assert response.get_json()["field"] == "email"
    assert "too long before the @-sign" in response.get_json()["detail"]
    assert run_sql(settings, "SELECT id FROM users") == ()


def test_register_64_octet_local_part_accepted(client):
    response = register(client, f"{'a' * 64}@example.com")

    assert response.status_code == 201
    assert response.get_json()["email"] == f"{'a' * 64}@example.com"


def test_login_long_local_part_as_unknown_email(client, user):
    # No new account can have such an address, so its login fails as an unknown email's does.
    unknown = login(client, email="nobody@example.com")
    long = login(client, email=f"{LONG_LOCAL_PART}@example.com")

    assert long.status_code == 401
    assert without_request_id(long.get_json()) == without_request_id(unknown.get_json())
    assert long.headers.get("WWW-Authenticate") == unknown.headers.get("WWW-Authenticate")


def test_login_older_long_local_part_account(client, settings):
    # An account registered before the 64-octet limit still logs in.
    email = f"{LONG_LOCAL_PART}@example.com"
    user_id = existing_account(client, settings, email, PASSWORD)

    response = login(client, email=email)

    assert response.status_code == 200
    assert run_sql(settings, "SELECT email FROM users WHERE id = %s", (user_id,))[0]["email"] == email
