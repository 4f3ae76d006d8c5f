"""Two real gunicorn masters and one PROMETHEUS_MULTIPROC_DIR: the running master keeps it, a dead one does not."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from service.lifecycle.metrics_dir import LOCK_FILE_NAME
from tests.helpers import Gunicorn, full_tmpfs, scrape, wait_until

pytestmark = pytest.mark.e2e

EXIT_TIMEOUT_SECONDS = 30
REQUESTS = 5
# A gevent worker checks its parent about once a second, then stops within the graceful timeout.
ORPHAN_EXIT_SECONDS = 40


def jwks_requests_total(url: str) -> float:
    """Return the aggregated http_request_total of successful GET requests, which the JWKS requests below add to."""
    return scrape(url)['http_request_total{method="GET",status="200"}']


def test_shared_dir_stops_second_master(tmp_path):
    with Gunicorn(_mkdir(tmp_path / "first")) as first:
        for _ in range(REQUESTS):
            assert requests.get(f"{first.url}/.well-known/jwks.json", timeout=10).status_code == 200
        metrics_dir = Path(first.env["PROMETHEUS_MULTIPROC_DIR"])
        files_before = {path.name for path in metrics_dir.iterdir()}
        total_before = jwks_requests_total(first.url)

        second = Gunicorn(_mkdir(tmp_path / "second"), env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        second.start()
        try:
            returncode = second.wait_exit(timeout=EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the second master still runs:\n{second.output()}") from None
        finally:
            second.stop()
        output = second.output()

        assert returncode == 3, output
        assert "metrics_dir_in_use" in output
        assert f"PROMETHEUS_MULTIPROC_DIR={metrics_dir}" in output
        assert "its own PROMETHEUS_MULTIPROC_DIR" in output
        assert f"gunicorn master {first.process.pid}" in output
        # The second master stopped before it bound its port and before the start-up checks.
        assert "master_starting" not in output
        # Workers may have added files since, but none may be gone.
        assert files_before <= {path.name for path in metrics_dir.iterdir()}
        assert total_before >= REQUESTS
        assert jwks_requests_total(first.url) == total_before
        assert requests.get(f"{first.url}/ready", timeout=10).status_code == 200


def test_dead_master_lock_does_not_block(tmp_path):
    first = Gunicorn(_mkdir(tmp_path / "first"))
    metrics_dir = Path(first.env["PROMETHEUS_MULTIPROC_DIR"])
    with first:
        orphans = first.worker_pids()
        assert orphans, first.output()
        # SIGKILL runs no exit hook, so the lock file stays with the dead master's pid in it.
        os.kill(first.process.pid, signal.SIGKILL)
        first.wait_exit()
    try:
        lock_file = metrics_dir / LOCK_FILE_NAME
        assert lock_file.read_text().strip() == str(first.process.pid)

        # The orphaned workers may still run: they closed their copy of the lock at fork.
        with Gunicorn(_mkdir(tmp_path / "second"), env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}) as second:
            assert requests.get(f"{second.url}/ready", timeout=10).status_code == 200
            assert lock_file.read_text().strip() == str(second.process.pid)
            assert "metrics_dir_in_use" not in second.output()
    finally:
        _stop_orphans(orphans)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _stop_orphans(pids: set[int]) -> None:
    """Wait for the workers of a killed master to notice and exit, and SIGKILL any that still run after that."""
    try:
        wait_until(lambda: not any(_is_running(pid) for pid in pids), ORPHAN_EXIT_SECONDS,
                   "workers of the killed master still run")
    except AssertionError:
        for pid in pids:
            if _is_running(pid):
                os.kill(pid, signal.SIGKILL)
        raise


def _is_running(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_full_metrics_dir_keeps_serving(tmp_path):
    """A metrics directory without room costs metrics, not requests: no SIGBUS, no failed request, one log line."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # One page left: the master can make its lock file, and no worker a metric file.
    with full_tmpfs(metrics_dir), Gunicorn(tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}) as server:
        statuses = [requests.get(f"{server.url}{path}", timeout=10).status_code
                    for path in ("/health", "/ready", "/v1/nothing", "/.well-known/jwks.json") for _ in range(5)]
        output = server.output()

    assert statuses == [200] * 10 + [404] * 5 + [200] * 5
    assert "SIGBUS" not in output
    assert '"metric_file_full"' in output
