"""Checks of settings that reach beyond the value itself, such as whether a path can be written.

service.config calls them from its validators, so a failure becomes a ValueError that
names the variable in the one-line start-up error.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


def log_lock_file(log_file: Path) -> Path:
    """Return the lock file that concurrent-log-handler keeps beside a log file: .__NAME.lock.

    NAME is the file name without a final ".log", as the handler's baseLockFilename
    (concurrent-log-handler 0.9.31) builds it.
    """
    name = log_file.name.removesuffix(".log")
    return log_file.with_name(f".__{name}.lock")


def check_can_create_file(directory: Path) -> None:
    """Raise ValueError unless this process can create a file in directory.

    The check creates a temporary file because os.access() reports directories such
    as /sys as writable for root, although creating a file there fails. TemporaryFile
    deletes the file before it returns.
    """
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ValueError(f"cannot create a file in directory {directory}: {exc.strerror}") from None


def check_can_open(path: Path, flags: int) -> None:
    """Raise ValueError when path exists but is not a regular file or does not open with the os.open flags."""
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file")

    try:
        os.close(os.open(path, flags))
    except OSError as exc:
        raise ValueError(f"cannot open {path} to write: {exc.strerror}") from None


def check_readable_file(path: Path) -> None:
    """Raise ValueError unless path is a regular file that this process can open to read."""
    try:
        is_file = path.is_file()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not is_file:
        problem = "is not a regular file" if path.exists() else "does not exist"
        raise ValueError(f"{path} {problem}")

    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        raise ValueError(f"cannot open {path} to read: {exc.strerror}") from None


def check_certificate_file(path: Path) -> None:
    """Raise ValueError unless OpenSSL loads at least one certificate from the PEM file at path.

    load_verify_locations() parses the certificates of the file and skips everything else.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"{path} contains no PEM certificate that OpenSSL can load{_reason(exc)}") from None


class _EncryptedKey(Exception):
    """OpenSSL asked for the passphrase of a private key."""


def _reject_passphrase() -> str:
    raise _EncryptedKey


def check_client_key(certificate: Path, key: Path) -> None:
    """Raise ValueError unless key is an unencrypted PEM private key that matches the certificate.

    Without the passphrase callback, OpenSSL would prompt for a passphrase on the terminal.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(certificate, key, password=_reject_passphrase)
    except _EncryptedKey:
        raise ValueError(f"{key} is encrypted: give the key without a passphrase, in a file only this user "
                         "can read") from None
    except ssl.SSLError as exc:
        # NO_CERTIFICATE_ASSIGNED: the key loaded, but is of another type than the
        # certificate's (an Ed25519 key beside an RSA certificate), so it cannot be its key either.
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise ValueError(f"{key} is not the private key of the certificate in GATEHOUSE_MYSQL_TLS_CERT") from None
        raise ValueError(f"{key} contains no PEM private key that OpenSSL can load{_reason(exc)}") from None


def _reason(error: ssl.SSLError) -> str:
    # OpenSSL's short reason such as NO_CERTIFICATE_OR_CRL_FOUND, which a failed PEM read lacks.
    return f" ({error.reason})" if error.reason else ""


# Query options of GATEHOUSE_REDIS_URL that would replace what Gatehouse sets on its pools,
# with the variable that sets each, or None where the code sets it: redis-py's from_url()
# lets the URL's options win over the caller's. A socket timeout from the URL would also
# cut the change listener's idle subscription, which runs without one.
URL_OPTIONS_SET_BY_GATEHOUSE = {
    "socket_timeout": "GATEHOUSE_REDIS_SOCKET_TIMEOUT",
    "socket_connect_timeout": "GATEHOUSE_REDIS_CONNECT_TIMEOUT",
    "max_connections": "GATEHOUSE_REDIS_POOL_SIZE",
    "timeout": "GATEHOUSE_REDIS_POOL_WAIT_SECONDS",
    "health_check_interval": None,
    "decode_responses": None,
    # Chosen by the URL's scheme: redis://, rediss:// or unix://.
    "connection_class": None,
}


def check_redis_url(url: str) -> None:
    """Raise ValueError unless redis-py builds a connection from url as service.redis_store does.

    redis-py parses the URL, so its rules apply; the connection object is built without
    connecting, which also rejects query options that no connection class takes. The
    message never contains the URL's user name or password.
    """
    # Imported here because the gunicorn master must not import redis before it forks
    # (gunicorn.conf.py), and it loads the settings without this check.
    import redis

    options = parse_qs(urlsplit(url).query, keep_blank_values=True)
    overriding = sorted(option for option in options if option in URL_OPTIONS_SET_BY_GATEHOUSE)
    if overriding:
        option = overriding[0]
        variable = URL_OPTIONS_SET_BY_GATEHOUSE[option]
        if variable:
            raise ValueError(f"query option {option!r} would override {variable}: remove it from the URL and "
                             f"set {variable} instead")
        raise ValueError(f"query option {option!r} is set by Gatehouse itself: remove it from the URL")

    try:
        pool = redis.BlockingConnectionPool.from_url(url)
        pool.make_connection()
    except ValueError as exc:
        raise ValueError(_without_credentials(_url_error(str(exc)), url)) from None
    except TypeError as exc:
        # A query option that redis-py has no parser for reaches the connection class as is.
        unknown = re.search(r"unexpected keyword argument '([^']*)'", str(exc))
        message = f"unknown query option {unknown.group(1)!r}" if unknown else f"a query option is invalid: {exc}"
        raise ValueError(_without_credentials(message, url)) from None
    except redis.RedisError as exc:
        raise ValueError(_without_credentials(str(exc), url)) from None

    options = pool.connection_kwargs
    if pool.connection_class is redis.UnixDomainSocketConnection:
        if not options.get("path"):
            raise ValueError("a unix:// URL needs the socket path, such as unix:///run/redis/redis.sock")
        return

    if options.get("port") == 0:
        raise ValueError("the port must be 1-65535, not 0")
    database = urlsplit(url).path.strip("/")
    if database and "db" not in options:
        raise ValueError("the path after the host must be a database number, such as /0")
    if options.get("db", 0) < 0:
        raise ValueError("the database number must be 0 or more")


def _url_error(message: str) -> str:
    # urllib repeats the text after the last colon of the host, which is the password
    # when the host is missing, as in redis://:PASSWORD/0.
    if message.startswith("Port could not be cast to integer value"):
        return "the port after the host is not a number"
    return message


def _without_credentials(message: str, url: str) -> str:
    """Replace the user name and password of url in message, as written and percent-decoded."""
    authority = url.partition("://")[2]
    for separator in "/?#":
        authority = authority.split(separator, 1)[0]
    user_info, at_sign, _host = authority.rpartition("@")
    if not at_sign:
        return message

    secrets = {user_info, *user_info.split(":", 1)}
    secrets |= {unquote(secret) for secret in secrets}
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        message = message.replace(secret, "**redacted**")
    return message
