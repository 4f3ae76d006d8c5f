"""The GATEHOUSE_MYSQL_TLS_* settings: each mode's files, the files' contents, and errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from service.config import load_settings
from tests import test_config
from tests.test_config import invalid_configuration_message
from tests.tls_mariadb import CertificateAuthority

# The minimal valid environment of the settings tests, on which each test here sets the TLS variables.
environment = test_config.environment
ALL_MODES = ["disabled", "preferred", "required", "verify_ca", "verify_identity"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA bundle, a client certificate with its key, another key, an encrypted key and files that hold no PEM."""
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "settings")
    certificate, key = ca.issue("client")
    _, other_key = ca.issue("other")
    encrypted_key = directory / "encrypted.key"
    private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted_key.write_bytes(private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    not_pem = directory / "not.pem"
    not_pem.write_text("not a certificate\n")
    ed25519_key = directory / "ed25519.key"
    ed25519_key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"ca": ca.certificate_path, "cert": certificate, "key": key, "other_key": other_key,
            "encrypted_key": encrypted_key, "not_pem": not_pem, "ed25519_key": ed25519_key}


def set_tls(variables: pytest.MonkeyPatch, mode: str, **files: Path | str) -> None:
    variables.setenv("GATEHOUSE_MYSQL_TLS_MODE", mode)
    for name, value in files.items():
        variables.setenv(f"GATEHOUSE_MYSQL_TLS_{name.upper()}", str(value))


def test_default_mode_is_preferred(environment):
    settings = load_settings()

    assert settings.mysql_tls_mode == "preferred"
    assert settings.mysql_tls_ca is None
    assert settings.mysql_tls_cert is None
    assert settings.mysql_tls_key is None


@pytest.mark.parametrize("mode", ALL_MODES)
def test_each_mode_loads(environment, pki, mode):
    files = {"ca": pki["ca"]} if mode.startswith("verify") else {}
    set_tls(environment, mode, **files)

    assert load_settings().mysql_tls_mode == mode


def test_invalid_mode_rejected(environment):
    environment.setenv("GATEHOUSE_MYSQL_TLS_MODE", "VERIFY_CA")

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_MYSQL_TLS_MODE is invalid ("), message
    assert "verify_identity" in message


@pytest.mark.parametrize("mode", ["verify_ca", "verify_identity"])
def test_verify_mode_requires_ca(environment, mode):
    set_tls(environment, mode)

    assert invalid_configuration_message().startswith("GATEHOUSE_MYSQL_TLS_CA is not set: set it to path of a PEM")


@pytest.mark.parametrize("mode", ["disabled", "preferred", "required"])
def test_ca_outside_verify_modes_rejected(environment, pki, mode):
    set_tls(environment, mode, ca=pki["ca"])

    assert invalid_configuration_message() == (
        f"GATEHOUSE_MYSQL_TLS_CA is set, but GATEHOUSE_MYSQL_TLS_MODE is {mode}, which does not use it: "
        "unset GATEHOUSE_MYSQL_TLS_CA")


@pytest.mark.parametrize("mode", ["disabled", "preferred"])
def test_client_certificate_needs_enforcing_mode(environment, pki, mode):
    set_tls(environment, mode, cert=pki["cert"], key=pki["key"])

    assert invalid_configuration_message().startswith(
        f"GATEHOUSE_MYSQL_TLS_CERT is set, but GATEHOUSE_MYSQL_TLS_MODE is {mode}, which does not use it")


@pytest.mark.parametrize("mode", ["required", "verify_ca", "verify_identity"])
def test_client_certificate_loads(environment, pki, mode):
    files = {"ca": pki["ca"]} if mode.startswith("verify") else {}
    set_tls(environment, mode, cert=pki["cert"], key=pki["key"], **files)

    settings = load_settings()

    assert settings.mysql_tls_cert == pki["cert"]
    assert settings.mysql_tls_key == pki["key"]


def test_certificate_without_key_rejected(environment, pki):
    set_tls(environment, "required", cert=pki["cert"])

    assert invalid_configuration_message().startswith("GATEHOUSE_MYSQL_TLS_KEY is not set: set it to path of the PEM")


def test_key_without_certificate_rejected(environment, pki):
    set_tls(environment, "required", key=pki["key"])

    assert invalid_configuration_message() == (
        "GATEHOUSE_MYSQL_TLS_KEY is set, but GATEHOUSE_MYSQL_TLS_CERT is not: set both or neither")


@pytest.mark.parametrize("variable", ["ca", "cert", "key"])
def test_missing_file_rejected(environment, pki, tmp_path, variable):
    files = {"ca": pki["ca"], "cert": pki["cert"], "key": pki["key"], variable: tmp_path / "absent.pem"}
    set_tls(environment, "verify_identity", **files)

    message = invalid_configuration_message()

    assert message.startswith(f"GATEHOUSE_MYSQL_TLS_{variable.upper()} is invalid ("), message
    assert f"{tmp_path / 'absent.pem'} does not exist" in message


def test_directory_as_ca_rejected(environment, tmp_path):
    set_tls(environment, "verify_ca", ca=tmp_path)

    assert f"{tmp_path} is not a regular file" in invalid_configuration_message()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_ca_rejected(environment, pki, tmp_path):
    unreadable = tmp_path / "ca.pem"
    unreadable.write_bytes(pki["ca"].read_bytes())
    unreadable.chmod(0)
    set_tls(environment, "verify_ca", ca=unreadable)

    assert f"cannot open {unreadable} to read: Permission denied" in invalid_configuration_message()


@pytest.mark.parametrize("variable", ["ca", "cert"])
def test_file_without_certificate_rejected(environment, pki, variable):
    files = {"ca": pki["ca"], "cert": pki["cert"], "key": pki["key"], variable: pki["not_pem"]}
    set_tls(environment, "verify_identity", **files)

    message = invalid_configuration_message()

    assert message.startswith(f"GATEHOUSE_MYSQL_TLS_{variable.upper()} is invalid ("), message
    assert f"{pki['not_pem']} contains no PEM certificate" in message


@pytest.mark.parametrize("other", ["other_key", "ed25519_key"], ids=["same_type", "other_type"])
def test_key_of_other_certificate_rejected(environment, pki, other):
    set_tls(environment, "required", cert=pki["cert"], key=pki[other])

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_MYSQL_TLS_KEY is invalid ("), message
    assert "is not the private key of the certificate in GATEHOUSE_MYSQL_TLS_CERT" in message


def test_encrypted_key_rejected(environment, pki):
    set_tls(environment, "required", cert=pki["cert"], key=pki["encrypted_key"])

    message = invalid_configuration_message()

    assert f"{pki['encrypted_key']} is encrypted" in message


def test_file_without_key_rejected(environment, pki):
    set_tls(environment, "required", cert=pki["cert"], key=pki["not_pem"])

    message = invalid_configuration_message()

    assert message.startswith("GATEHOUSE_MYSQL_TLS_KEY is invalid ("), message
    assert f"{pki['not_pem']} contains no PEM private key" in message


def test_messages_leave_out_key_contents(environment, pki):
    # The certificate file as the key: OpenSSL fails to read a key from it, and the message names only the path.
    set_tls(environment, "required", cert=pki["cert"], key=pki["cert"])

    message = invalid_configuration_message()

    assert "BEGIN" not in message
    assert pki["key"].read_text().splitlines()[1] not in message


def test_relative_path_made_absolute(environment, pki, monkeypatch):
    monkeypatch.chdir(pki["ca"].parent)
    set_tls(environment, "verify_ca", ca=pki["ca"].name)

    assert load_settings().mysql_tls_ca == pki["ca"]


@pytest.mark.parametrize("variable", ["CA", "CERT", "KEY"])
def test_empty_file_setting_unset(environment, variable):
    environment.setenv(f"GATEHOUSE_MYSQL_TLS_{variable}", "")

    assert getattr(load_settings(), f"mysql_tls_{variable.lower()}") is None


def test_invalid_mode_reported_before_files(environment, pki):
    set_tls(environment, "strict", ca=pki["not_pem"])

    assert invalid_configuration_message().startswith("GATEHOUSE_MYSQL_TLS_MODE is invalid (")
