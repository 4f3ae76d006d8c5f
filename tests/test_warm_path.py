"""The warm path for GET /v1/users/me and /health: the same response as Flask's, and Flask whenever it is not warm."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging

import pytest
from flask import Blueprint, signals
from prometheus_client import CollectorRegistry, multiprocess

from service.app import close_app, create_app
from service.warm_path import HookMismatch, WarmPath, check_hooks
from tests.helpers import bearer, wait_until

ME = "/v1/users/me"
# Headers whose values differ between any two requests.
PER_REQUEST_HEADERS = {"X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
PER_REQUEST_FIELDS = {"request_id", "duration_ms", "timestamp"}


def _warm_path(app) -> WarmPath:
    layer = app.wsgi_app
    while not isinstance(layer, WarmPath):
        layer = getattr(layer, "_app", None) or layer.app
    return layer


class _FlaskCalls:
    """Count the requests that the warm path hands on to Flask."""

    def __init__(self, warm: WarmPath) -> None:
        self.count = 0
        self._flask = warm._next
        warm._next = self

    def __call__(self, environ, start_response):
        self.count += 1
        return self._flask(environ, start_response)


@pytest.fixture
def warm(app) -> WarmPath:
    svc = app.extensions["gatehouse"]
    wait_until(lambda: svc.access.synced, 5, "the events listener did not load the revoked set")
    return _warm_path(app)


@pytest.fixture
def flask_calls(warm) -> _FlaskCalls:
    return _FlaskCalls(warm)


def _completed_lines(output: str) -> list[dict]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "request_completed"]


def _metric(name: str, labels: dict[str, str]) -> float:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    expected_labels = sorted(labels.items())
    return sum(sample.value for family in registry.collect() for sample in family.samples
               if sample.name == name and sorted(sample.labels.items()) == expected_labels)


def _me_count() -> float:
    return _metric("http_request_duration_seconds_count", {"method": "GET", "status": "200", "url_rule": ME})


def test_warm_response_matches_flask(client, tokens, warm, flask_calls, capsys):
    headers = bearer(tokens["access_token"])
    capsys.readouterr()
    count_before = _me_count()

    warm.enabled = False
    from_flask = client.get(ME, headers=headers)
    warm.enabled = True
    from_warm = client.get(ME, headers=headers)
    flask_line, warm_line = _completed_lines(capsys.readouterr().out)

    assert flask_calls.count == 1
    assert from_warm.status_code == from_flask.status_code == 200
    assert from_warm.data == from_flask.data
    assert list(from_warm.headers.keys()) == list(from_flask.headers.keys())
    for name, value in from_flask.headers.items():
        if name not in PER_REQUEST_HEADERS:
            assert from_warm.headers[name] == value, name
    assert int(from_warm.headers["X-RateLimit-Remaining"]) == int(from_flask.headers["X-RateLimit-Remaining"]) - 1
    assert abs(int(from_warm.headers["X-RateLimit-Reset"]) - int(from_flask.headers["X-RateLimit-Reset"])) <= 1
    assert from_warm.headers["X-Request-ID"] == warm_line["request_id"]

    assert warm_line.keys() == flask_line.keys()
    for field, value in flask_line.items():
        if field not in PER_REQUEST_FIELDS:
            assert warm_line[field] == value, field
    assert _me_count() == count_before + 2
    assert _metric("gatehouse_http_requests_in_flight", {}) == 0


def test_warm_response_echoes_request_id(client, tokens, warm, flask_calls):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200

    response = client.get(ME, headers={**headers, "X-Request-ID": "trace-42"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "trace-42"
    assert flask_calls.count == 1


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_health_matches_flask(client, warm, flask_calls, method):
    warm.enabled = False
    from_flask = client.open("/health", method=method)
    warm.enabled = True
    from_warm = client.open("/health", method=method)

    assert flask_calls.count == 1
    assert from_warm.status == from_flask.status == "200 OK"
    assert from_warm.data == from_flask.data
    assert from_warm.data == (b'{"status":"ok"}\n' if method == "GET" else b"")
    assert sorted(from_warm.headers.keys()) == sorted(from_flask.headers.keys())
    for name, value in from_flask.headers.items():
        if name not in PER_REQUEST_HEADERS:
            assert from_warm.headers[name] == value, name


def test_health_echoes_request_id(client, warm, flask_calls):
    response = client.get("/health", headers={"X-Request-ID": "probe-7"})
    assert response.headers["X-Request-ID"] == "probe-7"
    assert flask_calls.count == 0


@pytest.mark.parametrize(("request_args", "status"), [
    ({"method": "POST"}, 405),
    ({"method": "GET", "data": b"x"}, 200),
    ({"method": "GET", "path": "/health/"}, 404),
], ids=["post", "with_body", "trailing_slash"])
def test_other_health_requests_go_to_flask(client, warm, flask_calls, request_args, status):
    request_args = dict(request_args)
    response = client.open(request_args.pop("path", "/health"), **request_args)
    assert response.status_code == status
    assert flask_calls.count == 1


def test_first_request_warms_the_path(client, tokens, warm, flask_calls):
    headers = bearer(tokens["access_token"])
    warm._services.access._claims.clear()

    statuses = [client.get(ME, headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert flask_calls.count == 1


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "missing_token"),
    ({"Authorization": "Bearer not-a-token"}, 401, "invalid_token"),
    ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, 401, "invalid_token"),
], ids=["no_token", "invalid_token", "other_scheme"])
def test_requests_without_warm_token_go_to_flask(client, tokens, warm, flask_calls, headers, status, code):
    response = client.get(ME, headers=headers)
    assert response.status_code == status
    assert response.get_json()["code"] == code
    assert flask_calls.count == 1


def test_revoked_session_goes_to_flask(client, tokens, warm, flask_calls):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    assert client.post("/v1/auth/logout", headers=headers).status_code == 204
    calls_before = flask_calls.count

    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "session_revoked"
    assert flask_calls.count == calls_before + 1


def test_disabled_account_goes_to_flask(client, user, tokens, admin_tokens, warm, flask_calls):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    disabled = client.post(f"/v1/admin/users/{user['id']}/disable", headers=bearer(admin_tokens["access_token"]))
    assert disabled.status_code == 200
    access = warm._services.access
    wait_until(lambda: access.cached_user(user["id"]) is None, 5, "the user change did not reach the cache")
    calls_before = flask_calls.count

    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert flask_calls.count == calls_before + 1


def test_cached_inactive_user_goes_to_flask(client, user, tokens, warm, flask_calls):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    access = warm._services.access
    cached = access.cached_user(user["id"])
    access.remember_user(dataclasses.replace(cached, status="disabled"), access.user_epoch())
    calls_before = flask_calls.count

    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["code"] == "invalid_token"
    assert flask_calls.count == calls_before + 1


def test_banned_address_goes_to_flask(client, tokens, warm, flask_calls):
    address = "192.0.2.77"
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers, environ_base={"REMOTE_ADDR": address}).status_code == 200
    warm._services.blacklist.ban(address, reason="test", seconds=60, actor="test")
    bans = warm._services.bans
    wait_until(lambda: bans.banned_until(address) is not None, 5, "the ban did not reach the worker")
    calls_before = flask_calls.count

    response = client.get(ME, headers=headers, environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 403
    assert response.get_json()["code"] == "ip_banned"
    assert flask_calls.count == calls_before + 1


@pytest.mark.parametrize("change", ["body", "not_synced", "user_not_cached", "head"])
def test_other_conditions_go_to_flask(client, user, tokens, warm, flask_calls, change):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    calls_before = flask_calls.count
    access = warm._services.access

    if change == "body":
        response = client.get(ME, headers=headers, data=b"{}", content_type="application/json")
    elif change == "head":
        response = client.head(ME, headers=headers)
    else:
        if change == "not_synced":
            access.synced = False
        else:
            access.forget_user(user["id"])
        response = client.get(ME, headers=headers)

    assert response.status_code == 200
    assert flask_calls.count == calls_before + 1


def test_query_string_goes_to_flask(client, tokens, warm, flask_calls):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    calls_before = flask_calls.count

    response = client.get(f"{ME}?expand=roles", headers=headers)

    assert response.status_code == 400
    assert response.get_json()["field"] == "expand"
    assert flask_calls.count == calls_before + 1


@pytest.fixture
def limited_app():
    app = create_app({"rate_limit_default": "3/minute"})
    svc = app.extensions["gatehouse"]
    wait_until(lambda: svc.access.synced, 5, "the events listener did not load the revoked set")
    yield app
    close_app(app)


def test_rate_limit_counts_once(limited_app, user):
    client = limited_app.test_client()
    login = client.post("/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    headers = bearer(login.get_json()["access_token"])
    calls = _FlaskCalls(_warm_path(limited_app))

    responses = [client.get(ME, headers=headers) for _ in range(4)]
    assert [response.status_code for response in responses] == [200, 200, 200, 429]
    assert [response.headers["X-RateLimit-Remaining"] for response in responses] == ["2", "1", "0", "0"]
    assert responses[3].get_json()["code"] == "rate_limited"
    assert int(responses[3].headers["Retry-After"]) >= 1
    # Flask verified the token of the first request and rendered the 429.
    assert calls.count == 2


def test_failure_hands_request_to_flask_and_disables_path(limited_app, user, capsys):
    client = limited_app.test_client()
    login = client.post("/v1/auth/login", json={"email": user["email"], "password": user["password"]})
    headers = bearer(login.get_json()["access_token"])
    warm = _warm_path(limited_app)
    assert client.get(ME, headers=headers).headers["X-RateLimit-Remaining"] == "2"

    def broken_body(_user):
        raise RuntimeError("rendering failed")

    warm._body_for = broken_body
    capsys.readouterr()
    response = client.get(ME, headers=headers)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    assert response.status_code == 200
    # Counted once, by the warm path, although Flask sent the response.
    assert response.headers["X-RateLimit-Remaining"] == "1"
    assert warm.enabled is False
    disabled = [line for line in lines if line["event"] == "warm_path_disabled"]
    assert len(disabled) == 1
    assert "RuntimeError: rendering failed" in disabled[0]["exception"]
    assert client.get(ME, headers=headers).headers["X-RateLimit-Remaining"] == "0"


def test_hook_changes_raise(app):
    check_hooks(app)

    app.before_request(lambda: None)
    with pytest.raises(HookMismatch, match="before_request"):
        check_hooks(app)
    app.before_request_funcs[None].pop()

    removed = app.after_request_funcs[None].pop()
    with pytest.raises(HookMismatch, match="after_request"):
        check_hooks(app)
    app.after_request_funcs[None].append(removed)

    app.teardown_request_funcs[None].reverse()
    with pytest.raises(HookMismatch, match="teardown_request"):
        check_hooks(app)
    app.teardown_request_funcs[None].reverse()

    check_hooks(app)


def test_blueprint_hook_raises(app):
    extra = Blueprint("extra", __name__)
    extra.before_request(lambda: None)
    app.register_blueprint(extra)
    with pytest.raises(HookMismatch, match="blueprint scopes"):
        check_hooks(app)


def test_forwarded_address_is_banned(user):
    app = create_app({"trusted_proxy_count": 1})
    try:
        svc = app.extensions["gatehouse"]
        wait_until(lambda: svc.access.synced, 5, "the events listener did not load the revoked set")
        client = app.test_client()
        login = client.post("/v1/auth/login", json={"email": user["email"], "password": user["password"]})
        headers = bearer(login.get_json()["access_token"])
        address = "192.0.2.78"
        forwarded = {**headers, "X-Forwarded-For": address}
        assert client.get(ME, headers=forwarded).status_code == 200
        svc.blacklist.ban(address, reason="test", seconds=60, actor="test")
        wait_until(lambda: svc.bans.banned_until(address) is not None, 5, "the ban did not reach the worker")

        assert client.get(ME, headers=headers).status_code == 200
        response = client.get(ME, headers=forwarded)
        assert response.status_code == 403
        assert response.get_json()["code"] == "ip_banned"
    finally:
        close_app(app)


def test_replaced_view_raises(app):
    view = app.view_functions["users.me"]

    @functools.wraps(view)
    def deny_all(*args, **kwargs):
        raise RuntimeError("denied")

    app.view_functions["users.me"] = deny_all
    with pytest.raises(HookMismatch, match="users.me"):
        check_hooks(app)


def test_replaced_health_view_raises(app):
    app.view_functions["health.health"] = lambda: "ok"
    with pytest.raises(HookMismatch, match="health.health"):
        check_hooks(app)


def test_debug_level_health_goes_to_flask(settings):
    app = create_app({"log_level": "debug"})
    try:
        calls = _FlaskCalls(_warm_path(app))
        assert app.test_client().get("/health").status_code == 200
        assert calls.count == 1
    finally:
        close_app(app)
        logging.getLogger().setLevel(logging.INFO)


@pytest.mark.parametrize("signal", [signals.request_started, signals.request_finished,
                                    signals.got_request_exception, signals.appcontext_tearing_down],
                         ids=lambda signal: signal.name)
def test_signal_receiver_raises(app, signal):
    def receiver(sender, **extra):
        return None

    signal.connect(receiver, app)
    try:
        with pytest.raises(HookMismatch, match=signal.name):
            check_hooks(app)
    finally:
        signal.disconnect(receiver, app)
    check_hooks(app)


def test_app_context_teardown_raises(app):
    app.teardown_appcontext(lambda _exc: None)
    with pytest.raises(HookMismatch, match="teardown_appcontext"):
        check_hooks(app)


@pytest.mark.parametrize("suffix", ["\xa0", "\x85", "\x1f"], ids=["no_break_space", "next_line", "unit_separator"])
def test_unicode_space_after_token_rejected(client, tokens, warm, suffix):
    token = tokens["access_token"]
    assert client.get(ME, headers=bearer(token)).status_code == 200

    # Set in the environ as gunicorn passes it: a header byte 0xA0 arrives as the character U+00A0.
    value = f"Bearer {token}{suffix}"
    for _ in range(2):
        response = client.get(ME, environ_overrides={"HTTP_AUTHORIZATION": value})
        assert response.status_code == 401
        assert response.get_json()["code"] == "invalid_token"
