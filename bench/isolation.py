"""Keep the harness's own Prometheus files out of the measured server's directory.

Service modules create their metric files when imported, in PROMETHEUS_MULTIPROC_DIR,
and the harness imports some of them. Pointed at the server's directory, the
harness's files would be summed into the server's /metrics.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# The server's directory, kept while PROMETHEUS_MULTIPROC_DIR points at the harness's own.
SERVER_METRICS_DIR_VARIABLE = "BENCH_SERVER_METRICS_DIR"


def isolate_metrics_dir() -> None:
    """Point PROMETHEUS_MULTIPROC_DIR at a private directory; call before importing service modules."""
    if SERVER_METRICS_DIR_VARIABLE in os.environ:
        return

    os.environ[SERVER_METRICS_DIR_VARIABLE] = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    harness_dir = tempfile.mkdtemp(prefix="gatehouse-bench-harness-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = harness_dir
    atexit.register(shutil.rmtree, harness_dir, ignore_errors=True)


def server_metrics_dir() -> str:
    """The metrics directory of the servers that the harness starts."""
    return os.environ.get(SERVER_METRICS_DIR_VARIABLE, os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
