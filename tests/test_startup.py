"""run_startup_checks: an error that no retry fixes stops start-up at once, a refused connection is retried.

The cases run against the test MariaDB and Redis, with temporary accounts where a case
needs one, and against a Sentinel of their own on a free port of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from service.config import Settings, load_settings
from service import startup
from service.startup import StartupCheckFailed, run_startup_checks
from tests.helpers import captured_logs, free_port, run_as_mysql_root

# The start-up timeout of the cases that must fail at once, far above the time they may take.
STARTUP_TIMEOUT_SECONDS = 20.0
AT_ONCE_SECONDS = 5.0
PROBE_PASSWORD = "probe-password-3e8a"


def failed_check(timeout: float = STARTUP_TIMEOUT_SECONDS, **overrides) -> tuple[str, float]:
    """Run the start-up checks with the overrides; return the failure message and the seconds they took."""
    settings = load_settings({"startup_timeout_seconds": timeout, **overrides})
    started = time.monotonic()
    with pytest.raises(StartupCheckFailed) as excinfo:
        run_startup_checks(settings)
    return str(excinfo.value), time.monotonic() - started


@pytest.fixture
def mysql_account(settings: Settings) -> Iterator[Callable[..., str]]:
    """Create MariaDB accounts with the given grants on request, and drop them after the test."""
    created = []

    def create(*grants: str) -> str:
        name = f"gh_probe_{uuid.uuid4().hex[:8]}"
        run_as_mysql_root(f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{PROBE_PASSWORD}'")
        created.append(name)
        for grant in grants:
            run_as_mysql_root(f"GRANT {grant} TO '{name}'@'127.0.0.1'")
        return name

    yield create
    for name in created:
        run_as_mysql_root(f"DROP USER '{name}'@'127.0.0.1'")


def redis_url(settings: Settings, user_info: str = "", database: int = 0) -> str:
    """Return the test Redis URL with other credentials and another database number."""
    address = settings.redis_url.get_secret_value().rsplit("@", 1)[1].split("/", 1)[0]
    return f"redis://{user_info}@{address}/{database}" if user_info else f"redis://{address}/{database}"


def test_mysql_wrong_password_fails_at_once():
    message, seconds = failed_check(mysql_password="wrong-password")

    assert "MySQL error 1045" in message
    assert "GATEHOUSE_MYSQL_PASSWORD" in message
    assert seconds < AT_ONCE_SECONDS


def test_mysql_denied_database_fails_at_once():
    # MariaDB reports a database that the account may not see as 1044, whether it exists or not.
    message, seconds = failed_check(mysql_database="gatehouse_absent")

    assert "MySQL error 1044" in message
    assert "GATEHOUSE_MYSQL_DATABASE" in message
    assert seconds < AT_ONCE_SECONDS


def test_mysql_unknown_database_fails_at_once(mysql_account):
    # An account with a global privilege may see every database, so MariaDB reports the missing one as unknown.
    user = mysql_account("SELECT ON *.*")

    message, seconds = failed_check(mysql_user=user, mysql_password=PROBE_PASSWORD, mysql_database="gatehouse_absent")

    assert "MySQL error 1049" in message
    assert "GATEHOUSE_MYSQL_DATABASE" in message
    assert seconds < AT_ONCE_SECONDS


def test_mysql_missing_select_fails_at_once(mysql_account, settings):
    user = mysql_account(f"INSERT ON `{settings.mysql_database}`.*")

    message, seconds = failed_check(mysql_user=user, mysql_password=PROBE_PASSWORD)

    assert "MySQL error 1142" in message
    assert "grant GATEHOUSE_MYSQL_USER" in message
    assert seconds < AT_ONCE_SECONDS


def test_mysql_refused_connection_retried():
    # Nothing listens on a port the kernel just handed out and released.
    message, seconds = failed_check(timeout=1.5, mysql_port=free_port())

    assert message.startswith("mysql unreachable after ")
    assert message.endswith("check GATEHOUSE_MYSQL_HOST and GATEHOUSE_MYSQL_PORT, and that the server runs")
    assert seconds >= 1.5


def test_mysql_over_verified_tls_passes(tls_server):
    run_startup_checks(load_settings({**tls_server.x509_overrides(), "startup_timeout_seconds": 5}))


def test_mysql_without_server_tls_fails_at_once():
    message, seconds = failed_check(mysql_tls_mode="required")

    assert message.startswith("mysql check failed: TLS to MySQL failed ("), message
    assert "GATEHOUSE_MYSQL_TLS_MODE" in message
    assert seconds < AT_ONCE_SECONDS


def test_mysql_certificate_of_other_ca_fails_at_once(tls_server):
    message, seconds = failed_check(**tls_server.overrides("verify_ca",
                                                           mysql_tls_ca=tls_server.other_ca.certificate_path))

    assert "certificate verify failed" in message
    assert "GATEHOUSE_MYSQL_TLS_CA" in message
    assert seconds < AT_ONCE_SECONDS


def test_mysql_host_name_mismatch_fails_at_once(tls_server):
    message, seconds = failed_check(**tls_server.overrides("verify_identity", mysql_host="localhost"))

    assert "certificate is not valid for 'localhost'" in message
    assert "GATEHOUSE_MYSQL_HOST" in message
    assert seconds < AT_ONCE_SECONDS


@pytest.mark.parametrize("user_info, reply", [
    (":wrong-password", "invalid username-password pair"),
    ("nobody:wrong-password", "invalid username-password pair"),
    ("", "uthenticat"),
])
def test_redis_rejected_login_fails_at_once(settings, user_info, reply):
    message, seconds = failed_check(redis_url=redis_url(settings, user_info))

    assert message.startswith("redis check failed: Redis rejected the login ("), message
    assert reply in message
    assert "GATEHOUSE_REDIS_URL" in message
    assert "wrong-password" not in message
    assert seconds < AT_ONCE_SECONDS


def test_redis_database_out_of_range_fails_at_once(settings):
    password = settings.redis_url.get_secret_value().split("@", 1)[0].rsplit(":", 1)[1]

    message, seconds = failed_check(redis_url=redis_url(settings, f":{password}", database=9999))

    assert "DB index is out of range" in message
    assert "GATEHOUSE_REDIS_URL" in message
    assert password not in message
    assert seconds < AT_ONCE_SECONDS


@pytest.fixture
def redis_user_without_ping(settings: Settings) -> Iterator[str]:
    """A Redis ACL user that may log in but run no command, removed after the test."""
    with redis_acl_user(settings, "gh_probe", commands=["-@all", "+hello", "+auth"]) as name:
        yield name


@contextlib.contextmanager
def redis_acl_user(settings: Settings, prefix: str, **rules: list[str]) -> Iterator[str]:
    """Create a Redis ACL user with PROBE_PASSWORD and the given rules, and delete it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(settings.redis_url.get_secret_value())
    admin.acl_setuser(name, enabled=True, passwords=[f"+{PROBE_PASSWORD}"], **rules)
    try:
        yield name
    finally:
        admin.acl_deluser(name)
        admin.close()


def test_redis_denied_command_fails_at_once(settings, redis_user_without_ping):
    message, seconds = failed_check(redis_url=redis_url(settings, f"{redis_user_without_ping}:{PROBE_PASSWORD}"))

    assert "Redis denied a command" in message
    assert seconds < AT_ONCE_SECONDS


@pytest.fixture
def eviction_policy(settings: Settings) -> Iterator[Callable[[str, str], None]]:
    """Return a function that sets the test Redis's maxmemory-policy and maxmemory; the fixture restores both."""
    admin = redis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
    old = admin.config_get("maxmemory*")
    try:
        yield lambda policy, limit: admin.config_set("maxmemory-policy", policy) and admin.config_set("maxmemory", limit)
    finally:
        admin.config_set("maxmemory-policy", old["maxmemory-policy"])
        admin.config_set("maxmemory", old["maxmemory"])
        admin.close()


@pytest.mark.parametrize(("policy", "limit", "warned"), [
    ("allkeys-lru", "1gb", True), ("volatile-ttl", "1gb", True), ("noeviction", "1gb", False),
    # Without a memory limit Redis never evicts, whatever the policy.
    ("allkeys-lru", "0", False),
])
def test_redis_eviction_policy_warned(settings, eviction_policy, policy, limit, warned):
    eviction_policy(policy, limit)

    with captured_logs(startup) as logs:
        run_startup_checks(settings)

    warnings = [entry for entry in logs if entry["event"] == "redis_eviction_policy"]
    assert len(warnings) == int(warned), logs
    if warned:
        assert warnings[0]["policy"] == policy
        assert warnings[0]["log_level"] == "warning"


@pytest.fixture
def redis_user_without_info(settings: Settings) -> Iterator[str]:
    """A Redis ACL user that may run the service's commands but not INFO, as on some managed services."""
    with redis_acl_user(settings, "gh_noinfo", commands=["+@all", "-info"], keys=["~*"], channels=["*"]) as name:
        yield name


def test_redis_denied_info_passes(settings, redis_user_without_info):
    user_settings = load_settings({"redis_url": redis_url(settings, f"{redis_user_without_info}:{PROBE_PASSWORD}")})

    with captured_logs(startup) as logs:
        run_startup_checks(user_settings)

    assert "redis_eviction_policy_unknown" in [entry["event"] for entry in logs]
    assert "startup_checks_passed" in [entry["event"] for entry in logs]


def test_redis_refused_connection_retried():
    message, seconds = failed_check(timeout=1.5, redis_url=f"redis://127.0.0.1:{free_port()}/0")

    assert message.startswith("redis unreachable after ")
    assert message.endswith("check GATEHOUSE_REDIS_URL, and that the server runs")
    assert seconds >= 1.5


def test_rediss_to_plain_redis_hints_at_tls(settings):
    """The test Redis speaks no TLS, so the client's handshake goes unanswered until it times out."""
    plain = settings.redis_url.get_secret_value()

    message, _ = failed_check(timeout=1.5, redis_url="rediss://" + plain.removeprefix("redis://"))

    assert message.startswith("redis unreachable after ")
    assert message.endswith("and accepts TLS, which rediss:// asks for")
    assert plain.split("@")[0].rsplit(":", 1)[1] not in message


@pytest.fixture
def sentinel_port(tmp_path: Path) -> Iterator[int]:
    """A Sentinel with a password and no monitored master, on a free port of 127.0.0.1."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(f'bind 127.0.0.1\nport {port}\ndir "{tmp_path}"\nrequirepass {PROBE_PASSWORD}\n')
    process = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=PROBE_PASSWORD, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def sentinel_settings(port: int, password: str) -> dict[str, object]:
    return {"redis_mode": "sentinel", "redis_url": "", "redis_sentinels": f"127.0.0.1:{port}",
            "redis_sentinel_service": "gatehouse", "redis_sentinel_password": password}


def test_sentinel_wrong_password_fails_at_once(sentinel_port):
    message, seconds = failed_check(**sentinel_settings(sentinel_port, "wrong-password"))

    assert "a Sentinel rejected the login" in message
    assert "GATEHOUSE_REDIS_SENTINEL_PASSWORD" in message
    assert seconds < AT_ONCE_SECONDS


def test_sentinel_without_master_retried(sentinel_port):
    # The Sentinel accepts the login but monitors no master yet, as while a deployment starts.
    message, seconds = failed_check(timeout=1.5, **sentinel_settings(sentinel_port, PROBE_PASSWORD))

    assert message.startswith("redis unreachable after ")
    assert "No master found" in message
    assert message.endswith("check GATEHOUSE_REDIS_SENTINELS, and that the server runs")
    assert len(message) < 500
    assert seconds >= 1.5
