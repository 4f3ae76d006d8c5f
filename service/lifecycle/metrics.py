"""Per-worker metrics that the master's child_exit hook keeps consistent when a worker dies."""

from __future__ import annotations

from prometheus_client import Gauge

# Each worker sets 1; "livesum" adds up the files of live processes only, and the
# master's child_exit hook marks a dead worker's file, so a killed worker drops out.
WORKERS = Gauge("gatehouse_workers", "gunicorn worker processes serving requests.", multiprocess_mode="livesum")
# The same value from every worker, and the last one stays when workers die: "max".
WORKERS_CONFIGURED = Gauge("gatehouse_workers_configured", "Worker processes the master runs (GATEHOUSE_WORKERS).",
                           multiprocess_mode="max")


def mark_worker_serving(configured: int) -> None:
    WORKERS.set(1)
    WORKERS_CONFIGURED.set(configured)
