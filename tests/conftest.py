"""Shared fixtures: settings from the test profile, a clean MariaDB and Redis, app, client, users.

`make test` starts the private test instances and exports their settings
(.state/test/gatehouse.env); every test starts from empty tables and an empty Redis.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

if not os.environ.get("GATEHOUSE_MYSQL_PASSWORD") or not os.environ.get("GATEHOUSE_REDIS_URL"):
    pytest.exit("the test settings are not in the environment: run the suite with `make test`", returncode=4)

# prometheus_client reads this when first imported, so it is set before the app is imported.
_METRICS_DIR = tempfile.mkdtemp(prefix="gatehouse-test-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _METRICS_DIR
atexit.register(shutil.rmtree, _METRICS_DIR, ignore_errors=True)

from service.app import create_app  # noqa: E402
from service.config import Settings, load_settings  # noqa: E402
from tests import helpers  # noqa: E402

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(autouse=True)
def clean_state(settings: Settings) -> None:
    """Empty every table the service writes and the test Redis database."""
    helpers.reset_state(settings)


@pytest.fixture
def app(settings: Settings):
    app = create_app()
    app.config["TESTING"] = True
    yield app
    from service.app import close_app

    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def user(client) -> dict:
    """A registered user: its id, email and password."""
    response = client.post("/v1/auth/register", json={"email": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 201, response.get_json()
    return {**response.get_json(), "password": PASSWORD}


@pytest.fixture
def tokens(client, user) -> dict:
    """A token pair from logging in as `user`."""
    response = client.post("/v1/auth/login", json={"email": user["email"], "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def admin_tokens(client, settings) -> dict:
    """A token pair of an administrator, made with `gatehouse users create --role admin`."""
    from tests.helpers import create_user

    user_id = create_user(settings, "root@example.com", PASSWORD, roles=("admin",))
    response = client.post("/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD})
    assert response.status_code == 200, response.get_json()
    return {**response.get_json(), "user_id": user_id}


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory):
    """A scratch MariaDB with TLS on 127.0.0.1, its schema applied over verified TLS with a client certificate."""
    from service.maintenance.scratch import ProgramNotFound, find_program
    from service.migrate import apply_migrations
    from tests.tls_mariadb import tls_mariadb

    try:
        find_program("mariadbd")
    except ProgramNotFound as exc:
        pytest.skip(str(exc))
    with tls_mariadb(tmp_path_factory.mktemp("tls")) as server:
        apply_migrations(server.x509_settings())
        yield server
