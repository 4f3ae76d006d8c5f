"""`scripts/services.sh stop` with a real gunicorn master that has a busy worker.

The script is copied into a temporary repository root, so the profile state it reads
(.state/dev) is a temporary directory. There it finds the pid file of this test's
gunicorn and no MariaDB or Redis, so the test profile's servers keep running.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, Gunicorn

pytestmark = pytest.mark.e2e

GRACEFUL_TIMEOUT = 3
# services.sh adds this margin to the drain delay and the graceful timeout.
STOP_MARGIN_SECONDS = 10


def is_running(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(") ", 1)[1][0] != "Z"


def test_stop_waits_for_workers(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "services.sh", repo / "scripts" / "services.sh")
    state = repo / ".state" / "dev"
    state.mkdir(parents=True)
    # The stalled body keeps a worker busy through the whole graceful timeout.
    env = {"GATEHOUSE_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT), "GATEHOUSE_BODY_READ_TIMEOUT_SECONDS": "60"}
    with Gunicorn(tmp_path, env=env) as gunicorn:
        (state / "gunicorn.pid").write_text(f"{gunicorn.process.pid}\n")
        workers = gunicorn.worker_pids()
        with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/auth/login HTTP/1.1\r\nHost: gatehouse\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 50\r\n\r\n{")
            time.sleep(0.5)
            # A services timeout below the graceful timeout, and no GATEHOUSE_GRACEFUL_TIMEOUT
            # in the script's environment: the wait must come from the master's own settings.
            script_env = {name: value for name, value in os.environ.items() if name != "GATEHOUSE_GRACEFUL_TIMEOUT"}
            script_env["GATEHOUSE_SERVICES_TIMEOUT"] = "1"
            started = time.monotonic()
            result = subprocess.run(["bash", str(repo / "scripts" / "services.sh"), "stop", "dev"], env=script_env,
                                    capture_output=True, text=True, timeout=60)
            seconds = time.monotonic() - started
            still_running = sorted(pid for pid in workers if is_running(pid))
            master_exit = gunicorn.process.poll()

    assert result.returncode == 0, result.stderr
    assert f"waiting up to {GRACEFUL_TIMEOUT + STOP_MARGIN_SECONDS}s" in result.stdout
    assert "SIGKILL" not in result.stdout
    assert "gunicorn (dev) stopped" in result.stdout
    assert workers
    assert still_running == []
    assert master_exit is not None
    assert GRACEFUL_TIMEOUT - 1 <= seconds < GRACEFUL_TIMEOUT + STOP_MARGIN_SECONDS
    assert not (state / "gunicorn.pid").exists()
