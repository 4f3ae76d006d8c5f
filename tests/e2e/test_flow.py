"""The core flows through a real gunicorn master with 2 gevent workers."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


def register_and_login(url: str, email: str = "bob@example.com") -> dict:
    response = requests.post(f"{url}/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=10)
    assert response.status_code == 201, response.text
    response = requests.post(f"{url}/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_full_flow_and_rejections_after_logout(server):
    session = requests.Session()
    pair = register_and_login(server.url)
    assert pair["token_type"] == "Bearer"

    me = session.get(f"{server.url}/v1/users/me", headers=bearer(pair["access_token"]), timeout=10)
    assert me.status_code == 200
    assert me.json()["email"] == "bob@example.com"
    assert me.json()["roles"] == []

    refreshed = session.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}, timeout=10)
    assert refreshed.status_code == 200
    new_pair = refreshed.json()
    assert new_pair["refresh_token"] != pair["refresh_token"]

    logout = session.post(f"{server.url}/v1/auth/logout", headers=bearer(new_pair["access_token"]), timeout=10)
    assert logout.status_code == 204

    # Both workers must reject the ended session, so each check is repeated.
    for _ in range(6):
        after = session.get(f"{server.url}/v1/users/me", headers=bearer(new_pair["access_token"]), timeout=10)
        assert after.status_code == 401
        assert after.json()["code"] == "session_revoked"
        assert "Bearer" in after.headers["WWW-Authenticate"]
        old_access = session.get(f"{server.url}/v1/users/me", headers=bearer(pair["access_token"]), timeout=10)
        assert old_access.status_code == 401
        stale = session.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": new_pair["refresh_token"]},
                             timeout=10)
        assert stale.status_code == 401
        assert stale.json()["code"] == "invalid_refresh_token"


def test_concurrent_refresh_continues_one_chain(server):
    pair = register_and_login(server.url, "carol@example.com")

    def refresh() -> requests.Response:
        return requests.post(f"{server.url}/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]},
                             timeout=10)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda _: refresh(), range(2))
    assert time.monotonic() - started < 5

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    for response in (first, second):
        me = requests.get(f"{server.url}/v1/users/me", headers=bearer(response.json()["access_token"]), timeout=10)
        assert me.status_code == 200

    # Both new tokens belong to one generation: the first to rotate continues the
    # session, and the other one then counts as reuse.
    continued = requests.post(f"{server.url}/v1/auth/refresh",
                              json={"refresh_token": first.json()["refresh_token"]}, timeout=10)
    assert continued.status_code == 200
    superseded = requests.post(f"{server.url}/v1/auth/refresh",
                               json={"refresh_token": second.json()["refresh_token"]}, timeout=10)
    assert superseded.status_code == 401
    me = requests.get(f"{server.url}/v1/users/me", headers=bearer(continued.json()["access_token"]), timeout=10)
    assert me.status_code == 401


def scrape_request_total(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("http_request_total{"))


def test_metrics_aggregate_all_workers(server):
    before = scrape_request_total(server.url)

    def probe(_: int) -> int:
        # A new connection per request, so both workers accept some of them. A recorded
        # route: the probes are left out of the request metrics.
        return requests.get(f"{server.url}/.well-known/jwks.json", timeout=10,
                            headers={"Connection": "close"}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(probe, range(100)))
    assert statuses == [200] * 100

    metrics_dir = Path(server.env["PROMETHEUS_MULTIPROC_DIR"])
    worker_files = {path.name for path in metrics_dir.glob("counter_*.db")}
    assert len(worker_files) >= 2, worker_files
    for _ in range(10):
        assert scrape_request_total(server.url) == before + 100


def test_every_request_logged_once_without_secrets(server):
    pair = register_and_login(server.url, "dave@example.com")
    request_id = "trace-once-1234"
    requests.get(f"{server.url}/v1/users/me", headers={**bearer(pair["access_token"]), "X-Request-ID": request_id},
                 timeout=10)
    time.sleep(0.5)
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    completed = [line for line in lines if line.get("event") == "request_completed"
                 and line.get("request_id") == request_id]
    assert len(completed) == 1
    assert completed[0]["route"] == "/v1/users/me"
    assert completed[0]["status"] == 200
    assert completed[0]["user_id"]
    output = server.output()
    assert PASSWORD not in output
    assert pair["access_token"] not in output
    assert pair["refresh_token"] not in output


def test_workers_log_json_and_run_patched(server):
    output = server.output()
    lines = [line for line in output.splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not_json == []
    records = [json.loads(line) for line in lines]
    created = [record for record in records if record["event"] == "app_created"]
    assert len({record["pid"] for record in created}) == 2
    assert all(record["gevent_patched"] is True for record in created)
    assert any(record["logger"] == "gunicorn.error" for record in records)


def test_wrong_passwords_log_json_lines_only(server):
    register_and_login(server.url, "grace@example.com")
    for _ in range(3):
        response = requests.post(f"{server.url}/v1/auth/login",
                                 json={"email": "grace@example.com", "password": "not the password"}, timeout=10)
        assert response.status_code == 401

    # Every line of the server's output is one JSON object: no plain-text traceback from the hashing threads.
    lines = [line for line in server.output().splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not_json == []
    assert any('"invalid_credentials"' in line for line in lines)
