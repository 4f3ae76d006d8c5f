"""A real Prometheus scrapes a running Gatehouse: domain metrics, alerts, and the dashboard's queries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.alerts.test_rules import render_rules
from tests.conftest import PASSWORD
from tests.helpers import ROOT, Gunicorn, free_port, start_services, stop_redis

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("prometheus") is None,
                                                  reason="prometheus missing: `make test` installs it")]

DASHBOARD = ROOT / "helm" / "gatehouse" / "files" / "dashboards" / "gatehouse.json"


@pytest.fixture(scope="module")
def gatehouse(tmp_path_factory):
    # No grace interval, so a replayed refresh token counts as reuse at once.
    # A tight registration limit, so one test can produce a 429 and its counter.
    server = Gunicorn(tmp_path_factory.mktemp("gatehouse"), env={"GATEHOUSE_REFRESH_GRACE_SECONDS": "0",
                                                                 "GATEHOUSE_RATE_LIMIT_REGISTER": "3/minute"})
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prometheus(gatehouse, tmp_path_factory):
    directory = tmp_path_factory.mktemp("prometheus")
    (directory / "rules.yaml").write_text(yaml.safe_dump(render_rules()))
    (directory / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "rules.yaml")],
        "scrape_configs": [{"job_name": "gatehouse", "static_configs": [{"targets": [f"127.0.0.1:{gatehouse.port}"]}]}],
    }))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(url: str, expression: str) -> list[dict]:
    response = requests.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def wait_for_value(url: str, expression: str, expected: float, timeout: float = 30.0) -> float | None:
    """Poll until the query returns the expected value; the first scrape of a target takes about 5 s."""
    deadline = time.monotonic() + timeout
    current = None
    while time.monotonic() < deadline:
        result = query(url, expression)
        current = float(result[0]["value"][1]) if result else None
        if current == expected:
            return current
        time.sleep(0.5)
    return current


def test_domain_metrics_reach_prometheus(gatehouse, prometheus):
    base = gatehouse.url
    requests.post(f"{base}/v1/auth/register", json={"email": "p@example.com", "password": PASSWORD}, timeout=10)
    first = requests.post(f"{base}/v1/auth/login", json={"email": "p@example.com", "password": PASSWORD}, timeout=10)
    requests.post(f"{base}/v1/auth/login", json={"email": "p@example.com", "password": PASSWORD}, timeout=10)
    requests.post(f"{base}/v1/auth/login", json={"email": "p@example.com", "password": "not the password"},
                  timeout=10)
    token = first.json()["refresh_token"]
    assert requests.post(f"{base}/v1/auth/refresh", json={"refresh_token": token}, timeout=10).status_code == 200
    time.sleep(0.1)
    assert requests.post(f"{base}/v1/auth/refresh", json={"refresh_token": token}, timeout=10).status_code == 401

    assert wait_for_value(prometheus, 'sum(gatehouse_logins_total{result="success"})', 2) == 2
    assert wait_for_value(prometheus, 'sum(gatehouse_logins_total{result="invalid_credentials"})', 1) == 1
    assert wait_for_value(prometheus, 'sum(gatehouse_refreshes_total{outcome="reuse_detected"})', 1) == 1
    assert wait_for_value(prometheus, 'sum(gatehouse_refreshes_total{outcome="rotated"})', 1) == 1
    assert wait_for_value(prometheus, 'min(gatehouse_dependency_up{dependency="redis"})', 1) == 1
    # The maintenance alerts select the job gauges by job_name, which a scrape keeps as it is.
    assert wait_for_value(prometheus, 'count(gatehouse_job_last_success_timestamp_seconds{job_name="tokens_purge"})',
                          1) == 1


def test_redis_alert_goes_pending(gatehouse, prometheus, settings):
    stop_redis(settings)
    try:
        deadline = time.monotonic() + 30
        state = None
        while time.monotonic() < deadline and state not in ("pending", "firing"):
            alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            state = next((alert["state"] for alert in alerts
                          if alert["labels"]["alertname"] == "GatehouseRedisUnavailable"), None)
            time.sleep(0.5)
    finally:
        start_services()
    assert state in ("pending", "firing")


def dashboard_metric_names() -> set[str]:
    expressions = [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]
                   for target in panel["targets"]]
    names = set()
    for expression in expressions:
        names.update(re.findall(r"\b((?:gatehouse|http)_[a-z0-9_]+)\b", expression))
    return names


def test_dashboard_queries_use_exposed_metrics(gatehouse):
    # Labelled counters appear once they have a sample: make one rate-limited request.
    statuses = [requests.post(f"{gatehouse.url}/v1/auth/register", timeout=10,
                              json={"email": f"d{index}@example.com", "password": PASSWORD}).status_code
                for index in range(5)]
    assert 429 in statuses
    text = requests.get(f"{gatehouse.url}/metrics", timeout=10).text
    exposed = set()
    for family in text_string_to_metric_families(text):
        exposed.add(family.name)
        exposed.update(sample.name for sample in family.samples)
    used = dashboard_metric_names()
    assert len(used) >= 8
    assert sorted(used - exposed) == []
