"""TLS to MySQL in each GATEHOUSE_MYSQL_TLS_MODE, against a scratch MariaDB with TLS and the plain test MariaDB."""

from __future__ import annotations

import json
import ssl

import pymysql
import pytest

from service import mysql_tls
from service.database import Database, connect, connect_args
from service.logs import configure_logging
from service.migrate import apply_migrations
from service.mysql_tls import tls_failure
from tests.tls_mariadb import PASSWORD

# ER_ACCESS_DENIED_ERROR: what MariaDB returns when an account with REQUIRE X509 presents no client certificate.
ACCESS_DENIED = 1045


def session_cipher(connection: pymysql.connections.Connection) -> str:
    """Return the TLS cipher of the connection as the server reports it, or "" for plain text."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cursor.fetchone()
    return row["Value"] if isinstance(row, dict) else row[1]


def cipher_of(settings) -> str:
    connection = connect(**connect_args(settings))
    try:
        return session_cipher(connection)
    finally:
        connection.close()


def connect_error(settings) -> pymysql.err.OperationalError:
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        connect(**connect_args(settings)).close()
    return excinfo.value


def test_preferred_uses_offered_tls(tls_server):
    assert cipher_of(tls_server.settings("preferred"))


def test_preferred_shares_one_unverified_context(tls_server):
    settings = tls_server.settings("preferred")
    connections = [connect(**connect_args(settings)) for _ in range(3)]
    try:
        assert all(session_cipher(connection) for connection in connections)
        assert len({id(connection.ctx) for connection in connections}) == 1
        # Nothing checks the certificate in this mode, so no CA certificates are loaded.
        context = connections[0].ctx
        assert context.verify_mode == ssl.CERT_NONE
        assert context.cert_store_stats()["x509_ca"] == 0
    finally:
        for connection in connections:
            connection.close()


def test_preferred_without_server_tls_is_plain(settings):
    assert cipher_of(settings) == ""


def test_disabled_skips_offered_tls(tls_server):
    assert cipher_of(tls_server.settings("disabled")) == ""


def test_required_uses_tls_without_check(tls_server):
    settings = tls_server.settings("required")

    assert cipher_of(settings) != ""
    context = connect_args(settings)["ssl"]
    assert context.verify_mode == ssl.CERT_NONE
    assert context.cert_store_stats()["x509_ca"] == 0


def test_required_fails_without_server_tls(settings):
    error = connect_error(settings.model_copy(update={"mysql_tls_mode": "required"}))
    failure = tls_failure(error)

    assert error.args[0] == pymysql.constants.CR.CR_SSL_CONNECTION_ERROR
    assert failure is not None
    assert "offers none" in failure.hint


def test_verify_ca_accepts_issuing_ca(tls_server):
    assert cipher_of(tls_server.settings("verify_ca")) != ""


def test_verify_ca_ignores_host_name(tls_server):
    # The certificate names 127.0.0.1 only, and verify_ca does not compare names.
    assert cipher_of(tls_server.settings("verify_ca", mysql_host="localhost")) != ""


@pytest.mark.parametrize("mode", ["verify_ca", "verify_identity"])
def test_verify_rejects_other_ca(tls_server, mode):
    settings = tls_server.settings(mode, mysql_tls_ca=tls_server.other_ca.certificate_path)

    failure = tls_failure(connect_error(settings))

    assert failure is not None
    assert failure.reason.startswith("certificate verify failed: ")
    assert "GATEHOUSE_MYSQL_TLS_CA" in failure.hint


def test_verify_identity_accepts_named_host(tls_server):
    assert cipher_of(tls_server.settings("verify_identity")) != ""


def test_verify_identity_rejects_other_host_name(tls_server):
    failure = tls_failure(connect_error(tls_server.settings("verify_identity", mysql_host="localhost")))

    assert failure is not None
    assert "localhost" in failure.reason
    assert "GATEHOUSE_MYSQL_HOST" in failure.hint


def test_client_certificate_logs_in(tls_server):
    assert cipher_of(tls_server.x509_settings()) != ""


def test_missing_client_certificate_denied(tls_server):
    settings = tls_server.x509_settings("required", mysql_tls_cert=None, mysql_tls_key=None)

    assert connect_error(settings).args[0] == ACCESS_DENIED


def test_client_certificate_of_other_ca_rejected(tls_server):
    """The server's alert names the cause, but under TLS 1.3 it can be lost, as a start-up check's retry would see.

    The client finishes its handshake before the server checks the certificate. When the
    server closes the connection before the client has read the alert (about one
    connection in eight here), the client sees a lost connection, which is no TLS
    failure. The start-up check retries such errors, so a later attempt names the cause.
    """
    certificate, key = tls_server.other_ca.issue("intruder")
    settings = tls_server.x509_settings(mysql_tls_cert=certificate, mysql_tls_key=key)

    failure = None
    for _ in range(8):
        error = connect_error(settings)
        failure = tls_failure(error)
        if failure is not None:
            break
        assert isinstance(getattr(error, "original_exception", None) or error.__context__, ssl.SSLEOFError), error

    assert failure is not None
    assert failure.reason.startswith("TLS handshake failed: ")
    assert "GATEHOUSE_MYSQL_TLS_CERT" in failure.hint


@pytest.mark.parametrize("mode", ["required", "verify_ca", "verify_identity"])
def test_pool_connections_share_context(tls_server, mode):
    settings = tls_server.settings(mode)
    database = Database(settings)
    try:
        with database.connection() as first, database.connection() as second, database.connection() as third:
            connections = [pooled.dbapi_connection for pooled in (first, second, third)]
            assert len({id(connection) for connection in connections}) == 3
            assert all(session_cipher(connection) for connection in connections)
            assert len({id(connection.ctx) for connection in connections}) == 1
        assert connections[0].ctx is connect_args(settings)["ssl"]
    finally:
        database.close()


def test_same_settings_share_context_across_loads(tls_server):
    # Settings load again in every CLI command and job, and equal TLS settings get the process's one context.
    first = connect_args(tls_server.settings("verify_identity"))["ssl"]
    second = connect_args(tls_server.settings("verify_identity"))["ssl"]

    assert first is second


def test_migrations_use_tls_settings(tls_server):
    # The account requires a client certificate, so migrations log in only with the TLS settings.
    assert apply_migrations(tls_server.x509_settings()) == []
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        apply_migrations(tls_server.x509_settings("required", mysql_tls_cert=None, mysql_tls_key=None))
    assert excinfo.value.args[0] == ACCESS_DENIED


def test_tls_failure_logged_once_per_interval(tls_server, capsys, monkeypatch):
    configure_logging("info")
    monkeypatch.setattr(mysql_tls, "failure_log", mysql_tls._FailureLog(interval=3600))
    monkeypatch.setattr("service.database.failure_log", mysql_tls.failure_log)
    settings = tls_server.settings("verify_identity", mysql_host="localhost")

    for _ in range(3):
        connect_error(settings)
    mysql_tls.failure_log.interval = 0
    connect_error(settings)

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    failures = [record for record in records if record.get("event") == "mysql_tls_failed"]
    assert len(failures) == 2
    assert failures[0]["level"] == "error"
    assert failures[0]["host"] == "localhost"
    assert failures[0]["port"] == tls_server.port
    assert "localhost" in failures[0]["reason"]
    assert "GATEHOUSE_MYSQL_HOST" in failures[0]["hint"]
    assert failures[0]["failures_not_logged"] == 0
    assert failures[1]["failures_not_logged"] == 2
    assert PASSWORD not in json.dumps(failures)
