"""Key rotation on a running server: after SIGHUP a new key is in the JWKS, and it signs
once its publish period has passed, without another reload."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import jwt
import requests

from service.tokens.keys import KEY_TIME_FORMAT, generate_key, key_time, load_key
from tests.conftest import PASSWORD
from tests.helpers import Gunicorn

# Long enough for the reload and a login to finish inside it on a busy machine.
PUBLISH_SECONDS = 12
MAX_AGE_SECONDS = 5
EMAIL = "rotation@example.com"


def login_kid(url: str) -> str:
    """Log in on a new connection and return the kid in the access token's header."""
    response = requests.post(f"{url}/v1/auth/login", json={"email": EMAIL, "password": PASSWORD},
                             headers={"Connection": "close"}, timeout=30)
    assert response.status_code == 200, response.text
    return jwt.get_unverified_header(response.json()["access_token"])["kid"]


def jwks_kids(url: str) -> list[str]:
    response = requests.get(f"{url}/.well-known/jwks.json", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == f"public, max-age={MAX_AGE_SECONDS}"
    return [jwk["kid"] for jwk in response.json()["keys"]]


def events(output: str, name: str) -> list[dict]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


def test_new_key_signs_after_publish_period_without_reload(tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    made_yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime(KEY_TIME_FORMAT)
    old = generate_key(keys_dir, "EdDSA").rename(keys_dir / f"{made_yesterday}-eddsa.pem")
    old_kid = load_key(old, "EdDSA").kid
    env = {"GATEHOUSE_KEYS_DIR": str(keys_dir), "GATEHOUSE_KEY_PUBLISH_SECONDS": str(PUBLISH_SECONDS),
           "GATEHOUSE_JWKS_MAX_AGE_SECONDS": str(MAX_AGE_SECONDS)}

    with Gunicorn(tmp_path, env=env) as server:
        registered = requests.post(f"{server.url}/v1/auth/register", json={"email": EMAIL, "password": PASSWORD},
                                   timeout=30)
        assert registered.status_code == 201, registered.text
        assert jwks_kids(server.url) == [old_kid]

        new = generate_key(keys_dir, "EdDSA")
        new_kid = load_key(new, "EdDSA").kid
        signs_from = key_time(new) + PUBLISH_SECONDS
        reloaded_workers = server.reload()

        published = [jwks_kids(server.url) for _ in range(6)]
        before = [login_kid(server.url) for _ in range(4)]
        assert time.time() < signs_from, "the reload and logins took longer than the publish period"

        time.sleep(max(0.0, signs_from - time.time()) + 0.2)
        after = [login_kid(server.url) for _ in range(4)]
        output = server.output()
        assert server.worker_pids() == reloaded_workers

    assert published == [[old_kid, new_kid]] * 6
    assert before == [old_kid] * 4
    assert after == [new_kid] * 4
    switched = events(output, "signing_key_switched")
    assert switched
    assert {(event["previous_kid"], event["kid"]) for event in switched} == {(old_kid, new_kid)}
    reloaded = [event for event in events(output, "signing_keys_loaded") if new_kid in event["kids"]]
    # A worker still booting when the key was written loads it too, so there may be more than two.
    assert len(reloaded) >= 2
    assert all(event["signing_kid"] == old_kid for event in reloaded)
    assert all(list(event["pending"]) == [new_kid] for event in reloaded)
