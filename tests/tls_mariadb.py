"""A scratch MariaDB that speaks TLS on 127.0.0.1, with a test CA, for the tests of TLS to MySQL.

The server's certificate names only the address 127.0.0.1, so connecting to it as
`localhost` fails a host name check. It requests client certificates of the same CA,
and the account X509_USER must present one.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.config import Settings, load_settings
from service.maintenance.option_files import mysql_option
from service.maintenance.scratch import ScratchMariaDB
from tests.helpers import free_port

DATABASE = "gatehouse_tls"
# An account that logs in with a password alone, and one that must also present a client certificate.
PASSWORD_USER = "gh_tls"
X509_USER = "gh_tls_x509"
PASSWORD = "tls-test-password"


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_certificate(certificate: x509.Certificate, path: Path) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates valid for one day."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            self._builder(subject, self._key.public_key())
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_path = _write_certificate(self.certificate, directory / f"{name}-ca.pem")

    @staticmethod
    def _builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (x509.CertificateBuilder().subject_name(subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, common_name: str, addresses: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """Write a certificate for common_name, valid for the IP addresses given, and its key; return both paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key.public_key())
                   .issuer_name(self.certificate.subject))
        if addresses:
            names = [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        stem = self.directory / f"{self.name}-{common_name}"
        return _write_certificate(certificate, stem.with_suffix(".pem")), _write_key(key, stem.with_suffix(".key"))


@dataclass
class TLSMariaDB:
    """The running server, its CA, a client certificate of that CA, and a CA that issued none of them."""

    server: ScratchMariaDB
    port: int
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    client_certificate: Path
    client_key: Path

    def overrides(self, mode: str, **changes: Any) -> dict[str, Any]:
        """Return load_settings overrides that point at this server as PASSWORD_USER, in the TLS mode given.

        The verify modes get this server's CA unless the changes name another.
        """
        values: dict[str, Any] = {
            "mysql_host": "127.0.0.1", "mysql_port": self.port, "mysql_user": PASSWORD_USER,
            "mysql_password": PASSWORD, "mysql_database": DATABASE, "mysql_tls_mode": mode,
        }
        if mode in ("verify_ca", "verify_identity"):
            values["mysql_tls_ca"] = self.ca.certificate_path
        return {**values, **changes}

    def x509_overrides(self, mode: str = "verify_identity", **changes: Any) -> dict[str, Any]:
        """Return overrides as X509_USER, with the client certificate unless the changes remove it."""
        values = {"mysql_user": X509_USER, "mysql_tls_cert": self.client_certificate,
                  "mysql_tls_key": self.client_key}
        return self.overrides(mode, **{**values, **changes})

    def settings(self, mode: str, **changes: Any) -> Settings:
        return load_settings(self.overrides(mode, **changes))

    def x509_settings(self, mode: str = "verify_identity", **changes: Any) -> Settings:
        return load_settings(self.x509_overrides(mode, **changes))


@contextmanager
def tls_mariadb(directory: Path) -> Iterator[TLSMariaDB]:
    """Start the server in directory, create its database and accounts, and stop it at the end."""
    ca = CertificateAuthority(directory, "test")
    other_ca = CertificateAuthority(directory, "other")
    server_certificate, server_key = ca.issue("mariadb", addresses=("127.0.0.1",))
    client_certificate, client_key = ca.issue("gatehouse")
    port = free_port()
    # ScratchMariaDB listens on its socket only, and these lines, which follow its own, open TCP too.
    options = ("skip-networking=0\n"
               f"port={port}\n"
               "bind-address=127.0.0.1\n"
               + mysql_option("ssl-ca", ca.certificate_path)
               + mysql_option("ssl-cert", server_certificate)
               + mysql_option("ssl-key", server_key))
    with ScratchMariaDB(directory, options) as server:
        with server.connect() as connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
            cursor.execute(f"CREATE USER '{PASSWORD_USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
            cursor.execute(f"CREATE USER '{X509_USER}'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE X509")
            for user in (PASSWORD_USER, X509_USER):
                cursor.execute(f"GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{user}'@'%'")
        yield TLSMariaDB(server, port, ca, other_ca, client_certificate, client_key)
