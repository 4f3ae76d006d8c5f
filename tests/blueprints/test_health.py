"""Probes, JWKS, the OpenAPI document, request ids and the 500 handler."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jwt

from service.app import close_app, create_app
from service.lifecycle import state
from service.readiness import Check, Report
from service.schemas import PASSWORD_MIN_LENGTH
from service.tokens.keys import KEY_TIME_FORMAT, generate_key, load_key
from tests.conftest import PASSWORD


def test_health_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_reports_each_check(client):
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["mysql"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is True


def test_ready_fails_when_schema_behind(app, client, settings):
    probe = app.extensions["gatehouse"].readiness
    probe._expected = probe._expected | {"9999_future"}
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "9999_future" in response.get_json()["checks"]["mysql"]["error"]


def test_jwks_lists_signing_key(app, client):
    keys = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert [key["kid"] for key in keys] == [app.extensions["gatehouse"].keys.signing_key.kid]


def test_jwks_cache_control_is_max_age_setting(client, settings):
    response = client.get("/.well-known/jwks.json")

    assert response.headers["Cache-Control"] == f"public, max-age={settings.jwks_max_age_seconds}"


def test_jwks_max_age_override():
    app = create_app({"jwks_max_age_seconds": 60, "key_publish_seconds": 60})
    try:
        response = app.test_client().get("/.well-known/jwks.json")
    finally:
        close_app(app)

    assert response.headers["Cache-Control"] == "public, max-age=60"


def test_new_key_in_jwks_before_it_signs(tmp_path):
    """A key made just now is served in the JWKS, while logins still get tokens of the older key."""
    old = generate_key(tmp_path, "EdDSA").rename(
        tmp_path / f"{(datetime.now(UTC) - timedelta(days=1)).strftime(KEY_TIME_FORMAT)}-eddsa.pem")
    new = generate_key(tmp_path, "EdDSA")
    app = create_app({"keys_dir": str(tmp_path), "key_publish_seconds": 300})
    try:
        client = app.test_client()
        published = [jwk["kid"] for jwk in client.get("/.well-known/jwks.json").get_json()["keys"]]
        registered = client.post("/v1/auth/register", json={"email": "carol@example.com", "password": PASSWORD})
        login = client.post("/v1/auth/login", json={"email": "carol@example.com", "password": PASSWORD})
    finally:
        close_app(app)

    assert registered.status_code == 201
    assert login.status_code == 200
    assert published == [load_key(old, "EdDSA").kid, load_key(new, "EdDSA").kid]
    assert jwt.get_unverified_header(login.get_json()["access_token"])["kid"] == load_key(old, "EdDSA").kid


def test_openapi_matches_validation(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    register = document["paths"]["/v1/auth/register"]["post"]
    assert set(register["responses"]) >= {"201", "400", "409", "415", "503"}
    schema = document["components"]["schemas"]["RegisterRequest"]
    assert schema["properties"]["password"]["minLength"] == PASSWORD_MIN_LENGTH
    assert "must be ASCII" in schema["properties"]["email"]["description"]
    assert schema["additionalProperties"] is False
    assert document["paths"]["/v1/users/me"]["get"]["security"] == [{"bearerAuth": []}]


def test_request_id_echoed_or_generated(client):
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert generated != "bad id with spaces"
    assert len(generated) == 32


def test_unexpected_error_gives_problem_and_logs_stack(capsys, app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("kaboom")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == "internal_error"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "kaboom" not in body["detail"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [logged] = [line for line in lines if line["event"] == "server_error"]
    assert logged["request_id"] == body["request_id"]
    assert logged["route"] == "/boom"
    assert "Traceback" in logged["exception"]
    assert "RuntimeError: kaboom" in logged["exception"]


def test_unknown_method_rejected_before_routing(client):
    response = client.open("/v1/users/me", method="BREW")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "method_not_allowed"
    # Sorted, so the header is the same in every worker.
    assert response.headers["Allow"] == "GET, HEAD"


def test_metrics_ignores_query_filters(client):
    response = client.get("/metrics?name[]=gatehouse_logins_total")
    assert response.status_code == 200
    assert "gatehouse_build_info" in response.get_data(as_text=True)


def test_unknown_methods_add_no_metric_series(client):
    for index in range(5):
        client.open("/health", method=f"X{index}")
    assert "X3" not in client.get("/metrics").get_data(as_text=True)


def test_authenticated_answers_not_cached(client, tokens):
    response = client.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.headers["Cache-Control"] == "no-store"


def test_field_errors_bounded(client):
    # About 6 KB, within the 8 KiB body limit of /v1/auth/ routes.
    body = {f"unknown_{index}_{'x' * 100}": 1 for index in range(50)}
    response = client.post("/v1/auth/login", json=body)
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert len(errors) <= 10
    assert all(len(error["field"]) <= 64 for error in errors)


def test_problem_body_ends_with_newline(client):
    assert client.get("/nowhere").get_data(as_text=True).endswith("}\n")


def test_ready_failure_hides_addresses(app, client):
    app.extensions["gatehouse"].readiness._redis = __import__("redis").Redis(host="127.0.0.1", port=1,
                                                                             socket_connect_timeout=0.5)
    body = client.get("/ready").get_json()
    assert body["checks"]["redis"]["ok"] is False
    assert "127.0.0.1" not in body["checks"]["redis"]["error"]
    assert body["checks"]["redis"]["error"] == "ConnectionError"


def completed_lines(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "request_completed"]


def test_ready_while_stopping_logs_info(capsys, client, monkeypatch):
    monkeypatch.setattr(state, "_shutdown_started", 1.0)
    capsys.readouterr()

    response = client.get("/ready")

    assert response.status_code == 503
    [logged] = completed_lines(capsys)
    assert logged["status"] == 503
    assert logged["level"] == "info"


def test_ready_failing_check_logs_error(capsys, app, client, monkeypatch):
    # A failing dependency is not planned: its 503 keeps the error level.
    readiness = app.extensions["gatehouse"].readiness
    monkeypatch.setattr(readiness, "report", lambda: Report(
        ready=False, checks={"mysql": Check(ok=False, latency_ms=1.0, error="unreachable")}))
    capsys.readouterr()

    response = client.get("/ready")

    assert response.status_code == 503
    [logged] = completed_lines(capsys)
    assert logged["level"] == "error"
