"""/metrics through a real gunicorn master with 2 workers: domain metrics, gauges, dead workers."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of one scrape, keyed by name and sorted labels."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def worker_pids(master_pid: int) -> set[int]:
    children = open(f"/proc/{master_pid}/task/{master_pid}/children").read().split()
    return {int(pid) for pid in children}


def test_domain_metrics_count_each_outcome(server):
    before = scrape(server.url)
    requests.post(f"{server.url}/v1/auth/register", json={"email": "m@example.com", "password": PASSWORD}, timeout=10)
    pair = requests.post(f"{server.url}/v1/auth/login", json={"email": "m@example.com", "password": PASSWORD},
                         timeout=10).json()
    requests.post(f"{server.url}/v1/auth/login", json={"email": "m@example.com", "password": "wrong password"},
                  timeout=10)
    requests.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}, timeout=10)
    requests.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": "unknown"}, timeout=10)

    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gatehouse_registrations_total") == 1
    assert delta("gatehouse_logins_total", result="success") == 1
    assert delta("gatehouse_logins_total", result="invalid_credentials") == 1
    assert delta("gatehouse_refreshes_total", outcome="rotated") == 1
    assert delta("gatehouse_refreshes_total", outcome="invalid") == 1
    assert delta("gatehouse_refreshes_total", outcome="reuse_detected") == 0


def test_refresh_of_disabled_account_counted(server, settings):
    from tests.blueprints.test_auth import run_sql

    requests.post(f"{server.url}/v1/auth/register", json={"email": "gone@example.com", "password": PASSWORD},
                  timeout=10)
    pair = requests.post(f"{server.url}/v1/auth/login", json={"email": "gone@example.com", "password": PASSWORD},
                         timeout=10).json()
    # Disabled in the database only, so its sessions stay until a refresh finds the account inactive.
    run_sql(settings, "UPDATE users SET status = 'disabled' WHERE email = %s", ("gone@example.com",))
    before = scrape(server.url)

    response = requests.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]},
                             timeout=10)

    assert response.status_code == 401
    after = scrape(server.url)
    key = ("gatehouse_refreshes_total", (("outcome", "account_inactive"),))
    assert after[key] - before.get(key, 0.0) == 1


def test_gauges_describe_pools_dependencies_and_build(server):
    samples = scrape(server.url)
    workers = 2
    assert value(samples, "gatehouse_pool_connections_max", pool="mysql") == workers * 10
    assert value(samples, "gatehouse_workers") == workers
    assert value(samples, "gatehouse_workers_configured") == workers
    assert value(samples, "gatehouse_pool_connections_max", pool="redis") == workers * 20
    assert value(samples, "gatehouse_pool_connections_in_use", pool="mysql") == 0
    assert value(samples, "gatehouse_dependency_up", dependency="mysql") == 1
    assert value(samples, "gatehouse_dependency_up", dependency="redis") == 1
    assert value(samples, "gatehouse_dependency_check_duration_seconds", dependency="redis") < 1
    assert value(samples, "gatehouse_job_last_success_timestamp_seconds", job_name="tokens_purge") == 0
    # Prometheus sets job and instance on every target: a metric's own would become exported_job,
    # which no rule or dashboard would match.
    assert not [key for key in samples if {"job", "instance"} & {name for name, _ in key[1]}]
    assert [key for key in samples if key[0] == "gatehouse_build_info"]
    assert value(samples, "gatehouse_http_requests_in_flight") == 1  # the scrape itself


def test_http_metrics_use_route_templates(server):
    session_id = "0123456789abcdef0123456789abcdef"
    requests.delete(f"{server.url}/v1/auth/sessions/{session_id}", timeout=10)
    samples = scrape(server.url)
    routes = {dict(labels).get("url_rule") for name, labels in samples if name == "http_request_duration_seconds_count"}
    assert "/v1/auth/sessions/<id:session_id>" in routes
    assert not any(route and session_id in route for route in routes)


def test_probes_left_out_of_http_metrics(server):
    for path in ("/health", "/ready", "/metrics", "/.well-known/jwks.json"):
        assert requests.get(f"{server.url}{path}", timeout=10).status_code == 200

    samples = scrape(server.url)

    routes = {dict(labels).get("url_rule") for name, labels in samples if name == "http_request_duration_seconds_count"}
    assert "/.well-known/jwks.json" in routes
    assert routes.isdisjoint({"/health", "/ready", "/metrics"})


def test_killed_worker_leaves_no_stale_gauges(server):
    before = scrape(server.url)
    victim = min(worker_pids(server.process.pid))
    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = worker_pids(server.process.pid)
        if victim not in pids and len(pids) == 2:
            break
        time.sleep(0.1)
    server.wait_ready()
    # The replacement adds its pool once its app is built; the dead worker's must be gone.
    capacities = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and capacities[-1:] != [2 * 10]:
        capacities.append(value(scrape(server.url), "gatehouse_pool_connections_max", pool="mysql"))
        time.sleep(0.2)

    after = scrape(server.url)
    assert capacities[-1] == 2 * 10
    assert max(capacities) <= 2 * 10
    for key, count in before.items():
        if key[0].endswith("_total") and key in after:
            assert after[key] >= count, key
