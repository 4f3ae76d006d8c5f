"""TLS to MySQL: the pymysql arguments of each mode, one SSLContext per process, and handshake failures.

PyMySQL 1.2 behaves as follows (pymysql/connections.py): with ssl_disabled it never
uses TLS. Without any TLS argument it uses TLS when the server offers it and checks no
certificate (service.database shares one context for that). With an SSLContext as
`ssl` it sets CLIENT_SSL and fails with error 2026 when the server does not offer TLS,
and it passes the host argument as server_hostname, so the context's check_hostname
decides whether the name is checked.
"""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import structlog
from pymysql.constants import CR

from service.config import Settings
from service.mysql_tls_settings import ENFORCING_MODES

log = structlog.get_logger(__name__)

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the certificate
# is valid but names another host than GATEHOUSE_MYSQL_HOST.
_NAME_MISMATCH_CODES = frozenset({62, 64})
# Errors of a TLS connection that ended without a TLS error, as any lost connection does.
# NOTE: under TLS 1.3 a server that rejects the client certificate may close the
# connection before the client reads its alert. That looks like a lost connection and
# gets no hint, so the start-up check retries it, and a later attempt gets the alert.
_CONNECTION_LOST = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
# One mysql_tls_failed line per process in this many seconds; the next line counts the others.
FAILURE_LOG_INTERVAL_SECONDS = 60.0


def tls_connect_args(settings: Settings) -> dict[str, Any]:
    """Return the pymysql connect arguments for the TLS mode that GATEHOUSE_MYSQL_TLS_MODE sets."""
    mode = settings.mysql_tls_mode
    if mode == "disabled":
        return {"ssl_disabled": True}
    if mode == "preferred":
        return {}
    return {"ssl": client_context(settings)}


def client_context(settings: Settings) -> ssl.SSLContext:
    """Return this process's SSLContext for the enforcing modes, built on the first call.

    Every connection with the same settings shares the context, so the CA certificates
    are loaded once per process and not once per connection. The files are read then
    and not again, so a changed CA or client certificate takes effect after a restart.
    """
    if settings.mysql_tls_mode not in ENFORCING_MODES:
        raise ValueError(f"GATEHOUSE_MYSQL_TLS_MODE {settings.mysql_tls_mode} uses no context of its own")

    return _build_context(settings.mysql_tls_mode, settings.mysql_tls_ca, settings.mysql_tls_cert,
                          settings.mysql_tls_key)


@functools.cache
def _build_context(mode: str, ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    # SSLContext() rather than create_default_context(), which would load the system's CA
    # store, and in Python 3.13 and later sets VERIFY_X509_STRICT, which self-signed
    # certificates that MySQL generates fail (PyMySQL clears it for the same reason).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mode == "required":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=ca)
        context.check_hostname = mode == "verify_identity"
        context.verify_mode = ssl.CERT_REQUIRED
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


@dataclass(frozen=True)
class TLSFailure:
    """The cause of a failed TLS connection to MySQL, and the setting to change.

    No retry helps with any of them: the certificates or the server's TLS settings must
    change first.
    """

    reason: str
    hint: str


def tls_failure(error: BaseException) -> TLSFailure | None:
    """Return the TLS failure behind a pymysql connect error, or None when TLS was not the cause."""
    if not isinstance(error, pymysql.err.OperationalError):
        return None

    if error.args and error.args[0] == CR.CR_SSL_CONNECTION_ERROR:
        return TLSFailure(
            reason=str(error.args[1]) if len(error.args) > 1 else "the server offers no TLS",
            hint="GATEHOUSE_MYSQL_TLS_MODE requires TLS, but the server offers none (or something on the way "
                 "removed the offer): enable TLS on the server with its ssl_cert and ssl_key",
        )

    # pymysql wraps an OSError during the handshake in error 2003 and keeps it as
    # original_exception. One while reading, such as the server's alert that it rejects the
    # client certificate, becomes error 2013, raised while handling the OSError.
    cause = getattr(error, "original_exception", None) or error.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code in _NAME_MISMATCH_CODES:
            hint = ("the server's certificate does not name GATEHOUSE_MYSQL_HOST: set GATEHOUSE_MYSQL_HOST to a "
                    "name the certificate lists, or set GATEHOUSE_MYSQL_TLS_MODE to verify_ca")
        else:
            hint = ("the server's certificate did not pass the check against GATEHOUSE_MYSQL_TLS_CA: set it to the "
                    "CA bundle that issued the server's certificate, and check the certificate's validity period")
        return TLSFailure(reason=f"certificate verify failed: {cause.verify_message}", hint=hint)
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, _CONNECTION_LOST):
        return TLSFailure(
            reason=f"TLS handshake failed: {cause.reason or cause}",
            hint="check that the server accepts TLS 1.2 or later and, when it requests a client certificate, that "
                 "its ssl_ca trusts the issuer of GATEHOUSE_MYSQL_TLS_CERT",
        )
    return None


class _FailureLog:
    """A rate limit on mysql_tls_failed lines: one per interval, counting the failures left out before it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._logged_at: float | None = None
        self._left_out = 0

    def record(self, failure: TLSFailure, host: str | None, port: int | None) -> None:
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < self.interval:
            self._left_out += 1
            return

        log.error("mysql_tls_failed", host=host, port=port, reason=failure.reason, hint=failure.hint,
                  failures_not_logged=self._left_out)
        self._logged_at = now
        self._left_out = 0


failure_log = _FailureLog(FAILURE_LOG_INTERVAL_SECONDS)
