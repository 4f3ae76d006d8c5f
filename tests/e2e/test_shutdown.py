"""Shutdown and reload of a real gunicorn master under load from keep-alive clients.

Each client keeps one connection (a requests.Session) and loops login, refresh,
refresh. A request either gets a complete response, or fails to connect because the
listener is closed: that one never reached the server. Anything else (a reset, a
response cut short, a closed connection after the request was sent) is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from urllib3.exceptions import NewConnectionError

from tests.helpers import Gunicorn

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
CLIENTS = 20
DRAIN_SECONDS = 1.0
GRACEFUL_TIMEOUT = 10
# Each client stops after this many requests or seconds, whichever comes first.
MAX_REQUESTS_PER_CLIENT = 400
MAX_LOAD_SECONDS = 30.0
# Requests that must have completed before the signal, so that it lands mid-burst.
REQUESTS_BEFORE_SIGNAL = 3 * CLIENTS
READY_TURNS_WITHIN_SECONDS = 0.2


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (monotonic time of the response, path, status)
    responses: list[tuple[float, str, int]] = field(default_factory=list)
    refused: int = 0
    broken: list[str] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.responses)


def never_connected(exc: requests.ConnectionError) -> bool:
    """Tell whether the request failed while connecting, so it never reached the server."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, (NewConnectionError, ConnectionRefusedError)):
            return True
        pending.extend(item for item in (error.__cause__, error.__context__, getattr(error, "reason", None),
                                         *error.args) if isinstance(item, BaseException))
    return False


def register_users(url: str, count: int) -> list[str]:
    emails = [f"client{number}@example.com" for number in range(count)]
    for email in emails:
        response = requests.post(f"{url}/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=30)
        assert response.status_code == 201, response.text
    return emails


def client_loop(url: str, email: str, outcomes: Outcomes, stop: threading.Event) -> None:
    """Loop login, refresh, refresh on one kept-alive connection until stopped or refused."""
    session = requests.Session()
    deadline = time.monotonic() + MAX_LOAD_SECONDS
    sent = 0
    refresh_token = None
    while not stop.is_set() and sent < MAX_REQUESTS_PER_CLIENT and time.monotonic() < deadline:
        if refresh_token is None or sent % 3 == 0:
            path, body = "/v1/auth/login", {"email": email, "password": PASSWORD}
        else:
            path, body = "/v1/auth/refresh", {"refresh_token": refresh_token}
        sent += 1
        try:
            response = session.post(url + path, json=body, timeout=30)
        except requests.ConnectionError as exc:
            with outcomes.lock:
                if never_connected(exc):
                    outcomes.refused += 1
                else:
                    outcomes.broken.append(f"{path} at {time.monotonic():.3f} after {sent} requests: {exc!r}")
            return
        except requests.RequestException as exc:
            with outcomes.lock:
                outcomes.broken.append(f"{path}: {exc!r}")
            return

        with outcomes.lock:
            outcomes.responses.append((time.monotonic(), path, response.status_code))
        if response.status_code != 200:
            return
        refresh_token = response.json()["refresh_token"]
    session.close()


def start_clients(url: str, emails: list[str], outcomes: Outcomes, stop: threading.Event) -> list[threading.Thread]:
    threads = [threading.Thread(target=client_loop, args=(url, email, outcomes, stop), daemon=True)
               for email in emails]
    for thread in threads:
        thread.start()
    return threads


def wait_for_requests(outcomes: Outcomes, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while outcomes.count() < count:
        assert time.monotonic() < deadline, f"only {outcomes.count()} requests completed in {timeout} s"
        time.sleep(0.02)


def log_events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def server(tmp_path):
    with Gunicorn(tmp_path, env={
        "GATEHOUSE_SHUTDOWN_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "GATEHOUSE_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT),
    }, app="tests.e2e.hooks_app:app") as gunicorn:
        yield gunicorn


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_under_load_drops_nothing(server, signal_number):
    emails = register_users(server.url, CLIENTS)
    outcomes, stop = Outcomes(), threading.Event()
    threads = start_clients(server.url, emails, outcomes, stop)
    wait_for_requests(outcomes, REQUESTS_BEFORE_SIGNAL)
    slow: dict[str, object] = {}
    slow_request = threading.Thread(target=lambda: slow.update(
        response=requests.post(f"{server.url}/_test/slow?seconds=2", timeout=30)))
    slow_request.start()
    time.sleep(0.2)

    signalled = time.monotonic()
    server.process.send_signal(signal_number)
    ready_statuses = []
    while time.monotonic() - signalled < DRAIN_SECONDS / 2:
        ready_statuses.append((time.monotonic() - signalled,
                               requests.get(f"{server.url}/ready", timeout=5).status_code))
    returncode = server.wait_exit(timeout=DRAIN_SECONDS + GRACEFUL_TIMEOUT + 5)
    shutdown_seconds = time.monotonic() - signalled
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    slow_request.join(timeout=30)

    print(f"{signal.Signals(signal_number).name}: master exited {shutdown_seconds:.2f} s after the signal; "
          f"{outcomes.count()} responses, {outcomes.refused} refused connections")
    assert outcomes.broken == []
    assert {status for _, _, status in outcomes.responses} == {200}
    served_during_drain = [at for at, _, _ in outcomes.responses if at > signalled]
    assert len(served_during_drain) >= CLIENTS
    # The master relays the signal to the workers within milliseconds. Each worker turns
    # not ready when its loop handles the relay, so a busy one can still return 200 just
    # after another's first 503. Once every worker has turned, /ready stays 503.
    first_not_ready = next(at for at, status in ready_statuses if status == 503)
    assert first_not_ready < READY_TURNS_WITHIN_SECONDS
    after_all_turned = {status for at, status in ready_statuses if at >= READY_TURNS_WITHIN_SECONDS}
    assert after_all_turned == {503}
    assert slow["response"].status_code == 200
    assert returncode == 0
    assert DRAIN_SECONDS <= shutdown_seconds < DRAIN_SECONDS + 5
    events = log_events(server.output())
    assert [event["signal"] for event in events if event["event"] == "shutdown_started"] == [
        signal.Signals(signal_number).name]
    assert len([event for event in events if event["event"] == "worker_stopped"]) == 2
    assert len([event for event in events if event["event"] == "pools_closed"]) == 2
    exited = [event for event in events if event["event"] == "master_exited"]
    assert len(exited) == 1
    assert exited[0]["shutdown_seconds"] >= DRAIN_SECONDS


def test_reload_under_load_drops_nothing(server):
    emails = register_users(server.url, CLIENTS)
    old_workers = server.worker_pids()
    assert len(old_workers) == 2
    outcomes, stop = Outcomes(), threading.Event()
    threads = start_clients(server.url, emails, outcomes, stop)
    wait_for_requests(outcomes, REQUESTS_BEFORE_SIGNAL)

    server.reload()
    replaced = outcomes.count()
    wait_for_requests(outcomes, replaced + 3 * CLIENTS)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)

    assert outcomes.broken == []
    assert outcomes.refused == 0
    assert {status for _, _, status in outcomes.responses} == {200}
    assert server.process.poll() is None
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
    assert "shutdown_started" not in server.output()


def test_shutdown_reaches_booting_worker(tmp_path):
    # No drain delay: the SIGTERM reaches the workers a moment after the signal.
    server = Gunicorn(tmp_path, env={"GATEHOUSE_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT)})
    server.start()
    try:
        server.wait_ready()
        signalled, returncode = kill_worker_then_stop(server)
    finally:
        server.stop()

    assert returncode == 0
    # Well below the graceful timeout the master would otherwise wait for the booting worker.
    assert time.monotonic() - signalled < 4


def kill_worker_then_stop(server: Gunicorn) -> tuple[float, int]:
    """Kill a worker and send SIGTERM as soon as its replacement is forked; return when and the exit code."""
    victim = min(server.worker_pids())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while victim in server.worker_pids() or len(server.worker_pids()) < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.005)

    # The replacement is still importing the app: its own signal handlers are not installed yet.
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    return signalled, server.wait_exit(timeout=GRACEFUL_TIMEOUT + 5)


@contextlib.contextmanager
def loaded_server(tmp_path, env: dict[str, str]) -> Iterator[Gunicorn]:
    """Start a server and wait until both workers have loaded their files, so a test can break them afterwards."""
    server = Gunicorn(tmp_path, env=env)
    server.start()
    try:
        server.wait_ready()
        wait_for_output(server, lambda output: output.count('"event":"app_created"') >= 2)
        yield server
    finally:
        server.stop()


@pytest.fixture
def blocklist_server(tmp_path):
    """A server whose password blocklist file the test can break, ready with both workers loaded."""
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("acme rocket sled\n")
    with loaded_server(tmp_path, {"GATEHOUSE_PASSWORD_BLOCKLIST_FILE": str(blocklist)}) as server:
        yield server, blocklist


def wait_for_output(server: Gunicorn, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition(server.output()):
        assert time.monotonic() < deadline, server.output()[-2000:]
        time.sleep(0.05)


def logged(server: Gunicorn, event: str) -> list[dict]:
    return [json.loads(line) for line in server.output().splitlines()
            if line.startswith("{") and f'"event":"{event}"' in line]


def test_reload_broken_file_refused(blocklist_server):
    """SIGHUP after a file that a setting names went bad is refused; the old workers serve on."""
    server, blocklist = blocklist_server
    workers = server.worker_pids()
    blocklist.write_bytes(b"acme rocket sled\n\xff broken\n")

    server.process.send_signal(signal.SIGHUP)
    wait_for_output(server, lambda output: "reload_refused" in output)

    assert server.process.poll() is None
    assert server.worker_pids() == workers
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
    refused = logged(server, "reload_refused")
    assert "GATEHOUSE_PASSWORD_BLOCKLIST_FILE" in refused[0]["error"]
    assert "line 2" in refused[0]["error"]

    blocklist.write_text("acme rocket sled\n")
    assert not server.reload() & workers
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200


def test_broken_settings_worker_keeps_server(blocklist_server):
    """A worker replaced after a file that a setting names went bad waits and exits; the others serve on."""
    server, blocklist = blocklist_server
    crashed, survivor = sorted(server.worker_pids())
    blocklist.write_bytes(b"acme rocket sled\n\xff broken\n")

    os.kill(crashed, signal.SIGKILL)
    wait_for_output(server, lambda output: "worker_settings_invalid" in output)

    assert server.process.poll() is None
    assert survivor in server.worker_pids()
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
    assert "GATEHOUSE_PASSWORD_BLOCKLIST_FILE" in logged(server, "worker_settings_invalid")[0]["error"]

    blocklist.write_text("acme rocket sled\n")
    wait_for_output(server, lambda output: output.count('"event":"app_created"') >= 3)
    assert server.process.poll() is None
    assert len(server.worker_pids()) == 2


@pytest.fixture
def key_server(tmp_path):
    """A server whose key directory the test can empty, ready with both workers loaded."""
    keys = tmp_path / "keys"
    keys.mkdir()
    for key in Path(os.environ["GATEHOUSE_KEYS_DIR"]).glob("*.pem"):
        shutil.copy2(key, keys / key.name)
    with loaded_server(tmp_path, {"GATEHOUSE_KEYS_DIR": str(keys)}) as server:
        yield server, keys


def test_reload_without_usable_key_refused(key_server):
    """SIGHUP while no key in the directory loads, as during a copy still in progress, is refused."""
    server, keys = key_server
    workers = server.worker_pids()
    saved = {key: key.read_bytes() for key in keys.glob("*.pem")}
    for key in saved:
        key.write_bytes(saved[key][:40])

    server.process.send_signal(signal.SIGHUP)
    wait_for_output(server, lambda output: "reload_refused" in output)

    assert server.process.poll() is None
    assert server.worker_pids() == workers
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
    assert "no usable signing key" in logged(server, "reload_refused")[0]["error"]

    for key, content in saved.items():
        key.write_bytes(content)
    assert not server.reload() & workers


def test_worker_without_key_keeps_server(key_server):
    """A worker replaced while the key directory is empty waits and exits; the other serves on."""
    server, keys = key_server
    crashed, survivor = sorted(server.worker_pids())
    hidden = keys.parent / "hidden"
    keys.rename(hidden)
    keys.mkdir()

    os.kill(crashed, signal.SIGKILL)
    wait_for_output(server, lambda output: "worker_settings_invalid" in output)

    assert server.process.poll() is None
    assert survivor in server.worker_pids()
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
    assert "no signing key" in logged(server, "worker_settings_invalid")[0]["error"]

    keys.rmdir()
    hidden.rename(keys)
    wait_for_output(server, lambda output: output.count('"event":"app_created"') >= 3)
    assert server.process.poll() is None
    assert len(server.worker_pids()) == 2
