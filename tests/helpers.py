"""Helpers shared by the tests: state reset, gunicorn processes, free ports, stopping and starting the servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
import redis
import requests

from service.config import Settings, load_settings
from service.database import connect_args

ROOT = Path(__file__).resolve().parent.parent
# Tables in delete order (children first); roles keep their seeded rows, test-made roles go below.
_TABLES = ("user_roles", "users", "audit_log")


def reset_state(settings: Settings) -> None:
    connection = pymysql.connect(**connect_args(settings))
    try:
        with connection.cursor() as cursor:
            for table in _TABLES:
                cursor.execute(f"DELETE FROM {table}")
            cursor.execute("DELETE FROM roles WHERE name <> 'admin'")
    finally:
        connection.close()
    redis.Redis.from_url(settings.redis_url.get_secret_value()).flushdb()


# Root bypasses file modes, so as root the checks that depend on them run in a forked
# child that has dropped to this user id (nobody on Debian).
UNPRIVILEGED_UID = 65534


@contextmanager
def directory_for_modes(tmp_path: Path) -> Iterator[Path]:
    """Yield a directory where file modes bind: tmp_path, or for root one the unprivileged user can write."""
    if os.geteuid() != 0:
        yield tmp_path
        return

    # pytest's own temporary directories are private to root, so the child could not reach them.
    directory = Path(tempfile.mkdtemp(prefix="gatehouse-modes-"))
    directory.chmod(0o777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def call_under_modes(function: Callable[[], str]) -> str:
    """Return function()'s text as a user whom file modes bind: this process, or for root a forked unprivileged child.

    The child runs only function and exits without pytest's cleanup. An exception in it
    fails the calling test with the child's traceback.
    """
    if os.geteuid() != 0:
        return function()

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(UNPRIVILEGED_UID)
            os.setuid(UNPRIVILEGED_UID)
            report = function()
            status = 0
        except BaseException:
            report = traceback.format_exc()
        finally:
            os.write(write_end, report.encode())
            os._exit(status)

    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


@contextmanager
def captured_logs(*modules: Any) -> Iterator[list[dict[str, Any]]]:
    """Yield the structlog entries that the modules' `log` writes meanwhile.

    structlog.testing.capture_logs alone misses a module logger that an earlier test
    has used, since the configuration caches a bound logger on first use, so each
    module gets a fresh one for the duration.
    """
    import structlog.testing

    saved = [(module, module.log) for module in modules]
    with structlog.testing.capture_logs() as logs:
        for module in modules:
            module.log = structlog.get_logger(module.__name__)
        try:
            yield logs
        finally:
            for module, logger in saved:
                module.log = logger


@contextmanager
def full_tmpfs(directory: Path, size: int = 256 * 1024, left: int = 4096) -> Iterator[Path]:
    """Mount a tmpfs of `size` bytes at directory, filled up but for `left` bytes; skip the test without mount rights."""
    import pytest

    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        with open(directory / "filler", "wb") as filler:
            filler.write(b"\0" * (size - left))
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Limits far above any test's traffic: the tests that exercise rate limits and the login
# delay pass their own values, the others must not trip over the defaults.
RELAXED_LIMITS = {
    "GATEHOUSE_RATE_LIMIT_DEFAULT": "1000000/minute",
    "GATEHOUSE_RATE_LIMIT_LOGIN": "1000000/minute",
    "GATEHOUSE_RATE_LIMIT_LOGIN_ACCOUNT": "1000000/minute",
    "GATEHOUSE_RATE_LIMIT_REGISTER": "1000000/minute",
    "GATEHOUSE_RATE_LIMIT_REFRESH": "1000000/minute",
    "GATEHOUSE_LOGIN_DELAY_AFTER_FAILURES": "100",
}


class Gunicorn:
    """A real gunicorn master started with the project's gunicorn.conf.py."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None, workers: int = 2,
                 app: str = "wsgi:app") -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"gunicorn-{self.port}.log"
        self.env = {
            **os.environ,
            "GATEHOUSE_BIND": f"127.0.0.1:{self.port}",
            "GATEHOUSE_WORKERS": str(workers),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{self.port}"),
            **RELAXED_LIMITS,
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Gunicorn:
        """Start the master and wait until it is ready, stopping it again when it does not get ready."""
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> subprocess.Popen:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", self.app],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        return self.process

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass  # not listening yet, or too busy starting to reply in time
            time.sleep(0.1)
        raise AssertionError(f"gunicorn not ready after {timeout} s:\n{self.output()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def worker_pids(self) -> set[int]:
        """Return the pids of the master's live children, read from /proc."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    def reload(self, workers: int = 2, timeout: float = 20.0) -> set[int]:
        """Send SIGHUP and wait until `workers` new workers replace every old one; return their pids."""
        old_workers = self.worker_pids()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.worker_pids() & old_workers or len(self.worker_pids()) < workers:
            assert time.monotonic() < deadline, f"old workers {old_workers} still running: {self.worker_pids()}"
            time.sleep(0.05)
        return self.worker_pids()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running_replicas(tmp_path_factory, count: int, env: dict[str, str] | None = None) -> Iterator[list[Gunicorn]]:
    """Start `count` gunicorn masters with the same settings, wait until each is ready, and stop them all afterwards."""
    started = [Gunicorn(tmp_path_factory.mktemp(f"replica{index}"), env=env) for index in range(count)]
    for gunicorn in started:
        gunicorn.start()
    try:
        for gunicorn in started:
            gunicorn.wait_ready()
        yield started
    finally:
        for gunicorn in started:
            gunicorn.stop()


def run_as_mysql_root(sql: str) -> str:
    """Run SQL as the root account of the test MariaDB and return the client's tab-separated rows.

    The root client configuration comes from GATEHOUSE_MYSQL_ADMIN_DEFAULTS, which `make test` exports.
    """
    defaults_file = os.environ.get("GATEHOUSE_MYSQL_ADMIN_DEFAULTS")
    if not defaults_file:
        raise RuntimeError(
            "GATEHOUSE_MYSQL_ADMIN_DEFAULTS is not set: run the suite with `make test`, "
            "which exports the root client configuration of the test MariaDB"
        )

    result = subprocess.run(
        ["mariadb", f"--defaults-file={defaults_file}", "-uroot", "--batch", "--skip-column-names",
         "--execute", sql],
        capture_output=True, text=True, timeout=30,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mariadb as root failed with exit code {result.returncode}: {result.stderr.strip()}")

    return result.stdout


def create_user(settings: Settings, email: str, password: str, roles: tuple[str, ...] = ()) -> str:
    """Create an account through the real `gatehouse users create` command; return its id."""
    command = [sys.executable, "-m", "service.cli", "users", "create", "--email", email]
    for role in roles:
        command += ["--role", role]
    result = subprocess.run(command, input=password + "\n", capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    # Log lines go to stderr, so stdout is the id alone.
    return result.stdout.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Enough fresh connections that both workers of a gunicorn master serve some of them.
PROBES = 16


def probe_statuses(url: str, path: str, token: str | None = None, *, client_ip: str | None = None) -> list[int]:
    """Send PROBES GET requests, each on a new connection so both workers serve some; return the statuses.

    client_ip goes in X-Forwarded-For, which counts only when the server trusts one proxy hop.
    """
    headers = {"Connection": "close"}
    if token is not None:
        headers.update(bearer(token))
    if client_ip is not None:
        headers["X-Forwarded-For"] = client_ip
    return [requests.get(f"{url}{path}", headers=headers, timeout=10).status_code for _ in range(PROBES)]


def login(url: str, email: str, password: str, headers: dict[str, str] | None = None) -> dict:
    """Log in through a running server and return the token pair."""
    response = requests.post(f"{url}/v1/auth/login", json={"email": email, "password": password}, headers=headers,
                             timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def register(url: str, email: str, password: str) -> str:
    """Register an account through a running server and return its id."""
    response = requests.post(f"{url}/v1/auth/register", json={"email": email, "password": password}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def stop_redis(settings: Settings) -> None:
    """Stop the test Redis, saving its data first."""
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        client.shutdown(save=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits


def start_services() -> None:
    """Start the test MariaDB and Redis again (running ones are reused) through scripts/services.sh."""
    profile = Path(os.environ["GATEHOUSE_STATE_DIR"]).name
    # services.sh takes the ports from GATEHOUSE_<PROFILE>_*_PORT, which pytest run outside
    # `make test` may lack. Passing the ports of this run's settings keeps a restart on them.
    redis_port = redis.Redis.from_url(os.environ["GATEHOUSE_REDIS_URL"]).connection_pool.connection_kwargs["port"]
    env = {**os.environ, f"GATEHOUSE_{profile.upper()}_MYSQL_PORT": os.environ["GATEHOUSE_MYSQL_PORT"],
           f"GATEHOUSE_{profile.upper()}_REDIS_PORT": str(redis_port)}
    subprocess.run([str(ROOT / "scripts" / "services.sh"), "start", profile], check=True, timeout=60,
                   capture_output=True, env=env)


def restart_redis(settings: Settings) -> None:
    stop_redis(settings)
    start_services()


def wait_until(condition: Callable[[], bool], timeout: float, failure: str, interval: float = 0.05) -> None:
    """Call condition every interval seconds until it returns true; fail with failure after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{failure} (waited {timeout} s)"
        time.sleep(interval)


def redis_answers() -> bool:
    client = redis.Redis.from_url(os.environ["GATEHOUSE_REDIS_URL"], socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def stop_test_redis() -> None:
    """Stop the test Redis with SIGTERM (it saves its data first) and wait until it is gone."""
    pid_file = Path(os.environ["GATEHOUSE_STATE_DIR"]) / "redis" / "redis-server.pid"
    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    # Redis removes its pid file on a clean exit, while a zombie process would still pass kill -0.
    wait_until(lambda: not pid_file.exists() and not redis_answers(), 30, "the test Redis still runs after SIGTERM")


def start_test_redis() -> None:
    start_services()
    assert redis_answers()


def mariadb_pid() -> int:
    """Return the pid of the test MariaDB, which `make test` started."""
    state_dir = Path(os.environ["GATEHOUSE_STATE_DIR"])
    return int((state_dir / "mariadb" / "mariadbd.pid").read_text().strip())


def mariadb_answers() -> bool:
    settings = {**connect_args(load_settings()), "connect_timeout": 1, "read_timeout": 1}
    try:
        pymysql.connect(**settings).close()
    except pymysql.err.MySQLError:
        return False
    return True


def stop_test_mariadb() -> None:
    """Stop the test MariaDB with SIGTERM (a clean shutdown) and wait until it is gone."""
    pid_file = Path(os.environ["GATEHOUSE_STATE_DIR"]) / "mariadb" / "mariadbd.pid"
    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    wait_until(lambda: not pid_file.exists() and not mariadb_answers(), 60,
               "the test MariaDB still runs after SIGTERM")


def start_test_mariadb() -> None:
    start_services()
    assert mariadb_answers()


def scrape(url: str) -> dict[str, float]:
    """Return every sample of /metrics by its name and labels."""
    samples = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def assert_pool_wait_problem(response: Any, elapsed: float, wait_seconds: float, code: str) -> None:
    """Fail unless a request that found its pool busy waited about wait_seconds, then got a 503 problem with code."""
    assert response.status_code == 503
    assert elapsed >= wait_seconds * 0.8
    assert elapsed < 5
    assert response.mimetype == "application/problem+json"
    assert response.headers.get("Retry-After", "").isdigit()
    assert int(response.headers["Retry-After"]) >= 1
    problem = response.get_json()
    assert problem["code"] == code
    assert problem["status"] == 503


def load_openapi(document: dict) -> Any:
    """Load an /openapi.json document for assert_documented."""
    import schemathesis

    return schemathesis.openapi.from_dict(document)


def assert_documented(schema: Any, path: str, method: str, response: Any,
                      path_parameters: dict[str, str] | None = None) -> None:
    """Fail unless the operation lists the response's status, media type, body and required headers.

    `path` is the document's path template, `path_parameters` the values sent in it, and
    `response` a Flask test or requests response. The checks are schemathesis's own, as
    its property tests run them.
    """
    from schemathesis.specs.openapi import checks

    case = schema[path][method].Case(path_parameters=path_parameters or {})
    case.validate_response(response, checks=[checks.status_code_conformance, checks.content_type_conformance,
                                             checks.response_headers_conformance,
                                             checks.response_schema_conformance])
