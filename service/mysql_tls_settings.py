"""The settings of TLS to MySQL: the mode, the CA bundle, and an optional client certificate.

Settings (service.config) inherits these fields, so they are read and validated with
every other GATEHOUSE_* variable. A file that a mode does not use is rejected rather
than ignored, so that no one believes a certificate is checked when it is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings

from service.setting_checks import check_certificate_file, check_client_key, check_readable_file

# The modes as MySQL's --ssl-mode names them, in lower case.
MySQLTLSMode = Literal["disabled", "preferred", "required", "verify_ca", "verify_identity"]
# Modes that check the server's certificate against GATEHOUSE_MYSQL_TLS_CA.
VERIFYING_MODES = frozenset({"verify_ca", "verify_identity"})
# Modes in which a connection fails unless TLS is negotiated.
ENFORCING_MODES = frozenset({"required", *VERIFYING_MODES})
# The modes that use each file setting. A client certificate needs TLS, so the modes that
# may connect without it reject one: a server that requests a client certificate needs TLS anyway.
TLS_FILE_MODES = {
    "mysql_tls_ca": VERIFYING_MODES,
    "mysql_tls_cert": ENFORCING_MODES,
    "mysql_tls_key": ENFORCING_MODES,
}


class MySQLTLSSettings(BaseSettings):
    """The fields and checks of TLS to MySQL, read through service.config.Settings."""

    mysql_tls_mode: MySQLTLSMode = Field(
        "preferred",
        description="disabled, preferred (TLS when the server offers it, no certificate check), required (TLS or "
                    "fail, no certificate check), verify_ca (check the certificate against GATEHOUSE_MYSQL_TLS_CA) "
                    "or verify_identity (also check that it names GATEHOUSE_MYSQL_HOST)",
    )
    # Required for the verify modes, with no fallback to the system's CA store: in verify_ca
    # mode any certificate that a public CA issued, for any name, would pass.
    mysql_tls_ca: Path | None = Field(
        None, validate_default=True,
        description="path of a PEM file with the CA certificates that issued the MySQL server's certificate "
                    "(verify_ca and verify_identity modes)",
    )
    mysql_tls_cert: Path | None = Field(
        None, validate_default=True,
        description="path of a PEM client certificate for servers that request one, with GATEHOUSE_MYSQL_TLS_KEY "
                    "(required, verify_ca and verify_identity modes); unset for none",
    )
    mysql_tls_key: Path | None = Field(
        None, validate_default=True,
        description="path of the PEM private key of GATEHOUSE_MYSQL_TLS_CERT, without a passphrase",
    )

    @field_validator("mysql_tls_ca", "mysql_tls_cert", "mysql_tls_key", mode="before")
    @classmethod
    def _empty_tls_file_as_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("mysql_tls_ca", "mysql_tls_cert", "mysql_tls_key")
    @classmethod
    def _check_tls_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        mode = info.data.get("mysql_tls_mode")
        if mode is None:
            return value  # GATEHOUSE_MYSQL_TLS_MODE itself is invalid and reported first

        name = info.field_name
        if value is None:
            if name == "mysql_tls_ca" and mode in VERIFYING_MODES:
                raise PydanticCustomError("missing", "Field required")
            if name == "mysql_tls_key" and info.data.get("mysql_tls_cert") is not None:
                raise PydanticCustomError("missing", "Field required")
            return None
        if mode not in TLS_FILE_MODES[name]:
            raise PydanticCustomError("not_applicable", f"GATEHOUSE_MYSQL_TLS_MODE is {mode}")

        check_readable_file(value)
        if name in ("mysql_tls_ca", "mysql_tls_cert"):
            check_certificate_file(value)
        else:
            if "mysql_tls_cert" not in info.data:
                return value  # GATEHOUSE_MYSQL_TLS_CERT itself is invalid and reported first
            certificate = info.data["mysql_tls_cert"]
            if certificate is None:
                raise PydanticCustomError("unpaired", "GATEHOUSE_MYSQL_TLS_CERT")
            check_client_key(certificate, value)
        # Not resolve(): Kubernetes mounts Secret entries as symbolic links that each update
        # of the Secret points elsewhere, and the mariadb client reads the files again later.
        return value.absolute()
