"""Per-worker metrics that the master's child_exit hook keeps consistent when a worker dies."""

from __future__ import annotations

from prometheus_client import Gauge

# Each worker sets 1; "livesum" adds up the files of live processes only, and the
# master's child_exit hook marks a dead worker's file, so a killed worker drops out.
WORKERS = Gauge("gatehouse_workers", "gunicorn worker processes serving requests.", multiprocess_mode="livesum")


def mark_worker_serving() -> None:
    WORKERS.set(1)
