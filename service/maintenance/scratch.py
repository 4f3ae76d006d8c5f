"""Throw-away MariaDB and Redis servers in a temporary directory, for backup verification.

Both listen on a Unix socket only, so they need no free port and nothing outside
the machine can reach them. They run as child processes and are stopped, and
their data deleted, when the context ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import pymysql
import pymysql.cursors
import redis

from service.maintenance.jobs import JobFailed
from service.maintenance.option_files import mysql_option, redis_config_string
from service.maintenance.tool_output import redact_quoted

# Debian installs mariadbd in /usr/sbin, often missing from PATH.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")
# The Debian 12 package of each program that the backup commands run.
_PACKAGES = {
    "mariadb": "mariadb-client",
    "mariadb-dump": "mariadb-client",
    "mysqldump": "mariadb-client",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "redis-cli": "redis-tools",
    "redis-check-rdb": "redis-tools",
    "redis-server": "redis-server",
}
# sun_path of a Unix socket address has room for 108 bytes on Linux, the terminating NUL included.
_MAX_SOCKET_PATH_BYTES = 107


class ScratchServerFailed(JobFailed):
    """A scratch server could not be started; the message includes the end of its log."""


class ProgramNotFound(JobFailed):
    """A program that a backup command runs is not installed; the message names it and its package."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))


def _missing_programs_message(missing: list[tuple[str, ...]]) -> str:
    described = [names[0] if len(names) == 1 else f"{names[0]} (or {' or '.join(names[1:])})" for names in missing]
    packages = sorted({_PACKAGES.get(names[0], names[0]) for names in missing})
    pronoun = "it" if len(missing) == 1 else "them"
    return (f"{', '.join(described)} not found on PATH or in {', '.join(_EXTRA_PATH)}: "
            f"install {pronoun} (Debian package{'s' if len(packages) > 1 else ''} {', '.join(packages)})")


def find_program(name: str, *alternatives: str) -> str:
    """Return the path of the first of name and alternatives that is installed, or raise ProgramNotFound."""
    for candidate in (name, *alternatives):
        if found := _which(candidate):
            return found
    raise ProgramNotFound(_missing_programs_message([(name, *alternatives)]))


def require_programs(*programs: str | tuple[str, ...]) -> None:
    """Raise ProgramNotFound naming every missing program; a tuple means that any one of its names will do."""
    wanted = [(program,) if isinstance(program, str) else program for program in programs]
    missing = [names for names in wanted if not any(_which(name) for name in names)]
    if missing:
        raise ProgramNotFound(_missing_programs_message(missing))


def _check_socket_path(socket: Path) -> None:
    if len(os.fsencode(socket)) > _MAX_SOCKET_PATH_BYTES:
        raise ScratchServerFailed(
            f"the scratch server's socket path {socket} is longer than {_MAX_SOCKET_PATH_BYTES} bytes, "
            "the limit of a Unix socket address: set TMPDIR to a shorter directory"
        )


def _log_tail(path: Path, lines: int = 15, clean: Callable[[str], str] = str) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(clean(line) for line in path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen | None, timeout: float, *, at_once: bool = False) -> None:
    """Stop a server with SIGTERM, or with SIGKILL after timeout seconds or at_once, and reap it.

    Any exception while waiting, such as JobTerminated from a signal handler, kills the
    server before it propagates, so the caller can delete the server's files next.
    """
    if process is None or process.poll() is not None:
        return
    if at_once:
        process.kill()
        process.wait()
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise


def _install_mariadb(defaults_file: Path, timeout: float) -> None:
    """Run mariadb-install-db in a process group of its own, and kill the whole group if it is interrupted.

    The script runs a bootstrap mariadbd from subshells. Killing only the script, as
    subprocess.run does on an exception, would leave that server writing into a data
    directory that the caller deletes next.
    """
    command = [find_program("mariadb-install-db"), f"--defaults-file={defaults_file}",
               "--auth-root-authentication-method=normal", "--skip-test-db"]
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as process:
        try:
            _, stderr = process.communicate(timeout=timeout)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise ScratchServerFailed(f"mariadb-install-db did not finish within {timeout} s") from None
            raise
    if process.returncode != 0:
        raise ScratchServerFailed(f"mariadb-install-db failed:\n{stderr[-2000:]}")


class _ScratchServer:
    """A server process of a job's own, used as a context manager: started on entry, stopped on exit."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, *, at_once: bool = False) -> None:
        """Stop the server, with SIGKILL at once when at_once: its data is thrown away either way."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        # A start that fails or is interrupted stops the server: __exit__ runs only after a successful start.
        try:
            return self.start()
        except BaseException:
            self.stop(at_once=True)
            raise

    def __exit__(self, _type: type[BaseException] | None, _value: BaseException | None,
                 _traceback: TracebackType | None) -> None:
        # A failed or stopped job does not wait for a graceful shutdown. In one test run
        # MariaDB did not stop within 60 s of SIGTERM while it loaded a dump, which is
        # longer than a pod's default grace period of 30 s.
        self.stop(at_once=_type is not None)


class ScratchRedis(_ScratchServer):
    """A redis-server with no persistence, optionally loading an RDB file at start."""

    def __init__(self, workdir: Path, rdb: Path | None = None) -> None:
        self.dir = workdir / "redis"
        self.socket = self.dir / "redis.sock"
        self._rdb = rdb
        self._log = self.dir / "redis.log"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), db=db, decode_responses=True, socket_timeout=30)

    def start(self, timeout: float = 30.0) -> Self:
        _check_socket_path(self.socket)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._rdb is not None:
            shutil.copyfile(self._rdb, self.dir / "dump.rdb")
        config = self.dir / "redis.conf"
        config.write_text(
            "port 0\n"
            f"unixsocket {redis_config_string(self.socket)}\n"
            "unixsocketperm 700\n"
            f"dir {redis_config_string(self.dir)}\n"
            "dbfilename dump.rdb\n"
            f"logfile {redis_config_string(self._log)}\n"
            'save ""\n'
            "appendonly no\n"
            "daemonize no\n"
        )
        self._process = subprocess.Popen([find_program("redis-server"), str(config)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise ScratchServerFailed(f"scratch redis-server exited with {self._process.returncode}:\n"
                                          f"{self._safe_log_tail()}")
            try:
                # A server still loading the RDB returns a LOADING error (ResponseError).
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.ResponseError, FileNotFoundError):
                pass
            if time.monotonic() > deadline:
                raise ScratchServerFailed(f"scratch redis-server did not respond to PING within {timeout} s:\n"
                                          f"{self._safe_log_tail()}")
            time.sleep(0.05)

    def _safe_log_tail(self) -> str:
        # Loading errors can quote a key name (`RDB has duplicated key '...'`), which contains ids.
        return _log_tail(self._log, clean=redact_quoted)

    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self, *, at_once: bool = False) -> None:
        _stop(self._process, timeout=30, at_once=at_once)


class ScratchMariaDB(_ScratchServer):
    """A mariadbd with a fresh data directory and a root account reachable through its socket."""

    def __init__(self, workdir: Path, server_options: str = "") -> None:
        """Prepare a server in workdir; server_options are more lines for its [mysqld] section."""
        self.dir = workdir / "mariadb"
        self._server_options = server_options
        self.socket = self.dir / "mariadbd.sock"
        self.defaults_file = self.dir / "my.cnf"
        self._log = self.dir / "error.log"
        self._process: subprocess.Popen | None = None

    def connect(self, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(unix_socket=str(self.socket), user="root", database=database, charset="utf8mb4",
                               autocommit=True, cursorclass=pymysql.cursors.DictCursor)

    def start(self, timeout: float = 60.0) -> Self:
        _check_socket_path(self.socket)
        data_dir = self.dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        # user=root is required when the server runs as root; skip-networking keeps it off TCP.
        server_user = "user=root\n" if os.geteuid() == 0 else ""
        # The paths come from TMPDIR, so they are quoted like any other value.
        self.defaults_file.write_text(
            "[mysqld]\n"
            f"{server_user}"
            + mysql_option("datadir", data_dir)
            + mysql_option("socket", self.socket)
            + mysql_option("pid-file", self.dir / "mariadbd.pid")
            + mysql_option("log-error", self._log)
            + "skip-networking\n"
            "skip-name-resolve\n"
            "character-set-server=utf8mb4\n"
            "collation-server=utf8mb4_unicode_ci\n"
            "innodb_buffer_pool_size=32M\n"
            "innodb_log_file_size=16M\n"
            + self._server_options
            + "[client]\n"
            + mysql_option("socket", self.socket)
            + "user=root\n"
        )
        _install_mariadb(self.defaults_file, timeout)

        self._process = subprocess.Popen([find_program("mariadbd"), f"--defaults-file={self.defaults_file}"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise ScratchServerFailed(f"scratch mariadbd exited with {self._process.returncode}:\n"
                                          f"{_log_tail(self._log)}")
            try:
                self.connect().close()
                return self
            except pymysql.err.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise ScratchServerFailed(f"scratch mariadbd did not accept connections within {timeout} s:\n"
                                          f"{_log_tail(self._log)}")
            time.sleep(0.05)

    def stop(self, *, at_once: bool = False) -> None:
        _stop(self._process, timeout=60, at_once=at_once)
