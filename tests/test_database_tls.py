"""TLS to MySQL in PyMySQL's default mode: used when the server offers it, one context per process."""

from __future__ import annotations

import datetime
import ssl

import pymysql.cursors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.database import connect, connect_args
from service.maintenance.option_files import mysql_option
from service.maintenance.scratch import ScratchMariaDB, find_program


def write_self_signed_certificate(directory) -> tuple[str, str]:
    """Write a self-signed server certificate and its key; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scratch mariadb")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    certificate_path, key_path = directory / "server.pem", directory / "server.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(certificate_path), str(key_path)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    try:
        find_program("mariadbd")
    except Exception as exc:  # noqa: BLE001 - ProgramNotFound names the package to install
        pytest.skip(str(exc))
    directory = tmp_path_factory.mktemp("tls")
    certificate, key = write_self_signed_certificate(directory)
    with ScratchMariaDB(directory, mysql_option("ssl-cert", certificate) + mysql_option("ssl-key", key)) as server:
        yield server


def open_connection(server: ScratchMariaDB) -> pymysql.connections.Connection:
    return connect(unix_socket=str(server.socket), user="root", charset="utf8mb4", autocommit=True,
                   cursorclass=pymysql.cursors.DictCursor)


def test_offered_tls_shares_one_context(tls_server):
    connections = [open_connection(tls_server) for _ in range(3)]
    try:
        ciphers = []
        for connection in connections:
            with connection.cursor() as cursor:
                cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                ciphers.append(cursor.fetchone()["Value"])

        assert all(ciphers), ciphers
        assert len({id(connection.ctx) for connection in connections}) == 1
        # Nothing checks the certificate in this mode (it is self-signed here), so no CA certificates are loaded.
        context = connections[0].ctx
        assert context.verify_mode == ssl.CERT_NONE
        assert context.cert_store_stats()["x509_ca"] == 0
    finally:
        for connection in connections:
            connection.close()


def test_plain_connection_without_server_tls(settings):
    connection = connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert cursor.fetchone()["Value"] == ""
    finally:
        connection.close()


def test_explicit_tls_options_verify_certificate(tls_server, tmp_path):
    other_certificate, _ = write_self_signed_certificate(tmp_path)

    # A CA that did not sign the server's certificate: PyMySQL's own verifying context refuses it.
    with pytest.raises(pymysql.err.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(unix_socket=str(tls_server.socket), user="root", ssl_ca=other_certificate, ssl_verify_cert=True)
