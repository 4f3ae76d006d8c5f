"""The request pipeline's cheap paths: the bare liveness probe, HTTP metrics, the log line."""

from __future__ import annotations

import json
import logging
import re

import pytest
from prometheus_client import CollectorRegistry, multiprocess

from service.app import close_app, create_app
from service.logs import add_timestamp


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in registry.collect() for sample in family.samples}


def _count(route: str, status: str, method: str = "GET") -> float:
    key = ("http_request_duration_seconds_count", (("method", method), ("status", status), ("url_rule", route)))
    return _samples().get(key, 0.0)


def test_health_skips_request_hooks_but_echoes_request_id(app, client):
    ran = []
    app.before_request(lambda: ran.append("before"))
    app.after_request(lambda response: ran.append("after") or response)
    app.teardown_request(lambda _exc: ran.append("teardown"))

    response = client.get("/health", headers={"X-Request-ID": "probe-1"})
    generated = client.get("/health").headers["X-Request-ID"]
    assert ran == []
    assert client.get("/ready").status_code == 200
    assert ran == ["before", "after", "teardown"]

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["X-Request-ID"] == "probe-1"
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_health_logs_at_debug_level(settings, capsys):
    app = create_app({"log_level": "debug"})
    try:
        capsys.readouterr()
        response = app.test_client().get("/health")
        lines = [line for line in _lines(capsys.readouterr().out) if line["event"] == "request_completed"]
    finally:
        close_app(app)
        logging.getLogger().setLevel(logging.INFO)

    assert response.status_code == 200
    assert [(line["route"], line["level"], line["request_id"]) for line in lines] == [
        ("/health", "debug", response.headers["X-Request-ID"])]


def test_http_metrics_by_route_and_status(client, tokens):
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    before_ok, before_missing = _count("/v1/users/me", "200"), _count("/v1/users/me", "401")
    before_unmatched = _count("None", "404")

    for _ in range(3):
        assert client.get("/v1/users/me", headers=bearer).status_code == 200
    assert client.get("/v1/users/me").status_code == 401
    assert client.get("/no/such/route").status_code == 404

    assert _count("/v1/users/me", "200") == before_ok + 3
    assert _count("/v1/users/me", "401") == before_missing + 1
    assert _count("None", "404") == before_unmatched + 1


def test_http_metrics_leave_out_probes_and_scrapes(client):
    before = {path: _count(path, "200") for path in ("/health", "/ready", "/metrics")}

    for path in before:
        assert client.get(path).status_code == 200

    assert {path: _count(path, "200") for path in before} == before


def test_log_line_request_fields(client, user, tokens, capsys):
    capsys.readouterr()

    response = client.get("/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})

    [line] = [line for line in _lines(capsys.readouterr().out) if line["event"] == "request_completed"]
    assert line["status"] == 200
    assert line["route"] == "/v1/users/me"
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["user_id"] == user["id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])


def test_log_line_reaches_other_handlers_as_a_record(client, caplog):
    with caplog.at_level(logging.INFO):
        client.get("/v1/users/me")

    records = [record for record in caplog.records if record.name == "gatehouse.request"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert json.loads(records[0].getMessage())["status"] == 401


@pytest.mark.parametrize("now, expected", [
    (1_700_000_000.0, "2023-11-14T22:13:20.000000Z"),
    (1_700_000_000.5, "2023-11-14T22:13:20.500000Z"),
    (1_700_000_001.25, "2023-11-14T22:13:21.250000Z"),
])
def test_timestamp_formats_each_second_and_fraction(monkeypatch, now, expected):
    monkeypatch.setattr("service.logs.time.time", lambda: now)
    assert add_timestamp(None, "info", {})["timestamp"] == expected
