"""Building blocks of the backup commands: client programs, the manifest, checksums and key counts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import redis
from redis.connection import parse_url

from service import redis_store
from service.config import Settings
from service.database import connect, connect_args
from service.maintenance.jobs import JobFailed
from service.maintenance.option_files import mysql_option
from service.maintenance.scratch import find_program
from service.maintenance.tool_output import mariadb_client_error
from service.mysql_tls import tls_failure
from service.mysql_tls_settings import ENFORCING_MODES

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
DUMP_NAME = "mysql.sql"
RDB_NAME = "redis.rdb"
# The dump program: MariaDB's, or MySQL's where only MySQL's client is installed.
DUMP_PROGRAMS = ("mariadb-dump", "mysqldump")
# Expiry times are counted per hour, so the manifest stays small with millions of keys.
EXPIRY_BUCKET_SECONDS = 3600
# Client programs get this long before the backup is declared failed.
COMMAND_TIMEOUT_SECONDS = 3600

_INSERT = re.compile(r"^INSERT INTO `((?:[^`]|``)+)` VALUES ")
_CREATE = re.compile(r"^CREATE TABLE `((?:[^`]|``)+)` \(")


class BackupFailed(JobFailed):
    """A backup could not be made, read or restored; the message names the step and the cause."""


def run(command: list[str], *, env: dict[str, str] | None = None, stdin: Path | None = None,
        stdout: Path | None = None, describe_failure: Callable[[str, str], str] | None = None) -> str:
    """Run a program; return its standard output, or raise BackupFailed with its exit status.

    The error is logged and recorded in Redis. describe_failure(stdout, stderr) returns
    the part of the program's output that goes into it, and stdout is empty when it went
    to a file. Without describe_failure, the end of stderr goes in. mariadb-dump and
    redis-cli write their connection and server errors there, and the data they copy
    only to stdout.
    """
    with (open(stdin, "rb") if stdin else open(os.devnull, "rb")) as input_file, \
            (open(stdout, "wb") if stdout else tempfile.TemporaryFile()) as output_file:
        try:
            result = subprocess.run(command, stdin=input_file, stdout=output_file, stderr=subprocess.PIPE,
                                    env={**os.environ, **(env or {})}, timeout=COMMAND_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise BackupFailed(f"{Path(command[0]).name} did not finish within {COMMAND_TIMEOUT_SECONDS} s") from None

        output = ""
        if not stdout:
            output_file.seek(0)
            output = output_file.read().decode(errors="replace")
        if result.returncode != 0:
            error_output = result.stderr.decode(errors="replace")
            detail = (describe_failure(output, error_output) if describe_failure
                      else error_output.strip()[-2000:])
            raise BackupFailed(f"{Path(command[0]).name} {_exit_status(result.returncode)}: "
                               f"{detail or 'no error message'}")
        return output


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with {returncode}"


def tool_version(program: str) -> str:
    """Return the first line of `program --version`."""
    return run([find_program(program), "--version"]).strip().splitlines()[0]


def dump_program() -> str:
    """Return the path of mariadb-dump, or of mysqldump where only MySQL's client is installed."""
    return find_program(*DUMP_PROGRAMS)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mysql_tls_options(settings: Settings) -> str:
    """Return the option-file lines that give the mariadb 10.11 clients the TLS of GATEHOUSE_MYSQL_TLS_MODE.

    With `ssl-ca` the clients check the certificate chain, and `ssl-verify-server-cert`
    adds the host name. Their TLS is on by default and falls back to plain text when the
    server offers none, as in preferred mode.
    NOTE: only `ssl-verify-server-cert` makes them refuse a server without TLS, and no
    option requires TLS without checking the host name. So mysql_defaults_file first
    connects with PyMySQL, which does require it. That check does not catch an attacker
    on the network path who strips TLS from the client's own connection in the required
    and verify_ca modes. MySQL's mysqldump, the fallback of DUMP_PROGRAMS, was not
    tried with these options.
    """
    mode = settings.mysql_tls_mode
    if mode == "disabled":
        return "skip-ssl\n"
    if mode == "preferred":
        return ""

    lines = "ssl\n"
    if settings.mysql_tls_ca is not None:
        lines += mysql_option("ssl-ca", settings.mysql_tls_ca)
    if mode == "verify_identity":
        lines += "ssl-verify-server-cert\n"
    if settings.mysql_tls_cert is not None:
        lines += mysql_option("ssl-cert", settings.mysql_tls_cert) + mysql_option("ssl-key", settings.mysql_tls_key)
    return lines


def connect_to_mysql(settings: Settings) -> pymysql.connections.Connection:
    """Open a PyMySQL connection with the settings; raise BackupFailed, with the cause and what to change, when it fails.

    A job that cannot reach MySQL failed (job_failed with the reason), rather than crashed
    with a stack trace: wrong password, server down, or TLS that the mode requires and did
    not get. pymysql's messages name the user and host, never the password.
    """
    try:
        return connect(**connect_args(settings))
    except pymysql.err.OperationalError as exc:
        failure = tls_failure(exc)
        if failure is not None:
            raise BackupFailed(f"TLS to MySQL failed ({failure.reason}): {failure.hint}") from None
        message = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise BackupFailed(f"cannot connect to MySQL at {settings.mysql_host}:{settings.mysql_port}: {message}; "
                           "check GATEHOUSE_MYSQL_HOST, GATEHOUSE_MYSQL_PORT, GATEHOUSE_MYSQL_USER, "
                           "GATEHOUSE_MYSQL_PASSWORD and GATEHOUSE_MYSQL_DATABASE") from None


def check_server_tls(settings: Settings) -> None:
    """Raise BackupFailed unless a PyMySQL connection with the TLS settings succeeds, in the modes that require TLS."""
    if settings.mysql_tls_mode not in ENFORCING_MODES:
        return

    connect_to_mysql(settings).close()


@contextmanager
def mysql_defaults_file(settings: Settings) -> Iterator[Path]:
    """Yield a client option file with the connection and TLS settings, readable by the owner only.

    The password goes into the file rather than the command line, where any user of the
    machine could read it from the process list. Every value is quoted, so a password
    with `#` or surrounding spaces reaches the server unchanged. In the modes that
    require TLS, the server's TLS is checked first (see mysql_tls_options).
    """
    check_server_tls(settings)
    with tempfile.TemporaryDirectory(prefix="gatehouse-mysql-") as directory:
        path = Path(directory) / "client.cnf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as options:
            options.write(
                "[client]\n"
                + mysql_option("host", settings.mysql_host)
                + mysql_option("port", settings.mysql_port)
                + mysql_option("user", settings.mysql_user)
                + mysql_option("password", settings.mysql_password.get_secret_value())
                + "protocol=TCP\n"
                + mysql_tls_options(settings)
            )
        yield path


def count_dump_rows(dump: Path) -> dict[str, int]:
    """Count the rows of each table in a dump written with one INSERT per row."""
    rows: Counter[str] = Counter()
    with dump.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if created := _CREATE.match(line):
                rows[created.group(1).replace("``", "`")] += 0
            elif inserted := _INSERT.match(line):
                rows[inserted.group(1).replace("``", "`")] += 1
    return dict(sorted(rows.items()))


def load_dump(defaults_file: Path, database: str, dump: Path) -> None:
    """Run the statements of a dump against one database with the mariadb client."""
    run([find_program("mariadb"), f"--defaults-file={defaults_file}", "--batch", database], stdin=dump,
        describe_failure=lambda _stdout, stderr: mariadb_client_error(stderr))


def redis_cli_args(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """Return redis-cli's arguments to reach the master and the environment that carries the password.

    In sentinel mode the Sentinels name the master at the moment of the call, so a
    backup reads the master's data even after a failover.
    """
    if settings.redis_mode == "sentinel":
        sentinel = redis_store.create_sentinel(settings)
        try:
            host, port = sentinel.discover_master(settings.redis_sentinel_service)
        finally:
            sentinel.close()
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        args = ["-h", host, "-p", str(port)]
    else:
        assert settings.redis_url is not None  # config.py requires it in standalone mode
        options = parse_url(settings.redis_url.get_secret_value())
        if options.get("path"):
            args = ["-s", options["path"]]
        else:
            args = ["-h", options.get("host", "127.0.0.1"), "-p", str(options.get("port", 6379))]
        if options.get("username"):
            args += ["--user", options["username"]]
        password = options.get("password")
    # REDISCLI_AUTH keeps the password out of the process list.
    env = {"REDISCLI_AUTH": password} if password else {}
    return args, env


def redis_db(settings: Settings) -> int:
    """Return the number of the Redis database that the service uses."""
    if settings.redis_mode == "sentinel":
        return settings.redis_db

    assert settings.redis_url is not None
    return int(parse_url(settings.redis_url.get_secret_value()).get("db", 0) or 0)


def key_prefix(key: str) -> str:
    """Return the first two colon-separated parts of a key: gh:sess:abc:tokens counts as gh:sess."""
    return ":".join(key.split(":", 2)[:2])


def count_keys(client: redis.Redis, batch_size: int = 1000) -> dict[str, dict[str, Any]]:
    """Count the keys of a database per prefix, with their expiry times bucketed by the hour.

    Returns {prefix: {"keys": n, "persistent": n, "expiring": {bucket_start: n}}}.
    """
    counts: dict[str, dict[str, Any]] = {}
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.pexpiretime(key)
        for key, expire_ms in zip(batch, pipe.execute(), strict=True):
            if expire_ms == -2:  # expired between SCAN and PEXPIRETIME
                continue
            entry = counts.setdefault(key_prefix(key), {"keys": 0, "persistent": 0, "expiring": Counter()})
            entry["keys"] += 1
            if expire_ms == -1:
                entry["persistent"] += 1
            else:
                bucket = int(expire_ms // 1000 // EXPIRY_BUCKET_SECONDS * EXPIRY_BUCKET_SECONDS)
                entry["expiring"][str(bucket)] += 1
        batch.clear()

    for key in client.scan_iter(count=batch_size):
        batch.append(key)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return {prefix: {**entry, "expiring": dict(sorted(entry["expiring"].items()))}
            for prefix, entry in sorted(counts.items())}


def expected_key_range(entry: dict[str, Any], loaded_at: float, counted_at: float) -> tuple[int, int]:
    """Return how many keys of one prefix may be left after loading at loaded_at and counting until counted_at.

    A key whose expiry bucket ends before the load is gone, and one whose bucket
    starts after the count remains. Keys in the buckets in between may be either.
    """
    low = high = entry["persistent"]
    for bucket, count in entry["expiring"].items():
        start = int(bucket)
        if start >= counted_at:
            low += count
        if start + EXPIRY_BUCKET_SECONDS > loaded_at:
            high += count
    return low, high


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json through a temporary file, so a crash never leaves half a manifest."""
    partial = directory / (MANIFEST_NAME + ".partial")
    try:
        partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        partial.replace(directory / MANIFEST_NAME)
    except OSError as exc:
        raise BackupFailed(f"cannot write {partial}: {exc.strerror or exc}") from None


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupFailed(f"{path} is missing: {directory} is not a complete backup") from None
    except ValueError as exc:
        raise BackupFailed(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BackupFailed(f"{path} is not a Gatehouse backup manifest of format {MANIFEST_FORMAT}")
    return manifest


def utc_stamp(moment: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(moment if moment is not None else time.time()))
