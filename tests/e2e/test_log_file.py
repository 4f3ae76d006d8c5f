"""The log file under 4 gunicorn workers writing at once: rotation, gzip archives, retention."""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import Gunicorn

pytestmark = pytest.mark.e2e

LINES = 100_000
LINES_PER_REQUEST = 100
WORKERS = 4
MAX_BYTES = 1_048_576


def log_file_server(tmp_path: Path, **settings: str) -> tuple[Gunicorn, Path]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    log_file = log_dir / "gatehouse.log"
    env = {"GATEHOUSE_LOG_FILE": str(log_file), **{f"GATEHOUSE_{name.upper()}": value for name, value in settings.items()}}
    return Gunicorn(tmp_path, env=env, workers=WORKERS, app="tests.e2e.hooks_app:app"), log_file


def send_numbered_lines(url: str, total: int, per_request: int, deadline: float, concurrency: int = 8) -> None:
    def send(first: int) -> int:
        assert time.monotonic() < deadline, "sending the numbered lines took too long"
        # A new connection per request spreads the requests over all workers.
        response = requests.post(f"{url}/_test/log-lines?first={first}&count={per_request}", timeout=30,
                                 headers={"Connection": "close"})
        return response.status_code

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        statuses = list(pool.map(send, range(0, total, per_request)))
    assert statuses == [200] * (total // per_request)


def read_records(log_file: Path) -> tuple[list[dict], list[Path]]:
    """Return the records of the live file and every archive beside it, and the archives."""
    archives = sorted(path for path in log_file.parent.iterdir() if path.name.endswith(".gz"))
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line]
    for archive in archives:
        with gzip.open(archive, "rt", encoding="utf-8") as lines:
            records += [json.loads(line) for line in lines if line.strip()]
    return records, archives


def test_numbered_lines_survive_rotation(tmp_path):
    server, log_file = log_file_server(tmp_path, log_file_max_bytes=str(MAX_BYTES), log_file_backups="1000")
    server.start()
    try:
        server.wait_ready()
        send_numbered_lines(server.url, LINES, LINES_PER_REQUEST, deadline=time.monotonic() + 120)
    finally:
        server.stop()

    records, archives = read_records(log_file)
    numbered = [record for record in records if record["event"] == "numbered_line"]
    counts = Counter(record["number"] for record in numbered)
    assert len(counts) == LINES
    assert set(counts) == set(range(LINES))
    assert [number for number, seen in counts.items() if seen != 1] == []
    assert len({record["pid"] for record in numbered}) == WORKERS
    # About 150 bytes a line: 100,000 lines fill the 1 MB file more than ten times.
    assert len(archives) >= 10
    assert all(path.stat().st_size < MAX_BYTES for path in archives)
    assert log_file.stat().st_size <= MAX_BYTES + 4096
    # The master's own lines go to the same file.
    assert any(record.get("event") == "master_exited" for record in records)
    # Loading the handler in the master imported nothing that gevent must patch first.
    assert "MonkeyPatchWarning" not in server.output()


def test_rotation_keeps_backup_count(tmp_path):
    server, log_file = log_file_server(tmp_path, log_file_max_bytes="65536", log_file_backups="3")
    server.start()
    try:
        server.wait_ready()
        # One request at a time, so the lines reach the file in order.
        send_numbered_lines(server.url, 5_000, LINES_PER_REQUEST, deadline=time.monotonic() + 60, concurrency=1)
    finally:
        server.stop()

    archives = [path for path in log_file.parent.iterdir() if path.name.endswith(".gz")]
    assert len(archives) == 3
    records, _ = read_records(log_file)
    numbers = {record["number"] for record in records if record["event"] == "numbered_line"}
    # The newest lines are kept, the oldest archives were deleted.
    assert 4_999 in numbers
    assert 0 not in numbers
    # No newer archive was deleted in their place: every line after the oldest kept one is kept.
    assert set(range(min(numbers), 5_000)) - numbers == set()


def test_rotation_by_time(tmp_path):
    server, log_file = log_file_server(tmp_path, log_file_rotate_when="S", log_file_rotate_interval="1")
    server.start()
    try:
        server.wait_ready()
        for second in range(3):
            send_numbered_lines(server.url, 200, 100, deadline=time.monotonic() + 30)
            time.sleep(1.1)
    finally:
        server.stop()

    records, archives = read_records(log_file)
    assert len(archives) >= 2
    numbered = [record["number"] for record in records if record["event"] == "numbered_line"]
    assert sorted(numbered) == sorted(list(range(200)) * 3)
