"""The service under gunicorn's gevent workers, with verified TLS and a client certificate to MySQL."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.e2e.test_flow import bearer, register_and_login
from tests.e2e.test_startup import start_until_exit
from tests.helpers import Gunicorn
from tests.tls_mariadb import PASSWORD

pytestmark = pytest.mark.e2e


def tls_environment(tls_server, **changes) -> dict[str, str]:
    """Return the variables that point the service at the scratch MariaDB as its X509 account."""
    settings = tls_server.x509_settings(**changes)
    return {
        "GATEHOUSE_MYSQL_HOST": settings.mysql_host, "GATEHOUSE_MYSQL_PORT": str(settings.mysql_port),
        "GATEHOUSE_MYSQL_USER": settings.mysql_user, "GATEHOUSE_MYSQL_PASSWORD": PASSWORD,
        "GATEHOUSE_MYSQL_DATABASE": settings.mysql_database,
        "GATEHOUSE_MYSQL_TLS_MODE": settings.mysql_tls_mode, "GATEHOUSE_MYSQL_TLS_CA": str(settings.mysql_tls_ca),
        "GATEHOUSE_MYSQL_TLS_CERT": str(settings.mysql_tls_cert), "GATEHOUSE_MYSQL_TLS_KEY": str(settings.mysql_tls_key),
    }


def test_flow_over_verified_tls(tls_server, tmp_path):
    # The account requires a client certificate, so every query of the workers ran over TLS.
    with Gunicorn(tmp_path, env=tls_environment(tls_server)) as gunicorn:
        pair = register_and_login(gunicorn.url, email=f"tls-{uuid.uuid4().hex[:8]}@example.com")
        me = requests.get(f"{gunicorn.url}/v1/users/me", headers=bearer(pair["access_token"]), timeout=10)

    assert me.status_code == 200
    assert "mysql_tls_failed" not in gunicorn.output()


def test_other_ca_stops_start_at_once(tls_server, tmp_path):
    env = tls_environment(tls_server, mysql_tls_ca=tls_server.other_ca.certificate_path)

    returncode, output = start_until_exit(tmp_path, env, timeout=20)

    assert returncode == 3, output
    assert "certificate verify failed" in output
    assert "GATEHOUSE_MYSQL_TLS_CA" in output
    assert "mysql_tls_failed" in output
    assert "startup_check_retrying" not in output
    assert PASSWORD not in output
