"""gunicorn laid out as in the container image writes only where the chart mounts volumes.

The image runs with a read-only root filesystem: /app contains gunicorn.conf.py and
wsgi.py, HOME points nowhere, and only /tmp and PROMETHEUS_MULTIPROC_DIR are
writable. No container runs here, so this test copies that layout into a
temporary directory and checks that a serving master changes nothing outside
the two writable paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, Gunicorn

pytestmark = pytest.mark.e2e


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Map every file and folder under directory to its size and modification time."""
    return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in directory.rglob("*")}


def test_server_writes_only_to_volumes(tmp_path):
    app_dir = tmp_path / "app"
    home = tmp_path / "home"
    scratch = tmp_path / "tmp"
    metrics_dir = tmp_path / "run" / "metrics"
    for directory in (app_dir, home, scratch):
        directory.mkdir()
    for name in ("gunicorn.conf.py", "wsgi.py"):
        shutil.copy(ROOT / name, app_dir / name)
    gunicorn = Gunicorn(tmp_path, env={
        "HOME": str(home),
        "TMPDIR": str(scratch),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        # As in the Dockerfile: the image's .pyc files are compiled at build time.
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    app_before = snapshot(app_dir)

    with gunicorn.log_path.open("ab") as log:
        gunicorn.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(app_dir / "gunicorn.conf.py"), "wsgi:app"],
            cwd=app_dir, env=gunicorn.env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        gunicorn.wait_ready()
        health = requests.get(gunicorn.url + "/health", timeout=5)
        scrape = requests.get(gunicorn.url + "/metrics", timeout=5)
        metric_files = sorted(path.name for path in metrics_dir.iterdir())
    finally:
        gunicorn.stop()

    assert gunicorn.process.returncode == 0, gunicorn.output()
    assert health.status_code == 200
    assert scrape.status_code == 200
    assert metric_files != []
    assert snapshot(app_dir) == app_before
    assert snapshot(home) == {}
    assert not (app_dir / "__pycache__").exists()
    assert os.listdir(scratch) == []
